"""VideoEncoder: shapes for any frame count, layer selection, inputs, chunking, loading; projectors; reducers."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import videomap
from videomap.encoders import (
    TokenReducer,
    VideoEncoder,
    build_projector,
    spatial_pool,
    temporal_pool,
    to_model_input,
)

ARCH = dict(schedule="MMMA", embed_dim=64, num_heads=2)  # small stand-in for a registered row
D = 64


def _backbone(**kw):
    torch.manual_seed(0)
    return videomap.create_model("videomap_tiny", num_frames=4, img_size=32, num_classes=5, **{**ARCH, **kw}).eval()


@pytest.fixture(scope="module")
def encoder():
    return VideoEncoder.from_pretrained(_backbone())


def _clip(frames=4, height=32, width=32, batch=2, seed=1):
    return torch.randn(batch, 3, frames, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("frames, height, width", [(4, 32, 32), (1, 32, 32), (7, 32, 32), (12, 48, 64)])
def test_shapes_for_any_frame_count_and_size(encoder, frames, height, width):
    out = encoder.encode_video(_clip(frames, height, width))
    n = (height // 16) * (width // 16)
    assert out.tokens.shape == (2, frames, n, D)
    assert out.cls.shape == (2, D) and out.pooled.shape == (2, D) and out.frame_pooled.shape == (2, frames, D)
    assert out.grid == (frames, height // 16, width // 16)
    torch.testing.assert_close(out.frame_pooled, out.tokens.mean(2))
    torch.testing.assert_close(out.pooled, out.tokens.mean((1, 2)))
    assert encoder(_clip(frames, height, width)).shape == (2, frames * n, D)


def test_layer_selection_matches_the_backbone():
    model = _backbone()
    x = _clip()
    last = VideoEncoder(model, layer=-1)
    assert not model.dynamic_size  # a model passed to the constructor is used as it is
    with torch.no_grad():
        feats = model.forward_features(x)
        out = last.encode_video(x)
        torch.testing.assert_close(out.tokens, feats[:, 1:].reshape(2, 4, 4, D))
        torch.testing.assert_close(out.cls, feats[:, 0])
        penultimate = VideoEncoder(model).encode_video(x)
        ((ref, ref_cls),) = model.forward_intermediates(x, indices=[-2], norm=True, output_fmt="NTLC",
                                                          intermediates_only=True, return_prefix_tokens=True)
        torch.testing.assert_close(penultimate.tokens, ref)
        torch.testing.assert_close(penultimate.cls, ref_cls[:, 0])
        raw = VideoEncoder(model, layer=1, norm=False).encode_video(x)
        assert not torch.allclose(raw.tokens, penultimate.tokens)
    assert VideoEncoder(model).select_layer == 2
    with pytest.raises(IndexError):
        VideoEncoder(model, layer=4)


def test_uint8_frames_are_normalised_with_the_model_statistics(encoder):
    frames = torch.randint(0, 256, (2, 4, 32, 32, 3), dtype=torch.uint8)
    mean = torch.tensor(encoder.config.mean).view(1, 3, 1, 1, 1)
    std = torch.tensor(encoder.config.std).view(1, 3, 1, 1, 1)
    by_hand = (frames.permute(0, 4, 1, 2, 3).float() / 255 - mean) / std
    torch.testing.assert_close(to_model_input(frames, encoder.config.mean, encoder.config.std), by_hand)
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode_video(frames).tokens, encoder.encode_video(by_hand).tokens)
        single = encoder.encode_video(frames[0].numpy())  # (T, H, W, 3), as decoded
    assert single.tokens.shape == (1, 4, 4, D)
    resized = encoder.encode_video(torch.randint(0, 256, (3, 50, 70, 3), dtype=torch.uint8), size=32)
    assert resized.grid == (3, 2, 2)
    with pytest.raises(ValueError, match="uint8 videos"):
        encoder.encode_video(torch.zeros(4, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="normalised"):
        encoder.encode_video(torch.zeros(2, 4, 32, 32, 3))


def test_chunked_encoding_equals_encoding_each_chunk(encoder):
    x = _clip(frames=10)
    with torch.no_grad():
        chunked = encoder.encode_video(x, chunk_frames=4)
        pieces = [encoder.encode_video(x[:, :, s:s + 4]) for s in (0, 4, 8)]
        whole = encoder.encode_video(x[:, :, :4], chunk_frames=4)
    assert chunked.tokens.shape == (2, 10, 4, D) and chunked.grid == (10, 2, 2)
    torch.testing.assert_close(chunked.tokens, torch.cat([p.tokens for p in pieces], 1))
    torch.testing.assert_close(chunked.cls, torch.stack([p.cls for p in pieces], 1).mean(1))
    # A chunk as long as the model's clip uses the learned temporal embedding itself.
    torch.testing.assert_close(whole.tokens, pieces[0].tokens)


def test_chunking_bounds_the_sequence_each_layer_sees(encoder):
    seen = []
    hook = encoder.model.layers[0].register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            encoder.encode_video(_clip(frames=32, batch=1), chunk_frames=8)
    finally:
        hook.remove()
    assert seen == [1 + 8 * 4] * 4
    with pytest.raises(ValueError, match="multiple of the tubelet"):
        VideoEncoder.from_pretrained(_backbone(tubelet_size=2)).encode_video(_clip(frames=8), chunk_frames=3)


def test_freeze_and_llava_surface():
    enc = VideoEncoder.from_pretrained(_backbone())
    out = enc.encode_video(_clip())
    out.pooled.sum().backward()
    assert enc.model.patch_embed.proj.weight.grad is not None
    assert enc.freeze() is enc
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training
    assert not enc.encode_video(_clip()).tokens.requires_grad
    assert (enc.hidden_size, enc.num_patches_per_side, enc.num_patches, enc.patch_size, enc.image_size) == (D, 2, 4, 16, 32)
    assert enc.dtype == torch.float32 and enc.device.type == "cpu" and enc.is_loaded


def test_bfloat16_compute():
    fp32 = VideoEncoder.from_pretrained(_backbone())
    bf16 = VideoEncoder.from_pretrained(_backbone(), dtype=torch.bfloat16)
    with torch.no_grad():
        a, b = fp32.encode_video(_clip()).tokens, bf16.encode_video(_clip()).tokens
    assert b.dtype == torch.bfloat16 and bf16.dtype == torch.bfloat16
    assert (a - b.float()).abs().mean() < 0.05 * a.abs().mean()


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_on_a_cpu_without_bf16_instructions_warns(monkeypatch, native):
    import videomap.ops.matmul as mm

    monkeypatch.setattr(mm, "native_reduced_precision", lambda dtype: native)
    bf16 = VideoEncoder.from_pretrained(_backbone(), dtype=torch.bfloat16)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        bf16.encode_video(_clip())
    said = [str(w.message) for w in caught if "bf16 instructions" in str(w.message)]
    assert len(said) == (0 if native or not mm.onednn_available() else 1), said


def test_from_pretrained_sources(tmp_path):
    model = _backbone()
    model.save_pretrained(tmp_path / "dir")
    x = _clip(frames=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a directory loads quietly: the unused classifier is not mentioned
        enc = VideoEncoder.from_pretrained(tmp_path / "dir")
    assert enc.model.num_classes == 0 and enc.model.dynamic_size
    model.dynamic_size = True
    with torch.no_grad():
        ((ref, _),) = model.forward_intermediates(x, indices=[-2], norm=True, output_fmt="NTLC",
                                                    intermediates_only=True, return_prefix_tokens=True)
        torch.testing.assert_close(enc.encode_video(x).tokens, ref)

    torch.save(model.state_dict(), tmp_path / "weights.pth")
    with pytest.raises(ValueError, match="model_name"):
        VideoEncoder.from_pretrained(tmp_path / "weights.pth")
    from_file = VideoEncoder.from_pretrained(tmp_path / "weights.pth", model_name="videomap_tiny", num_frames=4,
                                             img_size=32, **ARCH)
    with torch.no_grad():
        torch.testing.assert_close(from_file.encode_video(x).tokens, ref)

    with pytest.warns(UserWarning, match="RANDOM weights"):
        random = VideoEncoder.from_pretrained("videomap_tiny", layer=-1, img_size=32, **ARCH)
    assert random.encode_video(_clip()).tokens.shape == (2, 4, 4, D)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        VideoEncoder.from_pretrained("no_such_model")


# ---------------------------------------------------------------------------------------------- projectors


def test_projectors():
    linear = build_projector("linear", 64, 32)
    assert isinstance(linear, nn.Linear) and linear(torch.randn(2, 5, 64)).shape == (2, 5, 32)
    mlp = build_projector("mlp2x_gelu", 64, 32)
    assert [type(m) for m in mlp] == [nn.Linear, nn.GELU, nn.Linear]
    assert (mlp[0].in_features, mlp[0].out_features, mlp[2].in_features, mlp[2].out_features) == (64, 32, 32, 32)
    assert len(build_projector("mlp3x_gelu", 8, 8)) == 5
    assert isinstance(build_projector("identity", 8, 8), nn.Identity)
    with pytest.raises(ValueError, match="unknown projector"):
        build_projector("qformer", 8, 8)


# ---------------------------------------------------------------------------------------------- reducers


def test_spatial_pool_averages_patch_windows():
    tokens = torch.arange(2 * 3 * 16 * 2, dtype=torch.float32).reshape(2, 3, 16, 2)
    pooled = spatial_pool(tokens, 2)
    assert pooled.shape == (2, 3, 4, 2)
    grid = tokens.reshape(2, 3, 4, 4, 2)
    torch.testing.assert_close(pooled[:, :, 0], grid[:, :, :2, :2].mean((2, 3)))
    torch.testing.assert_close(pooled[:, :, 3], grid[:, :, 2:, 2:].mean((2, 3)))
    assert spatial_pool(torch.randn(1, 2, 12, 4), 2, grid_hw=(3, 4)).shape == (1, 2, 4, 4)
    assert spatial_pool(tokens, 2, mode="max")[0, 0, 0, 0] == grid[0, 0, :2, :2, 0].max()
    with pytest.raises(ValueError, match="square"):
        spatial_pool(torch.randn(1, 2, 12, 4), 2)


def test_temporal_pool_and_reducer():
    tokens = torch.randn(2, 6, 4, 8)
    pooled = temporal_pool(tokens, 2)
    assert pooled.shape == (2, 3, 4, 8)
    torch.testing.assert_close(pooled[:, 1], tokens[:, 2:4].mean(1))
    assert temporal_pool(torch.randn(1, 5, 4, 8), 2).shape == (1, 3, 4, 8)
    reducer = TokenReducer(spatial_stride=2, temporal_stride=2)
    assert reducer(tokens).shape == (2, 3, 1, 8)
    assert reducer.output_grid((6, 2, 2)) == (3, 1, 1)
    assert TokenReducer()(tokens) is tokens
