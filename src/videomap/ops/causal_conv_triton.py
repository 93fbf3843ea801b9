"""The Triton depthwise causal convolution (forward and backward), the ``triton`` entry of the conv's backend
table, with the semantics of :func:`videomap.ops.causal_conv.causal_conv1d_reference`.

One program per (batch, block of channels, block of positions); the ``K`` taps are unrolled. The optional
SiLU is fused: the backward recomputes the pre-activation where it needs it instead of storing it, and the
weight and bias gradients are per-program partial sums over the position block, reduced in torch
(deterministic, no atomics). Computation is in fp32 (fp64 for fp64 inputs); the output has ``x``'s dtype, or
the autocast dtype on CUDA, as ``F.conv1d`` would give.

This module imports triton at import time; :mod:`videomap.ops.backend` imports it only when needed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .scan_checks import compute_dtype

BLOCK_E = 16
BLOCK_L = 64


@triton.jit
def _conv_at(x_row, w, bias, pos, L, mask_e, K: tl.constexpr, REVERSE: tl.constexpr, HAS_BIAS: tl.constexpr,
             DT: tl.constexpr, BLOCK_E_: tl.constexpr, BLOCK_L_: tl.constexpr):
    """The convolution (before the activation) at positions ``pos`` ``[BLOCK_L]`` for the block's channels."""
    acc = tl.zeros([BLOCK_E_, BLOCK_L_], dtype=DT)
    for k in tl.static_range(K):
        if REVERSE:
            src = pos + (K - 1) - k
        else:
            src = pos - (K - 1) + k
        ok = (src >= 0) & (src < L)
        xk = tl.load(x_row[:, None] + src[None, :], mask=mask_e[:, None] & ok[None, :], other=0.0).to(DT)
        wk = tl.sum(tl.where(tl.arange(0, K)[None, :] == k, w, 0.0), axis=1)
        acc += wk[:, None] * xk
    if HAS_BIAS:
        acc += bias[:, None]
    return acc


@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, E, L, K: tl.constexpr, HAS_BIAS: tl.constexpr,
                     SILU: tl.constexpr, REVERSE: tl.constexpr, BLOCK_E_: tl.constexpr, BLOCK_L_: tl.constexpr):
    """x, out: contiguous ``(B, E, L)``; w: contiguous ``(E, K)``; b: ``(E,)``."""
    DT = w_ptr.dtype.element_ty
    pid_b = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK_E_ + tl.arange(0, BLOCK_E_)
    pos = tl.program_id(2) * BLOCK_L_ + tl.arange(0, BLOCK_L_)
    mask_e = e < E
    w = tl.load(w_ptr + e[:, None] * K + tl.arange(0, K)[None, :], mask=mask_e[:, None], other=0.0).to(DT)
    bias = tl.zeros([BLOCK_E_], dtype=DT)
    if HAS_BIAS:
        bias = tl.load(b_ptr + e, mask=mask_e, other=0.0).to(DT)
    x_row = x_ptr + (pid_b * E + e) * L
    acc = _conv_at(x_row, w, bias, pos, L, mask_e, K, REVERSE, HAS_BIAS, DT, BLOCK_E_, BLOCK_L_)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    mask = mask_e[:, None] & (pos < L)[None, :]
    tl.store(out_ptr + (pid_b * E + e)[:, None] * L + pos[None, :], acc, mask=mask)


@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, b_ptr, g_ptr, dx_ptr, dw_ptr, db_ptr, E, L, K: tl.constexpr,
                     HAS_BIAS: tl.constexpr, SILU: tl.constexpr, REVERSE: tl.constexpr,
                     BLOCK_E_: tl.constexpr, BLOCK_L_: tl.constexpr):
    """dx ``(B, E, L)``; dw ``(B, L blocks, E, K)`` and db ``(B, L blocks, E)`` partial sums."""
    DT = w_ptr.dtype.element_ty
    pid_b = tl.program_id(0).to(tl.int64)
    pid_l = tl.program_id(2)
    e = tl.program_id(1) * BLOCK_E_ + tl.arange(0, BLOCK_E_)
    pos = pid_l * BLOCK_L_ + tl.arange(0, BLOCK_L_)
    mask_e = e < E
    taps = tl.arange(0, K)
    w = tl.load(w_ptr + e[:, None] * K + taps[None, :], mask=mask_e[:, None], other=0.0).to(DT)
    bias = tl.zeros([BLOCK_E_], dtype=DT)
    if HAS_BIAS:
        bias = tl.load(b_ptr + e, mask=mask_e, other=0.0).to(DT)
    x_row = x_ptr + (pid_b * E + e) * L
    g_row = g_ptr + (pid_b * E + e) * L

    # dx[t] = sum_k w[k] * dpre[t'] over the outputs t' that read x[t] through tap k.
    dx = tl.zeros([BLOCK_E_, BLOCK_L_], dtype=DT)
    for k in tl.static_range(K):
        if REVERSE:
            out_pos = pos - (K - 1) + k
        else:
            out_pos = pos + (K - 1) - k
        ok = (out_pos >= 0) & (out_pos < L)
        m = mask_e[:, None] & ok[None, :]
        dpre = tl.load(g_row[:, None] + out_pos[None, :], mask=m, other=0.0).to(DT)
        if SILU:
            pre = _conv_at(x_row, w, bias, out_pos, L, mask_e, K, REVERSE, HAS_BIAS, DT, BLOCK_E_, BLOCK_L_)
            sig = tl.sigmoid(pre)
            dpre = dpre * sig * (1.0 + pre * (1.0 - sig))
        wk = tl.sum(tl.where(taps[None, :] == k, w, 0.0), axis=1)
        dx += wk[:, None] * dpre
    mask = mask_e[:, None] & (pos < L)[None, :]
    tl.store(dx_ptr + (pid_b * E + e)[:, None] * L + pos[None, :], dx, mask=mask)

    # dw[k] = sum_t dpre[t] * x[src_k(t)], db = sum_t dpre[t], over this program's positions.
    dpre = tl.load(g_row[:, None] + pos[None, :], mask=mask, other=0.0).to(DT)
    if SILU:
        pre = _conv_at(x_row, w, bias, pos, L, mask_e, K, REVERSE, HAS_BIAS, DT, BLOCK_E_, BLOCK_L_)
        sig = tl.sigmoid(pre)
        dpre = dpre * sig * (1.0 + pre * (1.0 - sig))
    dw = tl.zeros([BLOCK_E_, K], dtype=DT)
    for k in tl.static_range(K):
        if REVERSE:
            src = pos + (K - 1) - k
        else:
            src = pos - (K - 1) + k
        ok = (src >= 0) & (src < L)
        xk = tl.load(x_row[:, None] + src[None, :], mask=mask_e[:, None] & ok[None, :], other=0.0).to(DT)
        dwk = tl.sum(dpre * xk, axis=1)
        dw += tl.where(taps[None, :] == k, dwk[:, None], 0.0)
    part = pid_b * tl.num_programs(2) + pid_l
    tl.store(dw_ptr + (part * E + e)[:, None] * K + taps[None, :], dw, mask=mask_e[:, None])
    if HAS_BIAS:
        tl.store(db_ptr + part * E + e, tl.sum(dpre, axis=1), mask=mask_e)


def _pow2(k: int) -> int:
    return 1 << max(0, (k - 1).bit_length())


class _CausalConv1dTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, activation, reverse, out_dtype):
        batch, channels, length = x.shape
        taps = weight.shape[1]
        dt = compute_dtype(x.dtype)
        # The kernel unrolls a power-of-two number of taps; padded taps have weight 0 and read nothing new.
        k2 = _pow2(taps)
        # Padding taps on the far side of the window keeps the causal alignment: tap k still reads t-(K-1)+k
        # relative to the padded width, so pad at the front (older positions).
        w = torch.zeros((channels, k2), device=x.device, dtype=dt)
        w[:, k2 - taps:] = weight.to(dt)
        x_c = x.contiguous()
        b = bias.to(dt).contiguous() if bias is not None else w
        out = torch.empty((batch, channels, length), device=x.device, dtype=out_dtype)
        grid = (batch, triton.cdiv(channels, BLOCK_E), triton.cdiv(length, BLOCK_L))
        _conv_fwd_kernel[grid](x_c, w, b, out, channels, length, K=k2, HAS_BIAS=bias is not None,
                               SILU=activation == "silu", REVERSE=bool(reverse), BLOCK_E_=BLOCK_E, BLOCK_L_=BLOCK_L)
        ctx.save_for_backward(x_c, w, b)
        ctx.config = (taps, bias is not None, activation == "silu", bool(reverse), x.dtype, weight.dtype,
                      None if bias is None else bias.dtype)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, w, b = ctx.saved_tensors
        taps, has_bias, silu, reverse, x_dtype, w_dtype, b_dtype = ctx.config
        batch, channels, length = x.shape
        k2 = w.shape[1]
        blocks_l = triton.cdiv(length, BLOCK_L)
        dx = torch.empty((batch, channels, length), device=x.device, dtype=x_dtype)
        dw = torch.empty((batch, blocks_l, channels, k2), device=x.device, dtype=w.dtype)
        db = torch.empty((batch, blocks_l, channels), device=x.device, dtype=w.dtype) if has_bias else dw
        grid = (batch, triton.cdiv(channels, BLOCK_E), blocks_l)
        _conv_bwd_kernel[grid](x, w, b, grad_out.contiguous(), dx, dw, db, channels, length, K=k2,
                               HAS_BIAS=has_bias, SILU=silu, REVERSE=reverse, BLOCK_E_=BLOCK_E, BLOCK_L_=BLOCK_L)
        dweight = dw.sum((0, 1))[:, k2 - taps:].to(w_dtype)
        dbias = db.sum((0, 1)).to(b_dtype) if has_bias else None
        return dx, dweight, dbias, None, None, None


def causal_conv1d_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                         activation: str | None = None, reverse: bool = False) -> torch.Tensor:
    """Triton causal conv with :func:`videomap.ops.causal_conv.causal_conv1d`'s contract (arguments validated).

    Args:
        x: ``(B, E, L)``. weight: ``(E, K)``. bias: ``(E,)`` or None. activation: ``None`` or ``"silu"``.
        reverse: the anti-causal convolution (the flipped sequence's causal conv, flipped back).

    Returns:
        ``(B, E, L)`` in ``x.dtype``, or the autocast dtype when CUDA autocast is on.
    """
    out_dtype = x.dtype
    if x.is_cuda and torch.is_autocast_enabled("cuda"):
        out_dtype = torch.get_autocast_dtype("cuda")
    return _CausalConv1dTriton.apply(x, weight, bias, activation, bool(reverse), out_dtype)


__all__ = ["causal_conv1d_triton"]
