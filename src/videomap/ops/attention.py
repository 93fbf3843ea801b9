"""Scaled dot-product attention, computed in float32 on CPUs whose reduced-precision attention is slower.

torch's CPU flash-attention kernel runs bf16 fast only with AMX. Without it the bf16 kernel is slower than
the float32 one on the same inputs (measured at 6,273 tokens, 6 heads of 64: 390 against 365 ms on an
AVX512-BF16 CPU, 749 against 618 ms on an AVX2-only one; docs/benchmarks.md). There, reduced-precision
attention — bf16/fp16 inputs, or a CPU autocast region, which casts them — is computed in float32 from the
rounded inputs and its output rounded back, so the caller still gets the dtype autocast would give. The
kernel accumulates in float32 in both dtypes, so only rounding inside its blocks differs.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .matmul import REDUCED_DTYPES, autocast_dtype

__all__ = ["scaled_dot_product_attention", "fast_reduced_attention"]


@functools.lru_cache(maxsize=None)
def fast_reduced_attention() -> bool:
    """Whether torch's CPU attention kernel is faster in bf16/fp16 than in float32 here: with AMX tiles."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def _reduced_dtype(q: torch.Tensor) -> torch.dtype | None:
    """The dtype a CPU attention on ``q`` would run in when that is bf16/fp16, else ``None``."""
    if q.device.type != "cpu":
        return None
    dtype = autocast_dtype() if q.is_floating_point() and q.dtype != torch.float64 else None
    dtype = dtype or q.dtype
    return dtype if dtype in REDUCED_DTYPES else None


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention``. q, k, v: ``(B, H, L, hd)``; attn_mask ``(L, L)`` bool or additive.

    Returns ``(B, H, L, hd)`` in the dtype torch would return; see the module docstring for how it is computed.
    """
    dtype = _reduced_dtype(q)
    if dtype is None or fast_reduced_attention():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    q, k, v = (t.to(dtype).float() for t in (q, k, v))
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask = attn_mask.to(dtype).float()
    with torch.autocast("cpu", enabled=False):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return out.to(dtype)
