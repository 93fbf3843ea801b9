"""The frame-wise MAR objective: decoder causality, loss definition, alignment, encoder sees visible tokens."""

import pytest
import torch

from videomap import create_model
from videomap.pretrain import FrameCausalDecoder, MAPPretrainer, frame_causal_mask, patchify, unpatchify

TINY = dict(embed_dim=32, schedule="MMA", num_heads=2)


def tiny_pretrainer(**kwargs):
    torch.manual_seed(0)
    encoder = create_model("videomap_tiny", num_classes=0, num_frames=4, img_size=32, **TINY)
    return MAPPretrainer(encoder, decoder_depth=2, decoder_dim=32, decoder_heads=2, **kwargs)


def video(batch=2, frames=4, size=32, seed=0):
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def test_frame_causal_mask_shape_and_pattern():
    mask = frame_causal_mask(3, 2)
    expected = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0],
                             [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_decoder_is_frame_causal():
    torch.manual_seed(0)
    decoder = FrameCausalDecoder(dim=16, depth=2, num_heads=2).eval()
    assert decoder.dim == 16
    x = torch.randn(2, 5, 6, 16)
    base = decoder(x)
    t = 2
    later = x.clone()
    later[:, t + 1:] += torch.randn_like(later[:, t + 1:])
    out = decoder(later)
    assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-6)  # frames <= t untouched
    assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])
    inside = x.clone()
    inside[:, t, 0] += torch.randn(16)  # one token of frame t changes (not by a constant: LayerNorm hides that) ...
    out = decoder(inside)
    assert torch.allclose(out[:, :t], base[:, :t], atol=1e-6)
    assert ((out[:, t] - base[:, t]).abs().amax(-1) > 1e-6).all()  # ... and reaches every token of frame t
    assert ((out[:, t + 1:] - base[:, t + 1:]).abs().amax(-1) > 1e-6).all()


def test_outputs_shapes_and_loss_is_masked_mean_of_per_token_error():
    model = tiny_pretrainer()
    out = model(video(), generator=torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "pred", "target", "mask"}
    assert out["pred"].shape == out["target"].shape == (2, 4, 4, 16 * 16 * 3)
    assert out["mask"].shape == (2, 4, 4) and out["mask"].dtype == torch.bool
    per_token = (out["pred"] - out["target"]).pow(2).mean(-1)
    expected = per_token[out["mask"]].mean()
    assert torch.allclose(out["loss"], expected, rtol=1e-5)
    out["loss"].backward()
    assert model.mask_token.grad is not None and model.encoder.patch_embed.proj.weight.grad is not None


def test_pixel_targets_are_per_patch_normalised_patches():
    model = tiny_pretrainer()
    x = video(batch=1)
    target = model.target(x)
    raw = patchify(x, 1, 16)
    assert torch.allclose(target.mean(-1), torch.zeros(1), atol=1e-5)
    assert torch.allclose(target, (raw - raw.mean(-1, keepdim=True)) / (raw.var(-1, keepdim=True) + 1e-6).sqrt())
    assert torch.equal(unpatchify(raw, 1, 16, (2, 2)), x)


def test_encoder_runs_on_visible_tokens_only():
    model = tiny_pretrainer(mask_ratio=0.75)
    seen = []
    model.encoder.register_forward_hook(lambda *a: None)
    original = model.encoder.forward_tokens
    model.encoder.forward_tokens = lambda tokens: (seen.append(tokens.shape), original(tokens))[1]
    model(video(), generator=torch.Generator().manual_seed(0))
    assert seen == [torch.Size([2, 1 + 4 * 1, 32])]  # class token + 1 of 4 tokens per frame, 4 frames


def test_hidden_tokens_do_not_influence_visible_encoding():
    model = tiny_pretrainer().eval()
    x = video(batch=1)
    mask = model.sample_mask(1, 4, 4, torch.Generator().manual_seed(3))
    latent, _ = model.forward_encoder(x, mask)
    changed = x.clone()
    pixel_mask = mask[0].reshape(4, 2, 2).repeat_interleave(16, 1).repeat_interleave(16, 2)  # (T, H, W)
    changed[0, :, pixel_mask] += 5.0
    latent2, _ = model.forward_encoder(changed, mask)
    assert torch.allclose(latent, latent2, atol=1e-5)


def test_predict_next_aligns_frame_t_outputs_with_frame_t_plus_1_targets():
    model = tiny_pretrainer(predict="next").eval()
    x = video()
    mask = model.sample_mask(2, 4, 4, torch.Generator().manual_seed(1))
    out = model(x, mask=mask)
    latent, index = model.forward_encoder(x, mask)
    raw = model.forward_decoder(latent, index, (4, 2, 2))
    assert torch.equal(out["pred"][:, 1:], raw[:, :-1])
    assert torch.equal(out["pred"][:, 0], torch.zeros_like(raw[:, 0]))
    per_token = (raw[:, :-1] - out["target"][:, 1:]).pow(2).mean(-1)
    assert torch.allclose(out["loss"], per_token[mask[:, 1:]].mean(), rtol=1e-5)


def test_each_visible_token_keeps_its_own_position_embedding():
    """A stem that outputs zeros leaves position as the tokens' only signal: the encoder must receive, for
    every visible token, the spatial and temporal embedding of the place it came from."""
    model = tiny_pretrainer().eval()
    encoder = model.encoder
    with torch.no_grad():
        encoder.patch_embed.proj.weight.zero_()
        encoder.patch_embed.proj.bias.zero_()
        encoder.pos_embed.normal_()
        encoder.temporal_pos_embedding.normal_()
    seen = []
    original = encoder.forward_tokens
    encoder.forward_tokens = lambda tokens: (seen.append(tokens.detach().clone()), original(tokens))[1]
    mask = model.sample_mask(2, 4, 4, torch.Generator().manual_seed(5))
    model.forward_encoder(video(), mask)
    (tokens,) = seen
    spatial, temporal = encoder.pos_embed[0], encoder.temporal_pos_embedding[0]  # (1 + N, D), (T', D)
    for b in range(2):
        visible = [(t, n) for t in range(4) for n in range(4) if not mask[b, t, n]]  # spatial-first order
        assert tokens.shape[1] == 1 + len(visible)
        for position, (t, n) in enumerate(visible, start=1):
            torch.testing.assert_close(tokens[b, position], spatial[1 + n] + temporal[t])


@pytest.mark.parametrize("ratio", [0.5, 0.3, "random"])
def test_next_frame_prediction_with_whole_frames_scores_every_step(ratio):
    """With two frames and whole-frame masking, a mask hiding only frame 0 would score nothing under
    ``predict="next"``; every draw must hide a frame that is scored."""
    torch.manual_seed(0)
    encoder = create_model("videomap_tiny", num_classes=0, num_frames=2, img_size=32, **TINY)
    model = MAPPretrainer(encoder, predict="next", whole_frames=True, mask_ratio=ratio,
                          decoder_depth=1, decoder_dim=32, decoder_heads=2)
    x = video(batch=2, frames=2)
    for seed in range(24):
        out = model(x, generator=torch.Generator().manual_seed(seed))
        scored = int(out["mask"][:, 1:].sum())  # frame 0's hidden tokens carry no target under "next"
        assert scored > 0, f"seed {seed}: nothing to score"
        assert out["loss"].item() > 0
    with pytest.raises(ValueError, match="no hidden token to score"):
        only_first = torch.zeros(2, 2, 4, dtype=torch.bool)
        only_first[:, 0] = True
        model(x, mask=only_first)


def test_whole_frame_and_random_ratio_options():
    model = tiny_pretrainer(whole_frames=True, mask_ratio=0.5)
    out = model(video(), generator=torch.Generator().manual_seed(0))
    per_frame = out["mask"].sum(-1)
    assert ((per_frame == 0) | (per_frame == 4)).all()
    model = tiny_pretrainer(mask_ratio="random")
    ratios = {model.sample_mask(1, 4, 4, torch.Generator().manual_seed(s)).float().mean().item() for s in range(20)}
    assert len(ratios) > 1 and min(ratios) >= 0.25 and max(ratios) <= 0.75


def test_bad_arguments_are_reported():
    encoder = create_model("videomap_tiny", num_classes=0, num_frames=4, img_size=32, **TINY)
    with pytest.raises(ValueError, match="unknown pretraining target"):
        MAPPretrainer(encoder, target="depth")
    with pytest.raises(ValueError, match="unknown predict mode"):
        MAPPretrainer(encoder, predict="previous")
    with pytest.raises(ValueError, match="clip_model"):
        MAPPretrainer(encoder, target="clip")
    model = tiny_pretrainer()
    with pytest.raises(ValueError, match="mask must be"):
        model(video(), mask=torch.zeros(2, 4, 5, dtype=torch.bool))


def test_clip_targets_with_a_tiny_random_teacher(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=32, patch_size=8)
    torch.manual_seed(0)
    transformers.CLIPVisionModel(config).save_pretrained(tmp_path / "clip")
    model = tiny_pretrainer(target="clip", clip_model=str(tmp_path / "clip"))
    out = model(video(), generator=torch.Generator().manual_seed(0))
    assert out["target"].shape == (2, 4, 4, 24)  # teacher's 4x4 grid resampled to the student's 2x2
    assert torch.allclose(out["target"].norm(dim=-1), torch.ones(2, 4, 4), atol=1e-5)
    cos = torch.nn.functional.cosine_similarity(out["pred"], out["target"], dim=-1)
    assert torch.allclose(out["loss"], (2 - 2 * cos)[out["mask"]].mean(), rtol=1e-5)
    out["loss"].backward()
    assert all(p.grad is None for p in model.target.teacher.parameters())  # the teacher stays frozen
