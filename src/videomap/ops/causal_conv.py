"""Depthwise causal 1-D convolution, the short convolution in front of every Mamba scan.

``out[b, e, t] = bias[e] + sum_k weight[e, k] * x[b, e, t - (K - 1) + k]`` with zeros before ``t = 0``,
optionally followed by SiLU. ``reverse=True`` gives the convolution of the time-flipped sequence, flipped
back: ``x[b, e, t + (K - 1) - k]``, zeros after ``t = L - 1`` (the backward direction of a bidirectional
Mamba, without flipped copies on the CPU and in Triton). The backend follows the selective scan's table
(:mod:`videomap.ops.backend`): the reference is ``F.conv1d``; on the CPU a small C++ kernel built with the
selective scan (oneDNN's depthwise convolution over long rows was ~10x slower here); on CUDA the
``causal_conv1d`` package's fused kernel when it imports, else the Triton kernel
(:mod:`videomap.ops.causal_conv_triton`). ``reference`` gives a fully readable model.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .backend import implementation
from .scan_checks import CONV_ACTIVATIONS, check_conv_args


@functools.lru_cache(maxsize=1)
def cuda_conv_kernel():
    """``causal_conv1d.causal_conv1d_fn`` or ``None``; imported once, on first CUDA use."""
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:  # a broken install can raise more than ImportError (missing .so, triton, ...)
        return None
    return causal_conv1d_fn


def _cuda_autocast_dtype() -> torch.dtype | None:
    try:
        enabled, dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    except TypeError:  # torch < 2.4 has only the CUDA-specific spellings
        enabled, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    return dtype if enabled else None


def causal_conv1d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    reverse: bool = False,
) -> torch.Tensor:
    """Readable depthwise causal convolution.

    Args:
        x: ``(B, E, L)``. weight: ``(E, K)``. bias: ``(E,)``. activation: ``None`` or ``"silu"``.
        reverse: convolve the time-flipped sequence and flip the result back.

    Returns:
        ``(B, E, L)``.
    """
    if reverse:
        return causal_conv1d_reference(x.flip(-1), weight, bias, activation).flip(-1)
    channels, width = weight.shape
    length = x.shape[-1]
    # Padding both sides and keeping the first L outputs is the causal conv without copying x into a padded
    # buffer; the K - 1 extra outputs on the right are discarded.
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=channels)[..., :length]
    if activation == "silu":
        out = F.silu(out)
    return out


class _CausalConv1dCPU(torch.autograd.Function):
    """The C++ depthwise causal convolution (no activation) with its backward. A bfloat16 ``x`` (with fp32
    weight and bias) is convolved in fp32 and returned as bfloat16; its backward runs in fp32."""

    @staticmethod
    def forward(ctx, x, weight, bias, reverse):
        from .scan_cpu import load_cpu_kernel

        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.reverse = reverse
        return load_cpu_kernel().causal_conv1d_fwd(x, weight, bias, reverse)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        from .scan_cpu import load_cpu_kernel

        x, weight = ctx.saved_tensors
        dx, dweight, dbias = load_cpu_kernel().causal_conv1d_bwd(
            x.to(weight.dtype), weight, grad_out.to(weight.dtype).contiguous(), ctx.reverse)
        return dx.to(x.dtype), dweight, dbias if ctx.has_bias else None, None


def causal_conv1d_cpu(x, weight, bias=None, activation=None, reverse=False):
    """The ``cpu`` entry of the backend table. The kernel computes in fp32 (fp64 for fp64 inputs), also under
    bf16 autocast. A bfloat16 ``x`` is read and the result written as bfloat16 (one rounding, no fp32 copy of
    either); other dtypes are computed and returned in fp32 (fp64)."""
    dtype = x.dtype if x.dtype in (torch.float64, torch.bfloat16) else torch.float32
    weight_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    out = _CausalConv1dCPU.apply(x.to(dtype).contiguous(), weight.to(weight_dtype).contiguous(),
                                 None if bias is None else bias.to(weight_dtype).contiguous(), bool(reverse))
    if activation != "silu":
        return out
    # Outside autograd the conv's fresh output is nobody else's: SiLU in place spares a (B, E, L) buffer.
    return F.silu(out) if out.requires_grad else F.silu(out, inplace=True)


def causal_conv1d_channels_last(x, weight, bias=None, activation=None, reverse=False):
    """The CPU kernel's convolution of a channels-last ``x (B, L, E)``, for inference (no autograd).

    ``x`` needs contiguous channels only (the ``x`` half of ``in_proj``'s ``(B, L, 2E)`` output is read in
    place); the taps run in the order of :func:`causal_conv1d_cpu`, so the convolution is the same bits, and
    SiLU is applied on the way out. Computes in fp32 (fp64 for fp64 ``x``); a bfloat16 ``x`` takes fp32
    weight and bias and gives bfloat16.

    Returns:
        ``(B, L, E)``, contiguous, ``x``'s dtype.
    """
    from .scan_cpu import load_cpu_kernel

    if activation not in CONV_ACTIVATIONS:
        raise ValueError(f"causal_conv1d_channels_last: activation must be None or 'silu', got {activation!r}")
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[2] or (
            bias is not None and tuple(bias.shape) != (x.shape[2],)):
        raise ValueError(f"causal_conv1d_channels_last: expected x (B, L, E), weight (E, K) and bias (E,), got "
                         f"{tuple(x.shape)}, {tuple(weight.shape)} and {None if bias is None else tuple(bias.shape)}")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        raise RuntimeError("causal_conv1d_channels_last: inference only (no autograd); use causal_conv1d")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    weight, bias = weight.to(dtype), None if bias is None else bias.to(dtype)
    with torch.profiler.record_function("videomap::causal_conv1d_channels_last"):  # named in profiles
        return load_cpu_kernel().causal_conv1d_fwd_last(x, weight, bias, activation == "silu", bool(reverse))


def causal_conv1d_cuda(x, weight, bias=None, activation=None, reverse=False):
    """The ``cuda`` entry of the backend table: the causal_conv1d package (no reverse mode: flipped copies)."""
    if reverse:
        return causal_conv1d_cuda(x.flip(-1), weight, bias, activation).flip(-1)
    dtype = _cuda_autocast_dtype()
    if dtype is not None:
        # The fused kernel is not autocast-aware: give it what F.conv1d would have run in.
        x = x.to(dtype)
    return cuda_conv_kernel()(x.contiguous(), weight.contiguous(), bias, activation=activation)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    reverse: bool = False,
) -> torch.Tensor:
    """Depthwise causal convolution over the last axis.

    Args:
        x: ``(B, E, L)``.
        weight: ``(E, K)`` (an ``nn.Conv1d(E, E, K, groups=E)`` weight with its middle axis squeezed).
        bias: ``(E,)`` or ``None``.
        activation: ``None`` or ``"silu"``.
        reverse: anti-causal, i.e. the causal convolution of ``x.flip(-1)`` flipped back (no copies on the CPU
            and in Triton).

    Returns:
        ``(B, E, L)`` in the dtype the convolution runs in: ``x``'s or the autocast dtype (the CPU kernel:
        bf16 for bf16 inputs, fp64 for fp64 inputs, else fp32).
    """
    check_conv_args(x, weight, bias, activation)
    return implementation("conv", x.device, x.dtype)(x, weight, bias, activation, reverse)
