"""The VideoMAP model family: registry, shapes, schedule, parameter counts, checkpointing, resampling, bf16."""

import json

import pytest
import torch

from videomap.layers import MambaLayer, TransformerLayer, resample_spatial_pos_embed, resample_temporal_pos_embed
from videomap.models import (
    CheckpointMismatchError,
    VideoMAP,
    VideoMAPConfig,
    create_model,
    get_model_config,
    list_models,
)

# Tiny inputs keep the sequential scan affordable: 2 frames of 32x32 = 1 + 2*4 tokens.
TINY = dict(num_frames=2, img_size=32, num_classes=5)


def tiny_video(batch=2, frames=2, size=32, seed=0):
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def small_model(**overrides):
    """A 3-layer hybrid (two Mamba layers, one attention layer) at tiny width."""
    config = dict(embed_dim=32, num_heads=2, schedule="MAM", **TINY)
    config.update(overrides)
    return VideoMAP(VideoMAPConfig(**config))


# ---------------------------------------------------------------------------------------------- registry


def test_registry_has_every_design_row():
    assert list_models() == sorted([
        "videomap_tiny", "videomap_small", "videomap_middle", "videomap_base",
        "videomamba_tiny", "videomamba_small", "videomamba_middle",
        "videovit_tiny", "videovit_small", "videovit_base",
    ])
    assert list_models("videomamba_*") == ["videomamba_middle", "videomamba_small", "videomamba_tiny"]


def test_unknown_name_lists_close_names():
    with pytest.raises(ValueError, match="did you mean videomap_small"):
        create_model("videomap_smal")
    with pytest.raises(ValueError, match="registered:"):
        create_model("resnet50")


def test_pretrained_without_checkpoint_is_a_clear_error():
    with pytest.raises(ValueError, match="checkpoint_path"):
        create_model("videomap_tiny", pretrained=True)


def test_unknown_override_is_named():
    with pytest.raises(TypeError, match="not_a_field"):
        get_model_config("videomap_tiny", not_a_field=1)


def test_config_round_trip_through_json():
    config = get_model_config("videomap_small", img_size=(160, 192), num_frames=16, layer_scale_init=1e-5)
    data = json.loads(json.dumps(config.to_dict()))
    assert VideoMAPConfig.from_dict(data) == config
    with pytest.raises(TypeError, match="bogus"):
        VideoMAPConfig.from_dict({**data, "bogus": 1})


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(schedule="MMZ"), "unknown layer letters"),
        (dict(merge="max"), "merge"),
        (dict(embed_dim=30, num_heads=4), "num_heads"),
        (dict(img_size=30), "patch_size"),
        (dict(num_frames=3, tubelet_size=2), "tubelet_size"),
        (dict(global_pool="max"), "global_pool"),
    ],
)
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        VideoMAPConfig(**bad)


def test_schedule_is_data():
    model = small_model(schedule="MMMMA" * 2)
    assert model.schedule == "MMMMA" * 2 and model.num_layers == 10
    kinds = "".join("M" if isinstance(l, MambaLayer) else "A" if isinstance(l, TransformerLayer) else "?"
                    for l in model.layers)
    assert kinds == model.schedule
    assert get_model_config("videomap_small").schedule == "MMMMA" * 6
    assert get_model_config("videomap_middle").schedule == "MMMMA" * 8
    assert get_model_config("videomamba_small").schedule == "M" * 24
    assert get_model_config("videovit_small").schedule == "A" * 12


# ---------------------------------------------------------------------------------------------- parameter counts

VIDEOMAP_PARAMS = {
    "videomap_tiny": 9_702_928,
    "videomap_small": 36_215_440,
    "videomap_middle": 105_786_256,
    "videomap_base": 139_670_416,
}
VIDEOMAMBA_PUBLISHED = {"videomamba_tiny": 7e6, "videomamba_small": 26e6, "videomamba_middle": 74e6}


def count_params(name):
    # Counted at 8 frames 224^2 with a 400-class head (DESIGN §2.9); "meta" tensors need no memory.
    with torch.device("meta"):
        model = create_model(name, num_classes=400, num_frames=8, img_size=224)
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts():
    counts = {name: count_params(name) for name in list_models()}
    for name, count in counts.items():
        print(f"{name:20s} {count:>12,d}")
    assert {n: counts[n] for n in VIDEOMAP_PARAMS} == VIDEOMAP_PARAMS
    for name, published in VIDEOMAMBA_PUBLISHED.items():
        assert abs(counts[name] - published) / published < 0.03, (name, counts[name])


def test_videomamba_state_dict_layout():
    """Names and shapes of VideoMamba's ``videomamba_tiny`` (``VisionMamba`` + ``Mamba(bimamba=True)``)."""
    with torch.device("meta"):
        model = create_model("videomamba_tiny")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    dim, inner, rank = 192, 384, 12
    expected = {
        "patch_embed.proj.weight": (dim, 3, 1, 16, 16),
        "patch_embed.proj.bias": (dim,),
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 197, dim),
        "temporal_pos_embedding": (1, 8, dim),
        "norm_f.weight": (dim,),
        "head.weight": (400, dim),
        "head.bias": (400,),
    }
    for i in range(24):
        p = f"layers.{i}."
        expected[p + "norm.weight"] = (dim,)
        expected[p + "mixer.in_proj.weight"] = (2 * inner, dim)
        expected[p + "mixer.out_proj.weight"] = (dim, inner)
        for s in ("", "_b"):
            expected[p + f"mixer.conv1d{s}.weight"] = (inner, 1, 4)
            expected[p + f"mixer.conv1d{s}.bias"] = (inner,)
            expected[p + f"mixer.x_proj{s}.weight"] = (rank + 32, inner)
            expected[p + f"mixer.dt_proj{s}.weight"] = (inner, rank)
            expected[p + f"mixer.dt_proj{s}.bias"] = (inner,)
            expected[p + f"mixer.D{s}"] = (inner,)
        expected[p + "mixer.A_log"] = (inner, 16)
        expected[p + "mixer.A_b_log"] = (inner, 16)
    assert shapes == expected
    assert model.layers[0].mixer.merge == "sum"


# ---------------------------------------------------------------------------------------------- forward / backward


# Full-depth runs of the >50M-parameter rows take tens of seconds on two cores; by default those rows run
# at their real width with the first five layers of their schedule.
LARGE = {"videomap_middle", "videomap_base", "videomamba_middle", "videovit_base"}


def check_trains(model):
    feats = model.forward_features(tiny_video())
    logits = model.forward_head(feats)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    # A loss on every token: through the class token alone, the last layer's forward-direction A_log has
    # no gradient (at position 0 the scan has no history for A to decay).
    (logits.square().mean() + feats.square().mean()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, no_grad
    zero_grad = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero_grad, zero_grad


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n for n in list_models()]
)
def test_every_model_trains_at_tiny_size(name):
    torch.manual_seed(0)
    check_trains(create_model(name, **TINY))


@pytest.mark.parametrize("name", sorted(LARGE))
def test_large_models_train_at_reduced_depth(name):
    torch.manual_seed(0)
    check_trains(create_model(name, schedule=get_model_config(name).schedule[:5], **TINY))


def test_shapes_and_token_api():
    torch.manual_seed(0)
    model = small_model(num_frames=4, img_size=(32, 48), tubelet_size=2).eval()
    x = torch.randn(3, 3, 4, 32, 48)
    grid = model.grid_size(x)
    assert grid == (2, 2, 3) and model.grid_size((4, 32, 48)) == grid
    tokens = model.prepare_tokens(x)
    assert tokens.shape == (3, 1 + 2 * 6, 32)
    feats = model.forward_features(x)
    torch.testing.assert_close(feats, model.forward_tokens(tokens))
    assert model.forward_head(feats).shape == (3, 5)
    assert model.forward_head(feats, pre_logits=True).shape == (3, 32)
    torch.testing.assert_close(model(x), model.forward_head(feats))
    # Any subset of tokens runs through the encoder (what masked pretraining feeds it).
    assert model.forward_tokens(tokens[:, :5]).shape == (3, 5, 32)
    assert (model.embed_dim, model.patch_size, model.tubelet_size, model.num_frames, model.img_size) == (
        32, 16, 2, 4, (32, 48))


def test_forward_intermediates():
    torch.manual_seed(0)
    model = small_model().eval()
    x = tiny_video()
    final, inter = model.forward_intermediates(x, indices=[0, -1], output_fmt="NTLC")
    torch.testing.assert_close(final, model.forward_features(x))
    assert [t.shape for t in inter] == [(2, 2, 4, 32)] * 2
    # The last intermediate, once normed, is the final output without its class token.
    normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
    torch.testing.assert_close(normed[0], final[:, 1:])
    only = model.forward_intermediates(x, indices=[-2], output_fmt="NLC", intermediates_only=True,
                                       return_prefix_tokens=True)
    assert only[0][0].shape == (2, 8, 32) and only[0][1].shape == (2, 1, 32)
    with pytest.raises(IndexError):
        model.forward_intermediates(x, indices=[3])
    with pytest.raises(ValueError):
        model.forward_intermediates(x, output_fmt="NCHW")


def test_global_pool_and_reset_classifier():
    torch.manual_seed(0)
    model = small_model(global_pool="avg").eval()
    feats = model.forward_features(tiny_video())
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats[:, 1:].mean(1))
    model.reset_classifier(7)
    assert model(tiny_video()).shape == (2, 7) and model.config.num_classes == 7
    model.reset_classifier(0)
    assert model(tiny_video()).shape == (2, 32)


def test_layer_ids_and_no_weight_decay():
    model = small_model()
    assert model.get_layer_id("cls_token") == 0
    assert model.get_layer_id("patch_embed.proj.weight") == 0
    assert model.get_layer_id("temporal_pos_embedding") == 0
    assert model.get_layer_id("layers.0.mixer.in_proj.weight") == 1
    assert model.get_layer_id("layers.2.norm.weight") == 3
    assert model.get_layer_id("norm_f.weight") == 4 and model.get_layer_id("head.bias") == 4
    no_wd = model.no_weight_decay()
    assert {"cls_token", "pos_embed", "temporal_pos_embedding", "layers.0.mixer.A_log",
            "layers.2.mixer.D_b"} <= no_wd
    assert not any("attn" in n or "in_proj" in n for n in no_wd)
    assert set(model.group_matcher()) == {"stem", "blocks"}


# ---------------------------------------------------------------------------------------------- gradient checkpointing


def test_gradient_checkpointing_is_exact():
    def run(checkpointing):
        torch.manual_seed(0)
        model = small_model(drop_path_rate=0.2)
        model.set_grad_checkpointing(checkpointing)
        torch.manual_seed(1)  # same DropPath draws in both runs
        out = model(tiny_video())
        out.sum().backward()
        return out, {n: p.grad for n, p in model.named_parameters()}

    out_ref, grads_ref = run(False)
    out_ckpt, grads_ckpt = run(True)
    torch.testing.assert_close(out_ckpt, out_ref, rtol=0, atol=0)
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-6, atol=1e-7, msg=name)


# ---------------------------------------------------------------------------------------------- position resampling


def test_checkpoint_resampled_from_8_to_16_frames_and_224_to_160_px(tmp_path):
    torch.manual_seed(0)
    source = create_model("videomap_tiny", num_frames=8, img_size=224)
    with torch.no_grad():
        source.temporal_pos_embedding.normal_()
    source.save_pretrained(tmp_path)
    target = create_model("videomap_tiny", checkpoint_path=tmp_path, num_frames=16, img_size=160)
    assert target.pos_embed.shape == (1, 1 + 10 * 10, 192)
    assert target.temporal_pos_embedding.shape == (1, 16, 192)
    torch.testing.assert_close(target.pos_embed, resample_spatial_pos_embed(source.pos_embed, (14, 14), (10, 10)))
    torch.testing.assert_close(target.temporal_pos_embedding,
                               resample_temporal_pos_embed(source.temporal_pos_embedding, 16))
    torch.testing.assert_close(target.layers[3].mixer.A_log, source.layers[3].mixer.A_log)


def test_dynamic_size_equals_resampled_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = small_model(num_frames=8, img_size=64, schedule="MA")
    with torch.no_grad():
        source.temporal_pos_embedding.normal_()
    source.save_pretrained(tmp_path)
    x = tiny_video(batch=1, frames=16, size=48)
    with pytest.raises(ValueError, match="dynamic_size"):
        source(x)
    dynamic = VideoMAP.from_pretrained(tmp_path, dynamic_size=True).eval()
    resized = VideoMAP.from_pretrained(tmp_path, num_frames=16, img_size=48).eval()
    torch.testing.assert_close(dynamic(x), resized(x), atol=1e-5, rtol=1e-5)
    assert dynamic(tiny_video(batch=1, frames=8, size=64)).shape == (1, 5)


# ---------------------------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("videomap_tiny", schedule="MMA", **TINY).eval()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["name"] == "videomap_tiny"
    again = create_model("videomap_tiny", checkpoint_path=tmp_path, schedule="MMA").eval()
    x = tiny_video()
    torch.testing.assert_close(again(x), model(x))
    # A different head size is re-initialised (and said so), everything else loads.
    relabeled = VideoMAP.from_pretrained(tmp_path, num_classes=3)
    assert relabeled.head.weight.shape == (3, 192)
    torch.testing.assert_close(relabeled.layers[2].mlp.fc1.weight, model.layers[2].mlp.fc1.weight)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    model = create_model("videomap_tiny", schedule="MMA", **TINY)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="schedule"):
        create_model("videomap_tiny", checkpoint_path=tmp_path)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("layers.1.")}
    state["layers.9.extra"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "weights.pth")
    with pytest.raises(CheckpointMismatchError) as info:
        create_model("videomap_tiny", checkpoint_path=tmp_path / "weights.pth", schedule="MMA", **TINY)
    message = str(info.value)
    assert "layers.1.mixer.in_proj.weight" in message and "layers.9.extra" in message


# ---------------------------------------------------------------------------------------------- bf16


def test_bf16_autocast_is_finite_with_fp32_stream():
    torch.manual_seed(0)
    model = create_model("videomap_tiny", **TINY)
    stream_dtypes = []
    for layer in model.layers:
        layer.register_forward_hook(lambda m, i, o: stream_dtypes.append(o.dtype))
    x = tiny_video()
    reference = model.forward_features(x).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = model.forward_features(x)
        loss = model.forward_head(feats).float().square().mean()
    loss.backward()
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    assert set(stream_dtypes) == {torch.float32}
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # bf16 matmuls, fp32 stream: close to the fp32 result at bf16 precision.
    assert (feats.detach() - reference).abs().mean() < 0.05


def test_init_weights_reinitialises_every_parameter():
    model = small_model(layer_scale_init=1e-4)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    model.init_weights()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert (model.layers[1].ls1.gamma == 1e-4).all()
    torch.testing.assert_close(model.layers[0].mixer.A_log.exp()[0], torch.arange(1.0, 17.0))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    model = small_model().eval()
    x = tiny_video()
    expected = model(x)
    got = model.cuda()(x.cuda())
    torch.testing.assert_close(got.cpu(), expected, atol=1e-3, rtol=1e-3)
