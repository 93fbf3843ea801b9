"""Video-consistent RandAugment in torch.

Each op acts on a whole clip ``(C, T, H, W)`` float in ``[0, 1]`` with one set of parameters, so every
frame gets the same rotation, the same colour change, … Statistics that ops need (contrast mean,
autocontrast range, equalisation histogram) are taken over the whole clip for the same reason: a
per-frame statistic would make the change flicker from frame to frame.

Configured like the RandAugment strings of video fine-tuning recipes, e.g. ``"rand-m7-n4-mstd0.5-inc1"``:
``n`` ops drawn with replacement, each applied with probability ``p`` (0.5) at magnitude ``m`` (0–10)
jittered by a normal of std ``mstd``; ``inc1`` uses variants whose strength grows with magnitude.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["RandAugment", "RAND_AUGMENT_OPS", "apply_op"]

_MAX_LEVEL = 10.0
_GRAY = torch.tensor([0.299, 0.587, 0.114])


# ------------------------------------------------------------------------------------------- ops
# Every op: (x (C, T, H, W) float in [0, 1], argument, fill (C,)) -> same shape.


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] == 1:
        return x
    w = _GRAY.to(x).view(3, 1, 1, 1)
    return (x * w).sum(0, keepdim=True)


def _blend(img: torch.Tensor, degenerate: torch.Tensor, factor: float) -> torch.Tensor:
    # factor 0 gives the degenerate image, 1 the original, > 1 extrapolates (as PIL's ImageEnhance).
    return (degenerate + (img - degenerate) * factor).clamp_(0.0, 1.0)


def _brightness(x, f, fill):
    return _blend(x, torch.zeros_like(x), f)


def _color(x, f, fill):
    return _blend(x, _gray(x).expand_as(x), f)


def _contrast(x, f, fill):
    return _blend(x, _gray(x).mean().expand_as(x), f)


def _sharpness(x, f, fill):
    c, t, h, w = x.shape
    if h < 3 or w < 3:
        return x
    k = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    k[1, 1] = 5.0
    k = (k / k.sum()).view(1, 1, 3, 3)
    smooth = F.conv2d(x.reshape(c * t, 1, h, w), k).reshape(c, t, h - 2, w - 2)
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = smooth  # borders stay as they are
    return _blend(x, degenerate, f)


def _auto_contrast(x, _, fill):
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    scale = torch.where(hi > lo, 1.0 / (hi - lo).clamp_min(1e-12), torch.ones_like(hi))
    offset = torch.where(hi > lo, lo, torch.zeros_like(lo))
    return ((x - offset) * scale).clamp_(0.0, 1.0)


def _equalize(x, _, fill):
    out = torch.empty_like(x)
    q = (x * 255.0).round_().long().clamp_(0, 255)
    for ch in range(x.shape[0]):
        hist = torch.bincount(q[ch].reshape(-1), minlength=256)
        nonzero = hist[hist > 0]
        step = (int(hist.sum()) - int(nonzero[-1])) // 255
        if step == 0:  # a single grey level: nothing to spread
            out[ch] = x[ch]
            continue
        lut = (torch.cumsum(hist, 0) - hist + step // 2) // step
        out[ch] = lut.clamp_(0, 255)[q[ch]].to(x.dtype) / 255.0
    return out


def _invert(x, _, fill):
    return 1.0 - x


def _posterize(x, bits, fill):
    shift = 8 - int(bits)
    q = (x * 255.0).round_().to(torch.uint8)
    q = (q >> shift) << shift
    return q.to(x.dtype) / 255.0


def _solarize(x, threshold, fill):
    return torch.where(x >= threshold, 1.0 - x, x)


def _solarize_add(x, add, fill):
    return torch.where(x < 128.0 / 255.0, (x + add).clamp(max=1.0), x)


def _affine(x: torch.Tensor, matrix: Sequence[float], translate: Sequence[float], fill: torch.Tensor):
    """Resample with output→input map ``p_in = M p_out + t`` in pixel units about the image centre.

    Out-of-image pixels take ``fill``: sampling ``x - fill`` with zero padding and adding ``fill``
    back gives exactly ``fill`` there without a mask pass.
    """
    c, t, h, w = x.shape
    a, b, cc, d = matrix
    # Normalised coordinates scale x by W/2 and y by H/2: conjugate M with that scaling.
    theta = torch.tensor([[a, b * h / w, 2.0 * translate[0] / w],
                          [cc * w / h, d, 2.0 * translate[1] / h]], dtype=x.dtype, device=x.device)
    frames = x.permute(1, 0, 2, 3)  # (T, C, H, W): frames are the batch, all with the same theta
    grid = F.affine_grid(theta.expand(t, 2, 3), [t, c, h, w], align_corners=False)
    f = fill.to(x).view(1, c, 1, 1)
    out = F.grid_sample(frames - f, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + f
    return out.permute(1, 0, 2, 3).clamp_(0.0, 1.0)


def _rotate(x, degrees, fill):
    r = math.radians(degrees)
    return _affine(x, (math.cos(r), -math.sin(r), math.sin(r), math.cos(r)), (0.0, 0.0), fill)


def _shear_x(x, f, fill):
    return _affine(x, (1.0, f, 0.0, 1.0), (0.0, 0.0), fill)


def _shear_y(x, f, fill):
    return _affine(x, (1.0, 0.0, f, 1.0), (0.0, 0.0), fill)


def _translate_x(x, frac, fill):
    return _affine(x, (1.0, 0.0, 0.0, 1.0), (frac * x.shape[-1], 0.0), fill)


def _translate_y(x, frac, fill):
    return _affine(x, (1.0, 0.0, 0.0, 1.0), (0.0, frac * x.shape[-2]), fill)


# ------------------------------------------------------------------------ magnitude -> argument
# level in [0, 1]; `sign` is a random ±1 for symmetric ops.

def _signed(scale):
    return lambda level, sign, inc: sign * level * scale


def _enhance(level, sign, inc):
    # increasing: 1 ± 0.9·level (stronger change with magnitude); otherwise a factor in [0.1, 1.9].
    return 1.0 + sign * 0.9 * level if inc else 0.1 + 1.8 * level


RAND_AUGMENT_OPS: dict[str, tuple[Callable, Callable]] = {
    "auto_contrast": (_auto_contrast, lambda level, sign, inc: None),
    "equalize": (_equalize, lambda level, sign, inc: None),
    "invert": (_invert, lambda level, sign, inc: None),
    "rotate": (_rotate, _signed(30.0)),
    "posterize": (_posterize, lambda level, sign, inc: 8 - int(level * 4) if inc else 4 + int(level * 4)),
    "solarize": (_solarize, lambda level, sign, inc: 1.0 - level if inc else level),
    "solarize_add": (_solarize_add, lambda level, sign, inc: level * 110.0 / 255.0),
    "color": (_color, _enhance),
    "contrast": (_contrast, _enhance),
    "brightness": (_brightness, _enhance),
    "sharpness": (_sharpness, _enhance),
    "shear_x": (_shear_x, _signed(0.3)),
    "shear_y": (_shear_y, _signed(0.3)),
    "translate_x": (_translate_x, _signed(0.45)),
    "translate_y": (_translate_y, _signed(0.45)),
}

_DEFAULT_FILL = (0.485, 0.456, 0.406)  # the ImageNet mean: filled corners look like average content


def apply_op(x: torch.Tensor, name: str, magnitude: float, *, sign: float = 1.0, increasing: bool = True,
             fill: Sequence[float] = _DEFAULT_FILL) -> torch.Tensor:
    """Apply one named op at ``magnitude`` (0–10) to a clip ``(C, T, H, W)`` float in ``[0, 1]``."""
    fn, to_arg = RAND_AUGMENT_OPS[name]
    level = min(max(magnitude, 0.0), _MAX_LEVEL) / _MAX_LEVEL
    fill_t = torch.tensor(fill, dtype=x.dtype)[: x.shape[0]]
    return fn(x, to_arg(level, sign, increasing), fill_t)


class RandAugment:
    """RandAugment over whole clips.

    Args:
        num_ops: ops drawn (with replacement) per clip.
        magnitude: 0–10.
        magnitude_std: std of the per-op normal jitter of ``magnitude`` (clipped to 0–10).
        increasing: use the variants whose strength grows with magnitude.
        prob: probability of applying each drawn op.
        ops: names from :data:`RAND_AUGMENT_OPS` (default: all).
        fill: RGB fill in ``[0, 1]`` for pixels that geometric ops bring in from outside.
    """

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.0,
                 increasing: bool = True, prob: float = 0.5, ops: Sequence[str] | None = None,
                 fill: Sequence[float] = _DEFAULT_FILL):
        self.ops = list(ops) if ops is not None else list(RAND_AUGMENT_OPS)
        unknown = [o for o in self.ops if o not in RAND_AUGMENT_OPS]
        if unknown:
            raise ValueError(f"unknown RandAugment ops {unknown}; known: {list(RAND_AUGMENT_OPS)}")
        self.num_ops, self.magnitude, self.magnitude_std = int(num_ops), float(magnitude), float(magnitude_std)
        self.increasing, self.prob, self.fill = bool(increasing), float(prob), tuple(fill)

    @classmethod
    def from_string(cls, spec: str, **kwargs) -> "RandAugment":
        """Parse ``"rand-m7-n4-mstd0.5-inc1"``-style specs (keys ``m``, ``n``, ``mstd``, ``inc``, ``p``)."""
        parts = spec.split("-")
        if parts[0] != "rand":
            raise ValueError(f"RandAugment spec must start with 'rand', got {spec!r}")
        args = dict(kwargs)
        for p in parts[1:]:
            for key, name, conv in (("mstd", "magnitude_std", float), ("inc", "increasing", lambda v: bool(int(v))),
                                    ("m", "magnitude", float), ("n", "num_ops", int), ("p", "prob", float)):
                if p.startswith(key):
                    try:
                        args[name] = conv(p[len(key):])
                    except ValueError:
                        raise ValueError(f"bad RandAugment field {p!r} in {spec!r}") from None
                    break
            else:
                raise ValueError(f"unknown RandAugment field {p!r} in {spec!r}")
        return cls(**args)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``x``: ``(C, T, H, W)`` float in ``[0, 1]``; returns the same shape."""
        for _ in range(self.num_ops):
            u = torch.rand(3, generator=generator)
            name = self.ops[min(int(u[0] * len(self.ops)), len(self.ops) - 1)]
            noise = float(torch.randn(1, generator=generator)) * self.magnitude_std
            if u[1] >= self.prob:
                continue
            sign = 1.0 if u[2] < 0.5 else -1.0
            x = apply_op(x, name, self.magnitude + noise, sign=sign, increasing=self.increasing, fill=self.fill)
        return x

    def __repr__(self) -> str:
        return (f"RandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, "
                f"magnitude_std={self.magnitude_std}, increasing={self.increasing}, prob={self.prob})")
