"""Video transforms in torch.

Convention: every transform takes and returns a clip laid out ``(C, T, H, W)``. Geometric ops keep the
dtype (``uint8`` clips are resized in float and rounded back), so cropping and resizing can run on the
small ``uint8`` clip before it becomes float; :func:`normalize` turns it into float. The decoder's
``uint8 (T, H, W, C)`` output enters through :func:`to_cthw`.

Every random op draws its parameters once per clip from an explicit ``torch.Generator`` and applies
them to all frames: a crop, flip or erased box never jumps between frames.

The composed pipelines output normalised float ``(C, T, S, S)`` (train) or ``(num_crops, C, T, S, S)``
(test), the model's input layout (DESIGN §2: ``(B, C, T, H, W)``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .randaugment import RandAugment
from .seeding import entropy_seed

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "to_cthw",
    "resize",
    "short_side_resize",
    "crop",
    "center_crop",
    "spatial_crops",
    "random_resized_crop_params",
    "random_resized_crop",
    "multi_scale_crop_params",
    "multi_scale_crop",
    "hflip",
    "random_hflip",
    "normalize",
    "random_erasing",
    "VideoTrainTransform",
    "VideoTestTransform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _size2(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _torch_generator(generator) -> torch.Generator:
    if generator is None:
        return torch.Generator().manual_seed(entropy_seed())
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, np.random.Generator):
        return torch.Generator().manual_seed(int(generator.integers(1 << 62)))
    raise TypeError(f"expected a torch.Generator or numpy.random.Generator, got {type(generator).__name__}")


def _rand(generator: torch.Generator, n: int = 1) -> list[float]:
    return torch.rand(n, generator=generator, dtype=torch.float64).tolist()


def _randint(generator: torch.Generator, high: int) -> int:
    """Uniform integer in ``[0, high)``."""
    return int(torch.randint(high, (1,), generator=generator))


# ------------------------------------------------------------------------------------ layout, resize


def to_cthw(clip: torch.Tensor) -> torch.Tensor:
    """``(T, H, W, C)`` → ``(C, T, H, W)`` (a view, no copy)."""
    if clip.ndim != 4:
        raise ValueError(f"expected a clip (T, H, W, C), got shape {tuple(clip.shape)}")
    return clip.permute(3, 0, 1, 2)


def resize(x: torch.Tensor, size, interpolation: str = "bilinear") -> torch.Tensor:
    """Resize every frame of ``x (C, T, H, W)`` to ``size`` (int or ``(h, w)``); dtype is kept."""
    h, w = _size2(size)
    if x.shape[-2:] == (h, w):
        return x
    frames = x.permute(1, 0, 2, 3)  # (T, C, H, W): frames as the batch
    y = frames.float() if not frames.is_floating_point() else frames
    kwargs = {"antialias": True, "align_corners": False} if interpolation in ("bilinear", "bicubic") else {}
    y = F.interpolate(y, size=(h, w), mode=interpolation, **kwargs)
    if x.dtype == torch.uint8:
        y = y.round_().clamp_(0, 255).to(torch.uint8)
    elif y.dtype != x.dtype:
        y = y.to(x.dtype)
    return y.permute(1, 0, 2, 3)


def short_side_resize(x: torch.Tensor, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """Resize so that the shorter side of ``x (C, T, H, W)`` is ``size``, keeping the aspect ratio."""
    h, w = x.shape[-2:]
    if h <= w:
        new = (size, max(1, int(round(w * size / h))))
    else:
        new = (max(1, int(round(h * size / w))), size)
    return resize(x, new, interpolation)


# ------------------------------------------------------------------------------------------ crops


def crop(x: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """The same window of every frame: ``(C, T, height, width)``."""
    return x[..., top:top + height, left:left + width]


def center_crop(x: torch.Tensor, size) -> torch.Tensor:
    """Central ``size`` window; a clip smaller than ``size`` is first resized up on its short side."""
    h, w = _size2(size)
    if x.shape[-2] < h or x.shape[-1] < w:
        x = short_side_resize(x, max(h, w))
    H, W = x.shape[-2:]
    return crop(x, (H - h) // 2, (W - w) // 2, h, w)


def spatial_crops(x: torch.Tensor, size: int, num_crops: int = 3) -> torch.Tensor:
    """``num_crops`` square crops spread evenly along the long side (centred on the short side):
    left/centre/right for landscape, top/centre/bottom for portrait; one crop = the centre crop.

    Returns: ``(num_crops, C, T, size, size)``.
    """
    if num_crops < 1:
        raise ValueError("num_crops must be >= 1")
    if min(x.shape[-2:]) < size:
        x = short_side_resize(x, size)
    H, W = x.shape[-2:]
    views = []
    for k in range(num_crops):
        frac = 0.5 if num_crops == 1 else k / (num_crops - 1)
        if W >= H:
            top, left = (H - size) // 2, int(round((W - size) * frac))
        else:
            top, left = int(round((H - size) * frac)), (W - size) // 2
        views.append(crop(x, top, left, size, size))
    return torch.stack(views)


def random_resized_crop_params(height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), *,
                               generator: torch.Generator, attempts: int = 10) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a window covering a random ``scale`` fraction of the frame with a random
    aspect ratio (log-uniform in ``ratio``); after ``attempts`` misses, the largest central window whose
    aspect ratio is within ``ratio``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        u_area, u_ratio = _rand(generator, 2)
        target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return _randint(generator, height - h + 1), _randint(generator, width - w + 1), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(x: torch.Tensor, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), *,
                        generator: torch.Generator, interpolation: str = "bilinear") -> torch.Tensor:
    """Crop one random window (same for all frames) and resize it to ``size``: ``(C, T, h, w)``."""
    top, left, h, w = random_resized_crop_params(x.shape[-2], x.shape[-1], scale, ratio, generator=generator)
    return resize(crop(x, top, left, h, w), size, interpolation)


def multi_scale_crop_params(height: int, width: int, scales=(1.0, 0.875, 0.75, 0.66), max_distort: int = 1,
                            fix_crop: bool = True, more_fix_crop: bool = True, *,
                            generator: torch.Generator) -> tuple[int, int, int, int]:
    """TSN multi-scale crop window ``(top, left, h, w)``.

    Crop height and width are fractions (from ``scales``) of the short side, picked independently but
    at most ``max_distort`` steps apart in the list; the window sits at one of a fixed set of positions
    (corners and centre; with ``more_fix_crop`` also edge midpoints and quarter points) or, without
    ``fix_crop``, anywhere.
    """
    base = min(height, width)
    sizes = [max(1, int(base * s)) for s in scales]
    pairs = [(i, j) for i in range(len(sizes)) for j in range(len(sizes)) if abs(i - j) <= max_distort]
    i, j = pairs[_randint(generator, len(pairs))]
    h, w = sizes[i], sizes[j]
    if not fix_crop:
        return _randint(generator, height - h + 1), _randint(generator, width - w + 1), h, w
    hs, ws = (height - h) / 4, (width - w) / 4
    grid = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]  # (row, col) in quarter steps
    if more_fix_crop:
        grid += [(2, 0), (2, 4), (4, 2), (0, 2), (1, 1), (1, 3), (3, 1), (3, 3)]
    r, c = grid[_randint(generator, len(grid))]
    return int(round(r * hs)), int(round(c * ws)), h, w


def multi_scale_crop(x: torch.Tensor, size, scales=(1.0, 0.875, 0.75, 0.66), max_distort: int = 1,
                     fix_crop: bool = True, more_fix_crop: bool = True, *, generator: torch.Generator,
                     interpolation: str = "bilinear") -> torch.Tensor:
    """TSN multi-scale crop (see :func:`multi_scale_crop_params`) resized to ``size``."""
    top, left, h, w = multi_scale_crop_params(x.shape[-2], x.shape[-1], scales, max_distort, fix_crop,
                                              more_fix_crop, generator=generator)
    return resize(crop(x, top, left, h, w), size, interpolation)


# ------------------------------------------------------------------------------ flip, colour, erase


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror every frame left-right."""
    return x.flip(-1)


def random_hflip(x: torch.Tensor, p: float = 0.5, *, generator: torch.Generator) -> torch.Tensor:
    """Mirror the whole clip with probability ``p``."""
    return hflip(x) if _rand(generator)[0] < p else x


def normalize(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """``(x - mean) / std`` per channel, with ``mean``/``std`` in ``[0, 1]`` units; ``uint8`` input is
    scaled by 1/255 first. Returns float32 ``(C, T, H, W)``."""
    y = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    m = torch.as_tensor(mean, dtype=y.dtype).view(-1, 1, 1, 1)
    s = torch.as_tensor(std, dtype=y.dtype).view(-1, 1, 1, 1)
    return (y - m) / s


def random_erasing(x: torch.Tensor, prob: float = 0.25, area=(0.02, 1 / 3),
                   log_ratio=(math.log(0.3), math.log(1 / 0.3)), mode: str = "pixel", *,
                   generator: torch.Generator, attempts: int = 10) -> torch.Tensor:
    """With probability ``prob``, fill one random box (the same box in every frame) of the normalised
    float clip ``x (C, T, H, W)``: ``"pixel"`` = per-pixel standard-normal noise (the same noise in every
    frame, a static occluder), ``"rand"`` = one normal value per channel, ``"const"`` = 0."""
    if mode not in ("pixel", "rand", "const"):
        raise ValueError(f"unknown random-erasing mode {mode!r}")
    if _rand(generator)[0] >= prob:
        return x
    c, _, H, W = x.shape
    for _ in range(attempts):
        u_area, u_ratio = _rand(generator, 2)
        target = H * W * (area[0] + (area[1] - area[0]) * u_area)
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u_ratio)
        h = int(round(math.sqrt(target * aspect)))
        w = int(round(math.sqrt(target / aspect)))
        if 0 < h < H and 0 < w < W:
            top, left = _randint(generator, H - h + 1), _randint(generator, W - w + 1)
            if mode == "pixel":
                fill = torch.randn(c, 1, h, w, generator=generator, dtype=x.dtype)
            elif mode == "rand":
                fill = torch.randn(c, 1, 1, 1, generator=generator, dtype=x.dtype)
            else:
                fill = torch.zeros(c, 1, 1, 1, dtype=x.dtype)
            x = x.clone()
            x[:, :, top:top + h, left:left + w] = fill
            return x
    return x


# --------------------------------------------------------------------------------------- pipelines


class VideoTrainTransform:
    """Training augmentation: ``uint8 (T, H, W, 3)`` → normalised float ``(3, T, S, S)``.

    Order: crop (random-resized or TSN multi-scale) and resize to ``input_size`` on the uint8 clip →
    horizontal flip (``flip=False`` for SSv2, whose labels name directions) → RandAugment →
    normalise → random erasing. One draw of every parameter per clip.

    Args:
        input_size: output side ``S``.
        crop: ``"random_resized"`` (``scale``, ``ratio``) or ``"multi_scale"`` (``scales``).
        rand_augment: a spec string such as ``"rand-m7-n4-mstd0.5-inc1"``, a :class:`RandAugment`, or None.
        reprob: random-erasing probability (0 disables), ``remode`` its fill mode.
    """

    def __init__(self, input_size: int = 224, *, crop: str = "random_resized", scale=(0.08, 1.0),
                 ratio=(3 / 4, 4 / 3), scales=(1.0, 0.875, 0.75, 0.66), flip: bool = True,
                 rand_augment: str | RandAugment | None = "rand-m7-n4-mstd0.5-inc1", reprob: float = 0.25,
                 remode: str = "pixel", mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation: str = "bicubic"):
        if crop not in ("random_resized", "multi_scale"):
            raise ValueError(f"crop must be 'random_resized' or 'multi_scale', got {crop!r}")
        self.input_size, self.crop = int(input_size), crop
        self.scale, self.ratio, self.scales = tuple(scale), tuple(ratio), tuple(scales)
        self.flip, self.reprob, self.remode = bool(flip), float(reprob), remode
        self.mean, self.std, self.interpolation = tuple(mean), tuple(std), interpolation
        self.rand_augment = RandAugment.from_string(rand_augment) if isinstance(rand_augment, str) else rand_augment

    def __call__(self, clip: torch.Tensor, generator=None) -> torch.Tensor:
        g = _torch_generator(generator)
        x = to_cthw(clip)
        if self.crop == "random_resized":
            x = random_resized_crop(x, self.input_size, self.scale, self.ratio, generator=g,
                                    interpolation=self.interpolation)
        else:
            x = multi_scale_crop(x, self.input_size, self.scales, generator=g, interpolation=self.interpolation)
        if self.flip:
            x = random_hflip(x, generator=g)
        if self.rand_augment is not None:
            x = self.rand_augment(x.float() / 255.0 if x.dtype == torch.uint8 else x.float(), g)
        x = normalize(x, self.mean, self.std)
        if self.reprob > 0:
            x = random_erasing(x, self.reprob, mode=self.remode, generator=g)
        return x.contiguous()

    def __repr__(self) -> str:
        return (f"VideoTrainTransform(input_size={self.input_size}, crop={self.crop!r}, flip={self.flip}, "
                f"rand_augment={self.rand_augment!r}, reprob={self.reprob})")


class VideoTestTransform:
    """Test views: ``uint8 (T, H, W, 3)`` → normalised float ``(num_crops, 3, T, S, S)``.

    Resize the short side to ``short_side`` (default ``input_size``), then take ``num_crops`` square
    crops of side ``input_size`` along the long side (3 = three-crop, 1 = centre crop).
    """

    def __init__(self, input_size: int = 224, *, short_side: int | None = None, num_crops: int = 3,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation: str = "bilinear"):
        self.input_size, self.num_crops = int(input_size), int(num_crops)
        self.short_side = int(short_side) if short_side is not None else self.input_size
        if self.short_side < self.input_size:
            raise ValueError(f"short_side {self.short_side} is smaller than the crop {self.input_size}")
        self.mean, self.std, self.interpolation = tuple(mean), tuple(std), interpolation

    def __call__(self, clip: torch.Tensor, generator=None) -> torch.Tensor:
        x = short_side_resize(to_cthw(clip), self.short_side, self.interpolation)
        views = spatial_crops(x, self.input_size, self.num_crops)
        return normalize(views, self.mean, self.std).contiguous()  # (C,1,1,1) stats broadcast over the crop axis

    def __repr__(self) -> str:
        return (f"VideoTestTransform(input_size={self.input_size}, short_side={self.short_side}, "
                f"num_crops={self.num_crops})")
