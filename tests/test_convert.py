"""Converters from VideoMamba (video_sm and image_sm) and image MAP checkpoints.

VideoMamba parity is checked against a stand-alone forward pass written here from VideoMamba's published
model definition (its ``VisionMamba.forward_features`` token layout, its add-then-norm ``Block``, and the
bidirectional "v2" Mamba mixer with a sequential selective scan). It reads the upstream state dict directly
and imports nothing from videomap, so a converter that renamed, reordered or re-merged anything would fail.
The same pass, with a ``Conv2d`` stem and no temporal embedding, is VideoMamba's image model, which the
image-checkpoint conversion must reproduce on one frame.
"""

from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from videomap.apps.convert import convert_main
from videomap.models import CheckpointMismatchError, VideoMAP, create_model
from videomap.models.convert import (
    convert_checkpoint,
    convert_map,
    convert_videomamba,
    detect_source,
    inflate_patch_embed,
    map_schedule,
    read_upstream_checkpoint,
)

# ---------------------------------------------------------------------------------------------- upstream layouts


def _mamba_mixer_tensors(prefix: str, dim: int, g: torch.Generator, d_state: int = 16, expand: int = 2,
                         d_conv: int = 4, out_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """One bidirectional mixer's tensors under VideoMamba's / MAP's names, with values far enough from the
    initialisation that a wrong direction, merge or gate changes the output."""
    inner, rank = expand * dim, math.ceil(dim / 16)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    out = {f"{prefix}in_proj.weight": rnd(2 * inner, dim, scale=dim ** -0.5)}
    for suffix, a_name, d_name in (("", "A_log", "D"), ("_b", "A_b_log", "D_b")):
        dt = torch.exp(torch.rand(inner, generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        out.update({
            f"{prefix}conv1d{suffix}.weight": rnd(inner, 1, d_conv, scale=0.4),
            f"{prefix}conv1d{suffix}.bias": rnd(inner, scale=0.1),
            f"{prefix}x_proj{suffix}.weight": rnd(rank + 2 * d_state, inner, scale=inner ** -0.5),
            f"{prefix}dt_proj{suffix}.weight": rnd(inner, rank, scale=rank ** -0.5),
            f"{prefix}dt_proj{suffix}.bias": dt + torch.log(-torch.expm1(-dt)),
            f"{prefix}{a_name}": torch.log(torch.arange(1, d_state + 1).float()).repeat(inner, 1) + rnd(inner, d_state, scale=0.1),
            f"{prefix}{d_name}": 1 + rnd(inner, scale=0.1),
        })
    out[f"{prefix}out_proj.weight"] = rnd(dim, inner, scale=out_scale * inner ** -0.5)
    return out


def videomamba_state_dict(dim=32, depth=3, frames=4, img=32, patch=16, tubelet=1, classes=5, seed=0):
    """A state dict laid out as VideoMamba's ``VisionMamba`` (video_sm) saves it."""
    g = torch.Generator().manual_seed(seed)
    n = (img // patch) ** 2
    sd = {
        "cls_token": torch.randn(1, 1, dim, generator=g) * 0.5,
        "pos_embed": torch.randn(1, n + 1, dim, generator=g) * 0.5,
        "temporal_pos_embedding": torch.randn(1, frames // tubelet, dim, generator=g) * 0.5,
        "patch_embed.proj.weight": torch.randn(dim, 3, tubelet, patch, patch, generator=g) * 0.05,
        "patch_embed.proj.bias": torch.randn(dim, generator=g) * 0.1,
    }
    for i in range(depth):
        sd[f"layers.{i}.norm.weight"] = 1 + torch.randn(dim, generator=g) * 0.2
        sd.update(_mamba_mixer_tensors(f"layers.{i}.mixer.", dim, g))
    sd["norm_f.weight"] = 1 + torch.randn(dim, generator=g) * 0.2
    if classes:
        sd["head.weight"] = torch.randn(classes, dim, generator=g) * 0.3
        sd["head.bias"] = torch.randn(classes, generator=g) * 0.1
    return sd


def videomamba_image_state_dict(dim=32, depth=2, img=32, patch=16, classes=5, seed=2):
    """A state dict laid out as VideoMamba's image model (image_sm ``VisionMamba``, the ImageNet weights its
    video fine-tuning starts from): Conv2d stem, one class token whose ``pos_embed`` row comes first, no
    temporal embedding."""
    sd = videomamba_state_dict(dim=dim, depth=depth, frames=1, img=img, patch=patch, classes=classes, seed=seed)
    del sd["temporal_pos_embedding"]
    sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"][:, :, 0].contiguous()  # (D, 3, p, p)
    return sd


def map_state_dict(dim=48, depth=6, blocks=2, num_cls=4, img=64, patch=16, classes=7, cls_reduce=2, seed=1):
    """A state dict laid out as image MAP's ``VisionMamba`` (``models_mamba.py``) saves it, pretraining
    decoder included."""
    g = torch.Generator().manual_seed(seed)
    n = (img // patch) ** 2

    def rnd(*shape, scale=0.1):
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "patch_embed.proj.weight": rnd(dim, 3, patch, patch, scale=0.05),
        "patch_embed.proj.bias": rnd(dim),
        "cls_token": rnd(1, num_cls, dim),
        "pos_embed_cls": rnd(1, num_cls, dim),
        "pos_embed": rnd(1, n, dim),
        "norm_f.weight": 1 + rnd(dim),
        "neck.weight": rnd(dim // cls_reduce, dim),
        "norm_neck.weight": 1 + rnd(dim * num_cls // cls_reduce),
        "head.weight": rnd(classes, dim * num_cls // cls_reduce),
        "head.bias": rnd(classes),
        "mask_token": rnd(1, 1, 16),
        "decoder_embed.weight": rnd(16, dim),
        "decoder_embed.bias": rnd(16),
        "decoder_pos_embed_learned": rnd(1, n, 16),
        "decoder_blocks.0.attn2.q.weight": rnd(16, 16),
        "decoder_norm.weight": 1 + rnd(16),
        "decoder_norm.bias": rnd(16),
        "ar_pred.weight": rnd(768, 16),
        "ar_pred.bias": rnd(768),
    }
    for i in range(depth):
        sd[f"layers.{i}.norm.weight"] = 1 + rnd(dim)
        sd.update(_mamba_mixer_tensors(f"layers.{i}.mixer.", dim, g))
    hidden = 2 * dim  # MAP builds its ViT blocks with mlp_ratio / 2
    for j in range(blocks):
        sd.update({
            f"blocks.{j}.norm1.weight": 1 + rnd(dim), f"blocks.{j}.norm1.bias": rnd(dim),
            f"blocks.{j}.attn.qkv.weight": rnd(3 * dim, dim), f"blocks.{j}.attn.qkv.bias": rnd(3 * dim),
            f"blocks.{j}.attn.proj.weight": rnd(dim, dim), f"blocks.{j}.attn.proj.bias": rnd(dim),
            f"blocks.{j}.norm2.weight": 1 + rnd(dim), f"blocks.{j}.norm2.bias": rnd(dim),
            f"blocks.{j}.mlp.fc1.weight": rnd(hidden, dim), f"blocks.{j}.mlp.fc1.bias": rnd(hidden),
            f"blocks.{j}.mlp.fc2.weight": rnd(dim, hidden), f"blocks.{j}.mlp.fc2.bias": rnd(dim),
        })
    return sd


# ---------------------------------------------------------------------------------------------- VideoMamba forward


def _rms(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _scan(u, delta, A, B, C, D, z, delta_bias):
    """Sequential selective scan, real A, input-dependent B/C (b, n, l), gate z."""
    delta = F.softplus(delta + delta_bias[:, None])
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        d_t = delta[:, :, t, None]
        state = torch.exp(d_t * A) * state + d_t * B[:, None, :, t] * u[:, :, t, None]
        ys.append((state * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) + D[:, None] * u
    return y * F.silu(z)


def _direction(xz, sd, p, sfx, a_name, d_name):
    """VideoMamba's fused inner function without output projection, on xz (b, 2e, l)."""
    x, z = xz.chunk(2, dim=1)
    length, inner = x.shape[-1], x.shape[1]
    w = sd[f"{p}conv1d{sfx}.weight"]
    x = F.silu(F.conv1d(x, w, sd[f"{p}conv1d{sfx}.bias"], padding=w.shape[-1] - 1, groups=inner)[..., :length])
    x_dbl = torch.einsum("bel,re->blr", x, sd[f"{p}x_proj{sfx}.weight"])
    rank = sd[f"{p}dt_proj{sfx}.weight"].shape[1]
    n = sd[f"{p}{a_name}"].shape[1]
    dt, B, C = x_dbl[..., :rank], x_dbl[..., rank:rank + n], x_dbl[..., rank + n:]
    delta = torch.einsum("er,blr->bel", sd[f"{p}dt_proj{sfx}.weight"], dt)
    A = -torch.exp(sd[f"{p}{a_name}"])
    return _scan(x, delta, A, B.transpose(1, 2), C.transpose(1, 2), sd[f"{p}{d_name}"], z, sd[f"{p}dt_proj{sfx}.bias"])


def _mixer(h, sd, i, divide=False):
    p = f"layers.{i}.mixer."
    xz = torch.einsum("fd,bld->bfl", sd[f"{p}in_proj.weight"], h)
    y = _direction(xz, sd, p, "", "A_log", "D") + _direction(xz.flip(-1), sd, p, "_b", "A_b_log", "D_b").flip(-1)
    if divide:
        y = y / 2
    return torch.einsum("bel,de->bld", y, sd[f"{p}out_proj.weight"])


@torch.no_grad()
def videomamba_reference_logits(sd, x):
    """VideoMamba video_sm ``VisionMamba.forward`` on ``x (B, 3, T, H, W)`` from its state dict."""
    w = sd["patch_embed.proj.weight"]
    k, p = w.shape[2], w.shape[-1]
    feat = F.conv3d(x, w, sd["patch_embed.proj.bias"], stride=(k, p, p))  # (B, D, T', h, w)
    b, dim, t = feat.shape[:3]
    tokens = feat.permute(0, 2, 3, 4, 1).reshape(b * t, -1, dim)  # one row per (video, frame)
    tokens = torch.cat([sd["cls_token"].expand(b * t, -1, -1), tokens], dim=1) + sd["pos_embed"]
    cls = tokens[:b, :1]
    patches = tokens[:, 1:].reshape(b, t, -1, dim) + sd["temporal_pos_embedding"][:, :, None]
    seq = torch.cat([cls, patches.reshape(b, -1, dim)], dim=1)
    return _mamba_stack_logits(sd, seq)


@torch.no_grad()
def videomamba_image_reference_logits(sd, image):
    """VideoMamba image_sm ``VisionMamba.forward`` on ``image (B, 3, H, W)`` from its state dict: Conv2d
    stem, class token prepended at position 0, ``pos_embed`` (class row first) added, no time axis."""
    p = sd["patch_embed.proj.weight"].shape[-1]
    feat = F.conv2d(image, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)  # (B, D, h, w)
    tokens = feat.flatten(2).transpose(1, 2)
    seq = torch.cat([sd["cls_token"].expand(image.shape[0], -1, -1), tokens], dim=1) + sd["pos_embed"]
    return _mamba_stack_logits(sd, seq)


def _mamba_stack_logits(sd, seq):
    """VideoMamba's layer stack, final norm and class-token head on a token sequence (B, L, D)."""
    depth = len({k.split(".")[1] for k in sd if k.startswith("layers.")})
    residual, hidden = None, seq
    for i in range(depth):  # add, then norm, then mixer
        residual = hidden if residual is None else residual + hidden
        hidden = _mixer(_rms(residual, sd[f"layers.{i}.norm.weight"]), sd, i)
    out = _rms(residual + hidden, sd["norm_f.weight"])
    return out[:, 0] @ sd["head.weight"].T + sd["head.bias"]


# ---------------------------------------------------------------------------------------------- VideoMamba tests


def _video(frames=4, img=32, batch=2, seed=3):
    return torch.randn(batch, 3, frames, img, img, generator=torch.Generator().manual_seed(seed))


def test_videomamba_conversion_reproduces_upstream_logits():
    sd = videomamba_state_dict()
    model, report = convert_videomamba(sd)
    model.eval()
    x = _video()
    reference = videomamba_reference_logits(sd, x)
    with torch.no_grad():
        ours = model(x)
    assert reference.abs().max() > 0.1  # a meaningful comparison
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)
    assert report.loaded == len(sd) and not (report.unmapped or report.initialised or report.transformed)
    assert model.config.merge == "sum" and model.schedule == "MMM" and model.config.name is None


def test_reference_tells_merge_modes_apart():
    """The parity check is sensitive: the same weights merged by mean give other logits."""
    sd = videomamba_state_dict()
    model, _ = convert_videomamba(sd, merge="mean")
    with torch.no_grad():
        assert (model.eval()(_video()) - videomamba_reference_logits(sd, _video())).abs().max() > 1e-2


def test_videomamba_tiny_layout_is_recognised():
    sd = videomamba_state_dict(dim=192, depth=24, frames=2, img=32, classes=3, seed=5)
    model, _ = convert_videomamba(sd)
    assert model.config.name == "videomamba_tiny"
    assert (model.num_frames, model.img_size, model.num_classes) == (2, (32, 32), 3)


@pytest.mark.slow
def test_videomamba_tiny_conversion_reproduces_upstream_logits():
    sd = videomamba_state_dict(dim=192, depth=24, frames=2, img=32, classes=3, seed=5)
    model, _ = convert_videomamba(sd)
    x = _video(frames=2, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), videomamba_reference_logits(sd, x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("wrap", ["bare", "model", "module"])
def test_convert_command_reads_training_checkpoints(tmp_path, wrap, capsys):
    sd = videomamba_state_dict(tubelet=2)
    if wrap == "model":
        obj = {"model": sd, "epoch": 3, "args": argparse.Namespace(lr=1e-3, model="videomamba_tiny")}
    elif wrap == "module":
        obj = {"module": {f"module.{k}": v for k, v in sd.items()}}
    else:
        obj = sd
    src = tmp_path / "ckpt.pth"
    torch.save(obj, src)
    assert read_upstream_checkpoint(src).keys() == sd.keys()
    out = tmp_path / "converted"
    assert convert_main([str(src), str(out)]) == 0
    assert "converted a videomamba checkpoint" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "conversion.json"}
    model = VideoMAP.from_pretrained(out).eval()
    x = _video()
    with torch.no_grad():
        torch.testing.assert_close(model(x), videomamba_reference_logits(sd, x), atol=1e-4, rtol=0)
    # Converting again into the same place needs --overwrite.
    assert convert_main([str(src), str(out)]) == 1
    assert convert_main([str(src), str(out), "--overwrite"]) == 0


class NotAWeight:
    """A stand-in for an arbitrary pickled object."""

    def __init__(self, value):
        self.value = value


def test_untrusted_pickles_need_trust_pickle(tmp_path, capsys):
    src = tmp_path / "odd.pth"
    torch.save({"model": videomamba_state_dict(), "extra": NotAWeight(1)}, src)
    with pytest.raises(RuntimeError, match="--trust-pickle"):
        read_upstream_checkpoint(src)
    assert convert_main([str(src), str(tmp_path / "a")]) == 1
    assert "--trust-pickle" in capsys.readouterr().err
    assert convert_main([str(src), str(tmp_path / "b"), "--trust-pickle"]) == 0


def test_videomamba_keys_that_do_not_fit_are_listed(tmp_path):
    sd = videomamba_state_dict()
    sd["clip_decoder.0.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError, match="clip_decoder.0.weight"):
        convert_videomamba(sd)
    _, report = convert_videomamba(sd, strict=False)
    assert report.unmapped == ["clip_decoder.0.weight"]
    src = tmp_path / "k.pth"
    torch.save(sd, src)
    assert convert_main([str(src), str(tmp_path / "out")]) == 1
    assert convert_main([str(src), str(tmp_path / "out"), "--allow-partial"]) == 0


def test_videomamba_other_frame_count_resamples_and_says_so():
    sd = videomamba_state_dict(frames=4)
    model, report = convert_videomamba(sd, num_frames=8, num_classes=2)
    assert model.temporal_pos_embedding.shape[1] == 8
    assert any("temporal_pos_embedding" in line for line in report.transformed)
    assert set(report.initialised) == {"head.weight", "head.bias"}
    assert report.loaded == len(sd) - 3
    with pytest.raises(ValueError, match="tubelet_size applies to image checkpoints only"):
        convert_checkpoint(_saved(sd), source="videomamba", tubelet_size=2)


def _saved(sd):
    import tempfile

    path = tempfile.NamedTemporaryFile(suffix=".pth", delete=False).name
    torch.save(sd, path)
    return path


# ---------------------------------------------------------------------------------------------- image MAP tests


def test_map_schedule_follows_map_layer_order():
    assert map_schedule(24, 8) == "MMMA" * 8
    assert map_schedule(6, 1) == "MMMAMMM"
    assert map_schedule(4, 0) == "MMMM"


def test_detect_source():
    assert detect_source(videomamba_state_dict()) == "videomamba"
    assert detect_source(map_state_dict()) == "map"


def test_inflated_stem_matches_the_image_stem_on_static_clips():
    w2d = torch.randn(8, 3, 4, 4)
    w3d = inflate_patch_embed(w2d, 2)
    assert w3d.shape == (8, 3, 2, 4, 4)
    torch.testing.assert_close(w3d.sum(2), w2d)
    frame = torch.randn(1, 3, 8, 8)
    clip = frame[:, :, None].expand(-1, -1, 2, -1, -1)
    torch.testing.assert_close(F.conv3d(clip, w3d, stride=(2, 4, 4))[:, :, 0], F.conv2d(frame, w2d, stride=4))


def test_map_conversion_maps_every_layer_in_map_layout():
    sd = map_state_dict()
    model, report = convert_map(sd, num_frames=4, tubelet_size=2)
    cfg = model.config
    assert (cfg.schedule, cfg.mlp_ratio, cfg.merge, cfg.num_heads, cfg.num_classes) == ("MMMAMMMA", 2.0, "mean", 12, 0)
    assert (cfg.img_size, cfg.tubelet_size, cfg.num_frames) == (64, 2, 4)
    # Mamba layer i -> i-th M layer, block j -> j-th A layer.
    for src, dst in ((0, 0), (2, 2), (3, 4), (5, 6)):
        torch.testing.assert_close(model.layers[dst].mixer.in_proj.weight, sd[f"layers.{src}.mixer.in_proj.weight"])
        torch.testing.assert_close(model.layers[dst].mixer.A_b_log, sd[f"layers.{src}.mixer.A_b_log"])
    for src, dst in ((0, 3), (1, 7)):
        torch.testing.assert_close(model.layers[dst].attn.qkv.weight, sd[f"blocks.{src}.attn.qkv.weight"])
        torch.testing.assert_close(model.layers[dst].mlp.fc2.weight, sd[f"blocks.{src}.mlp.fc2.weight"])
    torch.testing.assert_close(model.cls_token, sd["cls_token"].mean(1, keepdim=True))
    torch.testing.assert_close(model.pos_embed[:, 0], sd["pos_embed_cls"].mean(1))
    torch.testing.assert_close(model.pos_embed[:, 1:], sd["pos_embed"])
    assert report.initialised == ["temporal_pos_embedding"]
    unmapped = {line.split()[0] for line in report.unmapped}
    assert unmapped == {"neck.weight", "norm_neck.weight", "head.weight", "head.bias", "mask_token", "decoder_embed.weight",
                        "decoder_embed.bias", "decoder_pos_embed_learned", "decoder_blocks.0.attn2.q.weight",
                        "decoder_norm.weight", "decoder_norm.bias", "ar_pred.weight", "ar_pred.bias"}
    # On a clip of identical frames the stem reproduces the image model's patch embedding.
    frame = torch.randn(1, 3, 64, 64)
    clip = frame[:, :, None].expand(-1, -1, 4, -1, -1)
    tokens = model.patch_embed(clip)  # (1, T', N, D)
    image = F.conv2d(frame, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16)
    torch.testing.assert_close(tokens[:, 1], image.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert model(clip).shape == (1, cfg.embed_dim)


def test_map_conversion_resamples_positions_to_another_size():
    sd = map_state_dict(img=64)
    model, report = convert_map(sd, img_size=32)
    assert model.pos_embed.shape == (1, 1 + 4, 48)
    assert any(line.startswith("pos_embed: 4x4 -> 2x2") for line in report.transformed)


def test_map_into_a_registered_videomap_reports_what_does_not_fit():
    sd = map_state_dict(dim=192, depth=24, blocks=8, img=32, num_cls=12, cls_reduce=1)
    model, report = convert_map(sd, name="videomap_tiny", num_frames=2)
    assert model.schedule == "MMMMA" * 6 and model.config.num_heads == 3
    mamba_slots = [i for i, k in enumerate(model.schedule) if k == "M"]
    torch.testing.assert_close(model.layers[mamba_slots[23]].mixer.x_proj.weight, sd["layers.23.mixer.x_proj.weight"])
    torch.testing.assert_close(model.layers[4].attn.proj.weight, sd["blocks.0.attn.proj.weight"])
    unmapped = {line.split()[0] for line in report.unmapped}
    # MLP ratio 2 vs 4: fc1/fc2 do not fit; blocks 6 and 7 have no A layer left.
    assert "blocks.0.mlp.fc1.weight" in unmapped and "blocks.0.attn.qkv.weight" not in unmapped
    assert {k for k in sd if k.startswith(("blocks.6.", "blocks.7."))} <= unmapped
    assert "layers.4.mlp.fc1.weight" in report.initialised
    assert not any(k.startswith("layers.") and ".mixer." in k for k in report.initialised)


def test_map_convert_command(tmp_path, capsys):
    src = tmp_path / "map.pth"
    torch.save({"model": map_state_dict(), "epoch": 799}, src)
    out = tmp_path / "videomap_from_map"
    assert convert_main([str(src), str(out), "--num-frames", "4", "--tubelet-size", "2", "--num-heads", "4"]) == 0
    text = capsys.readouterr().out
    assert "converted a map checkpoint" in text and "decoder_embed.weight" in text
    model = VideoMAP.from_pretrained(out)
    assert (model.config.num_heads, model.config.tubelet_size, model.schedule) == (4, 2, "MMMAMMMA")
    # The directory loads through create_model too, with a fresh classifier for fine-tuning.
    finetune = create_model("videomap_tiny", checkpoint_path=out, schedule="MMMAMMMA", embed_dim=48, num_heads=4,
                            mlp_ratio=2.0, tubelet_size=2, num_frames=4, img_size=64, num_classes=10)
    assert finetune.head.weight.shape == (10, 48)


def test_map_into_a_registered_row_notes_another_head_count():
    """The qkv weights of a 12-head checkpoint regrouped into 3 heads compute another attention; the report
    says so, with both counts."""
    sd = map_state_dict(dim=192, depth=24, blocks=8, img=32, num_cls=12, cls_reduce=1)
    _, report = convert_map(sd, name="videomap_tiny", num_frames=2)
    head_notes = [note for note in report.notes if "heads" in note]
    assert len(head_notes) == 1, report.notes
    assert "12 heads" in head_notes[0] and "3 heads" in head_notes[0], head_notes[0]
    # Declared head counts that the target keeps give no such note.
    for declared in (3, 12):
        model, report = convert_map(sd, name="videomap_tiny", num_frames=2, num_heads=declared)
        assert model.config.num_heads == declared
        assert not [note for note in report.notes if "heads" in note], report.notes


# ---------------------------------------------------------------------------------------------- VideoMamba image tests


def test_videomamba_image_layout_is_detected():
    assert detect_source(videomamba_image_state_dict()) == "videomamba_image"
    # The ImageNet layout itself: 1 + 14x14 position rows at 224x224.
    assert detect_source(videomamba_image_state_dict(dim=16, depth=1, img=224)) == "videomamba_image"
    assert detect_source(map_state_dict()) == "map"


def test_videomamba_image_conversion_reproduces_the_image_model_on_one_frame():
    sd = videomamba_image_state_dict()
    model, report = convert_checkpoint(_saved(sd), num_frames=1)
    model.eval()
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    reference = videomamba_image_reference_logits(sd, image)
    with torch.no_grad():
        ours = model(image[:, :, None])  # (B, 3, 1, H, W)
    assert reference.abs().max() > 0.1  # a meaningful comparison
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)
    assert report.source == "videomamba_image"
    assert (model.config.merge, model.schedule, model.num_classes) == ("sum", "MM", 5)
    assert any(line.startswith("patch_embed.proj.weight") and "inflated" in line for line in report.transformed)
    assert any("temporal_pos_embedding" in note and "zero" in note for note in report.notes), report.notes


@pytest.mark.parametrize("tubelet", [1, 2])
def test_videomamba_image_inflates_into_a_video_model(tubelet):
    sd = videomamba_image_state_dict()
    model, report = convert_checkpoint(_saved(sd), num_frames=8, tubelet_size=tubelet)
    assert (model.num_frames, model.tubelet_size, model.temporal_pos_embedding.shape[1]) == (8, tubelet, 8 // tubelet)
    # Every image tensor has its place, and only the temporal embedding is new (at zero).
    assert report.unmapped == [] and report.initialised == ["temporal_pos_embedding"]
    assert report.loaded + len(report.transformed) == len(sd)
    assert torch.count_nonzero(model.temporal_pos_embedding) == 0
    # Centre inflation: the 2-D kernel in the middle slice of the tubelet, zeros elsewhere.
    weight = model.patch_embed.proj.weight
    centre = tubelet // 2
    torch.testing.assert_close(weight[:, :, centre], sd["patch_embed.proj.weight"])
    assert torch.count_nonzero(weight) == torch.count_nonzero(weight[:, :, centre])
    # So each tubelet's token is the image stem applied to its centre frame.
    clip = torch.randn(1, 3, 8, 32, 32, generator=torch.Generator().manual_seed(7))
    tokens = model.patch_embed(clip)  # (1, T', N, D)
    frame = clip[:, :, tubelet + centre]  # centre frame of tubelet 1
    image = F.conv2d(frame, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16)
    torch.testing.assert_close(tokens[:, 1], image.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert model(clip).shape == (1, 5)
    # What the directory holds loads strictly into the config it records.
    VideoMAP(model.config).load_state_dict(model.state_dict(), strict=True)


def test_videomamba_image_resamples_positions_and_recognises_the_row(tmp_path, capsys):
    sd = videomamba_image_state_dict(dim=192, depth=24, img=64, classes=3, seed=6)
    src = tmp_path / "videomamba_t16_in1k.pth"
    torch.save({"model": sd}, src)
    out = tmp_path / "videomamba_t_video"
    assert convert_main([str(src), str(out), "--num-frames", "4", "--tubelet-size", "2", "--img-size", "32",
                         "--num-classes", "10"]) == 0
    text = capsys.readouterr().out
    assert "converted a videomamba_image checkpoint" in text and "inflated" in text
    model = VideoMAP.from_pretrained(out)
    assert model.config.name == "videomamba_tiny"
    assert (model.num_frames, model.tubelet_size, model.img_size, model.num_classes) == (4, 2, (32, 32), 10)
    assert model.pos_embed.shape == (1, 1 + 4, 192)
    # --num-heads has no meaning for a pure-Mamba model.
    assert convert_main([str(src), str(tmp_path / "x"), "--num-heads", "4"]) == 1
    assert "MAP checkpoints only" in capsys.readouterr().err


def test_videomamba_image_keys_that_do_not_fit_are_listed():
    sd = videomamba_image_state_dict()
    sd["head_dist.weight"] = torch.zeros(5, 32)
    with pytest.raises(CheckpointMismatchError, match="head_dist.weight"):
        convert_checkpoint(_saved(sd))
    _, report = convert_checkpoint(_saved(sd), strict=False)
    assert report.unmapped == ["head_dist.weight"]
