"""Video transforms: one set of random parameters per clip, shapes, dtypes and test views."""

from __future__ import annotations

import pytest
import torch

from videomap.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RAND_AUGMENT_OPS,
    RandAugment,
    VideoTestTransform,
    VideoTrainTransform,
    center_crop,
    get_preset,
    hflip,
    multi_scale_crop,
    normalize,
    random_erasing,
    random_hflip,
    random_resized_crop,
    resize,
    short_side_resize,
    spatial_crops,
    to_cthw,
)
from videomap.data.randaugment import apply_op
from videomap.data.transforms import multi_scale_crop_params, random_resized_crop_params


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def textured(h=61, w=97, seed=0):
    """A random uint8 image (H, W, 3) with structure (so crops and flips are visible)."""
    g = gen(seed)
    base = torch.randint(0, 256, (h // 4 + 1, w // 4 + 1, 3), generator=g, dtype=torch.uint8)
    return base.repeat_interleave(4, 0).repeat_interleave(4, 1)[:h, :w].contiguous()


def static_clip(t=5, h=61, w=97):
    """``uint8 (T, H, W, 3)``: the same frame T times."""
    return textured(h, w).unsqueeze(0).repeat(t, 1, 1, 1)


def assert_frames_identical(x, dim_t=1):
    ref = x.select(dim_t, 0)
    for i in range(x.shape[dim_t]):
        assert torch.equal(x.select(dim_t, i), ref), f"frame {i} differs from frame 0"


# -------------------------------------------------------------------------------- same params / frame


@pytest.mark.parametrize("seed", range(6))
def test_train_transform_uses_one_draw_for_all_frames(seed):
    """Identical input frames must stay identical: crop, flip, RandAugment and erasing are per clip."""
    t = VideoTrainTransform(32, rand_augment="rand-m9-n4-mstd0.5-inc1", reprob=1.0)
    out = t(static_clip(), gen(seed))
    assert out.shape == (3, 5, 32, 32) and out.dtype == torch.float32
    assert_frames_identical(out)


@pytest.mark.parametrize("name", sorted(RAND_AUGMENT_OPS))
def test_each_rand_augment_op_is_frame_consistent(name):
    x = to_cthw(static_clip(4, 24, 40)).float() / 255
    y = apply_op(x, name, 9.0, sign=-1.0)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert_frames_identical(y)
    if name not in ("auto_contrast", "equalize"):  # these can be no-ops on some content
        assert not torch.allclose(y, x, atol=1e-3), f"{name} at magnitude 9 changed nothing"


def test_geometric_ops_match_per_frame_application():
    """On a clip whose frames differ, the clip op equals the same parameters applied frame by frame."""
    clip = torch.stack([textured(40, 56, seed=s) for s in range(4)])  # (T, H, W, 3)
    x = to_cthw(clip)
    top, left, h, w = random_resized_crop_params(40, 56, generator=gen(3))
    out = random_resized_crop(x, 24, generator=gen(3))
    for t in range(4):
        frame = x[:, t:t + 1, top:top + h, left:left + w]
        assert torch.equal(out[:, t:t + 1], resize(frame, 24))
    assert torch.equal(multi_scale_crop(x, 20, generator=gen(9)),
                       resize(x[..., slice(*_rows(multi_scale_crop_params(40, 56, generator=gen(9)))),
                                slice(*_cols(multi_scale_crop_params(40, 56, generator=gen(9))))], 20))


def _rows(p):
    return p[0], p[0] + p[2]


def _cols(p):
    return p[1], p[1] + p[3]


def test_random_erasing_same_box_every_frame():
    x = normalize(to_cthw(torch.stack([textured(32, 32, seed=s) for s in range(3)])))
    y = random_erasing(x, prob=1.0, generator=gen(1))
    changed = (y != x).any(dim=0)  # (T, H, W)
    assert changed.any()
    assert torch.equal(changed[0], changed[1]) and torch.equal(changed[0], changed[2])
    assert torch.equal(random_erasing(x, prob=0.0, generator=gen(1)), x)


# -------------------------------------------------------------------------------------- basic ops


def test_resize_keeps_dtype_and_short_side():
    x = to_cthw(static_clip(2, 61, 97))
    y = short_side_resize(x, 32)
    assert y.dtype == torch.uint8 and y.shape == (3, 2, 32, 51)
    assert short_side_resize(x.permute(0, 1, 3, 2), 32).shape == (3, 2, 51, 32)
    assert resize(x.float(), (10, 12)).dtype == torch.float32


def test_flip_and_random_flip():
    x = to_cthw(static_clip(2, 8, 10))
    assert torch.equal(hflip(hflip(x)), x) and torch.equal(hflip(x)[..., 0], x[..., -1])
    outcomes = {torch.equal(random_hflip(x, generator=gen(s)), x) for s in range(20)}
    assert outcomes == {True, False}


def test_spatial_crops_positions():
    x = to_cthw(static_clip(2, 32, 64))
    views = spatial_crops(x, 32, 3)
    assert views.shape == (3, 3, 2, 32, 32)
    assert torch.equal(views[0], x[..., :, 0:32]) and torch.equal(views[1], x[..., :, 16:48])
    assert torch.equal(views[2], x[..., :, 32:64])
    tall = x.transpose(-1, -2)
    assert torch.equal(spatial_crops(tall, 32, 3)[2], tall[..., 32:64, :])
    assert torch.equal(spatial_crops(x, 32, 1)[0], center_crop(x, 32))


def test_normalize_values():
    x = torch.full((3, 1, 2, 2), 255, dtype=torch.uint8)
    y = normalize(x)
    expect = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(y[:, 0, 0, 0], expect)
    assert torch.allclose(normalize(x.float() / 255), y)


def test_rand_augment_spec_parsing():
    ra = RandAugment.from_string("rand-m7-n4-mstd0.5-inc1")
    assert (ra.magnitude, ra.num_ops, ra.magnitude_std, ra.increasing) == (7.0, 4, 0.5, True)
    with pytest.raises(ValueError):
        RandAugment.from_string("rand-m7-q3")
    with pytest.raises(ValueError):
        RandAugment(ops=["warp"])


def test_rand_augment_specific_ops():
    x = to_cthw(static_clip(2, 16, 16)).float() / 255
    assert torch.allclose(apply_op(apply_op(x, "invert", 0), "invert", 0), x)
    assert torch.allclose(apply_op(x, "rotate", 0.0), x, atol=1e-5)
    shifted = apply_op(x, "translate_x", 10.0 * 4 / (16 * 0.45))  # 4 pixels
    assert torch.allclose(shifted[..., :, 4:], x[..., :, :-4], atol=1e-5) or \
        torch.allclose(shifted[..., :, :-4], x[..., :, 4:], atol=1e-5)
    assert torch.allclose(apply_op(x, "brightness", 10.0, sign=-1.0), x * 0.1, atol=1e-6)


def test_train_transform_is_reproducible_and_varies_with_seed():
    t = VideoTrainTransform(32)
    clip = static_clip(4)
    assert torch.equal(t(clip, gen(7)), t(clip, gen(7)))
    assert not torch.equal(t(clip, gen(7)), t(clip, gen(8)))
    assert VideoTrainTransform(32, crop="multi_scale")(clip, gen(0)).shape == (3, 4, 32, 32)


def test_ssv2_preset_never_flips():
    assert get_preset("ssv2").flip is False
    clip = torch.stack([textured(32, 32, seed=s) for s in range(2)])
    t = VideoTrainTransform(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, rand_augment=None, reprob=0.0)
    expected = normalize(to_cthw(clip))
    for s in range(10):
        assert torch.allclose(t(clip, gen(s)), expected)


def test_test_transform_views():
    t = VideoTestTransform(32, num_crops=3)
    out = t(static_clip(4, 61, 97))
    assert out.shape == (3, 3, 4, 32, 32) and out.dtype == torch.float32
    assert not torch.equal(out[0], out[2])  # left and right crops differ
    assert VideoTestTransform(32, short_side=40, num_crops=1)(static_clip(4)).shape == (1, 3, 4, 32, 32)
