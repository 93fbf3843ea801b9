"""Dense products for the layers, routed through oneDNN for CPU tensors.

torch's CPU wheels send float32 ``matmul``/``linear`` to MKL, whose sgemm runs at roughly half speed on
CPUs it does not tune for (AMD's; the measurements are in docs/ops.md). torch also ships oneDNN,
reachable through ``torch.ops.mkldnn._linear_pointwise``, the op its own CPU compiler uses for frozen
linear layers. It accepts strided operands, so a product such as ``W @ x`` with ``x`` a channels-first
``(K, L)`` activation is one call with no transposed copy.

:func:`matmul` and :func:`linear` compute in true float32 (no reduced-precision accumulation) and are
differentiable; their backward runs through the same op.

**Autocast.** A custom op is invisible to ``torch.autocast``, so these functions apply its rule themselves:
inside a CPU autocast region every floating operand (except float64) is cast to the autocast dtype first,
exactly as autocast casts ``F.linear``/``matmul``, and the product runs in that dtype — through oneDNN's
bf16 kernels where the CPU has them (AMX or AVX512-BF16). The result is the same on every shape and batch
size.

**CPUs without bf16 instructions** (AVX2-only laptops and servers, AMD Zen 3 and older). There, torch and
oneDNN emulate a bf16 product at a small fraction of the float32 rate (measured on a 2-core Zen 3: 15 GFLOP/s
through ``F.linear`` and 2 through oneDNN, against 152 in float32; docs/benchmarks.md), so a bf16 run would be
several times slower than float32. Instead, bf16/fp16 operands
are widened to float32, multiplied by oneDNN's float32 kernel and the result rounded back to the operand
dtype. That is the same arithmetic as a native bf16 product, which also multiplies exactly and accumulates in
float32: only the summation order differs. Anything else — float64, CUDA tensors, a torch build without
oneDNN, ``VIDEOMAP_ONEDNN=0`` — takes torch's own ``matmul``/``linear``.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

__all__ = [
    "onednn_available",
    "use_onednn",
    "native_reduced_precision",
    "emulated_bf16_note",
    "autocast_dtype",
    "matmul",
    "linear",
    "channels_first_matmul",
]

REDUCED_DTYPES = (torch.bfloat16, torch.float16)

#: channels_first_matmul runs oneDNN per sample only for sequences at least this long (or a batch of one).
MIN_PER_SAMPLE_LENGTH = 1024


@functools.lru_cache(maxsize=None)
def onednn_available() -> bool:
    """Whether this torch build has oneDNN and its inner-product op."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


@functools.lru_cache(maxsize=None)
def _onednn_dtypes() -> frozenset[torch.dtype]:
    """The dtypes oneDNN's inner product runs natively on this CPU: float32, and bf16/fp16 where the CPU has
    instructions for them (oneDNN would otherwise emulate them slowly)."""
    dtypes = {torch.float32}
    for dtype, probe in ((torch.bfloat16, "_is_mkldnn_bf16_supported"), (torch.float16, "_is_mkldnn_fp16_supported")):
        try:
            if getattr(torch.ops.mkldnn, probe)():
                dtypes.add(dtype)
        except (AttributeError, RuntimeError):
            pass
    return frozenset(dtypes)


def _routable_dtype(*tensors: torch.Tensor | None) -> torch.dtype | None:
    """The one dtype of ``tensors`` (``None`` entries ignored) when their product may be routed to oneDNN at
    all: CPU tensors of a single dtype, oneDNN present, ``VIDEOMAP_ONEDNN`` not ``0``. ``None`` otherwise."""
    if os.environ.get("VIDEOMAP_ONEDNN", "1") == "0" or not onednn_available():
        return None
    present = [t for t in tensors if t is not None]
    if not present or any(t.device.type != "cpu" for t in present):
        return None
    dtypes = {t.dtype for t in present}
    return dtypes.pop() if len(dtypes) == 1 else None


def use_onednn(*tensors: torch.Tensor | None) -> bool:
    """Whether a product of ``tensors`` takes the oneDNN path: CPU tensors of one dtype that oneDNN runs
    natively here (float32; bf16/fp16 where the CPU supports them), oneDNN present, and ``VIDEOMAP_ONEDNN``
    not ``0``."""
    dtype = _routable_dtype(*tensors)
    return dtype is not None and dtype in _onednn_dtypes()


def native_reduced_precision(dtype: torch.dtype) -> bool:
    """Whether this CPU multiplies ``dtype`` (bf16 or fp16) natively through oneDNN, i.e. has AVX512-BF16 or
    AMX for bf16, AVX512-FP16 or AMX-FP16 for fp16. ``False`` also without oneDNN."""
    return onednn_available() and dtype in _onednn_dtypes()


def emulated_bf16_note() -> str | None:
    """A one-line warning for a bf16 run on this CPU when it has no bf16 instructions, else ``None``."""
    if not onednn_available() or native_reduced_precision(torch.bfloat16):
        return None
    return ("this CPU has no bf16 instructions (AVX512-BF16 or AMX): bf16 products and attention run in fp32 "
            "on bf16-rounded values, so bf16 is no faster than fp32 here; fp32 is the better choice on this CPU")


def _widened_dtype(*tensors: torch.Tensor | None) -> torch.dtype | None:
    """The reduced dtype of ``tensors`` when their product should run widened to float32 (see the module
    docstring): all CPU tensors of one bf16/fp16 dtype that this CPU does not multiply natively, oneDNN present
    and enabled. ``None`` otherwise."""
    dtype = _routable_dtype(*tensors)
    return dtype if dtype in REDUCED_DTYPES and dtype not in _onednn_dtypes() else None


def _widen(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    return tuple(None if t is None else t.float() for t in tensors)


def autocast_dtype() -> torch.dtype | None:
    """The dtype CPU autocast runs products in, or ``None`` outside a CPU autocast region."""
    try:
        enabled, dtype = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
    except TypeError:  # torch < 2.4 spells it per device
        enabled, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    return dtype if enabled else None


def _autocast(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """``tensors`` cast as CPU autocast casts the operands of ``F.linear``: every floating CPU tensor other
    than float64 goes to the autocast dtype. Unchanged outside autocast or for other devices, whose autocast
    sees the torch ops these functions fall back to."""
    dtype = autocast_dtype()
    if dtype is None:
        return tensors

    def cast(t):
        eligible = t is not None and t.device.type == "cpu" and t.is_floating_point() and t.dtype != torch.float64
        return t.to(dtype) if eligible else t

    return tuple(cast(t) for t in tensors)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when it is row- or column-major, else a contiguous copy.

    oneDNN reads both layouts at full speed but takes a slow generic path for anything else: an expanded
    gradient (stride 0, as ``out.sum().backward()`` sends) made one product 500× slower.
    """
    if t.is_contiguous() or (t.dim() == 2 and t.t().is_contiguous()):
        return t
    return t.contiguous()


def _inner(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x (M, K) @ weight_t (N, K)^T + bias`` by oneDNN; either operand may be a transposed view."""
    return torch.ops.mkldnn._linear_pointwise(_dense(x), _dense(weight_t), bias, "none", [], "")


class _OneDNNMatmul(torch.autograd.Function):
    """``a (M, K) @ b (K, N) + bias (N,)``; every product of the backward is again an inner product.

    The bias is added inside the forward product, so a reduced-precision result is rounded once.
    """

    @staticmethod
    def forward(ctx, a, b, bias=None):
        ctx.save_for_backward(a, b)
        ctx.has_bias = bias is not None
        return _inner(a, b.t(), bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        grad_a = _inner(grad, b) if ctx.needs_input_grad[0] else None  # (M, N) @ (K, N)^T
        grad_b = _inner(a.t(), grad.t()) if ctx.needs_input_grad[1] else None  # (K, M) @ (N, M)^T
        grad_bias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_a, grad_b, grad_bias


def _needs_graph(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a (M, K) @ b (K, N)`` → ``(M, N)``; either operand may be a transposed or strided view."""
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"matmul: expected 2-D operands, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = _autocast(a, b)
    widened = _widened_dtype(a, b)
    if widened is not None:
        return _matmul_onednn(*_widen(a, b)).to(widened)
    if not use_onednn(a, b):
        return torch.matmul(a, b)
    return _matmul_onednn(a, b)


def _matmul_onednn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if _needs_graph(a, b):
        return _OneDNNMatmul.apply(a, b)
    return _inner(a, b.t())


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``: ``x (..., K)``, ``weight (N, K)``, ``bias (N,)`` → ``(..., N)``."""
    x, weight, bias = _autocast(x, weight, bias)
    widened = _widened_dtype(x, weight, bias)
    if widened is not None and x.dim() > 0:
        return _linear_onednn(*_widen(x, weight, bias)).to(widened)
    if not use_onednn(x, weight, bias) or x.dim() == 0:
        return F.linear(x, weight, bias)
    return _linear_onednn(x, weight, bias)


def _linear_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])  # a view for the usual contiguous activations
    if _needs_graph(x, weight, bias):
        out = _OneDNNMatmul.apply(flat, weight.t(), bias)
    else:
        out = _inner(flat, weight, bias)
    return out.reshape(*lead, weight.shape[0])


def channels_first_matmul(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``weight (N, K) @ x[b]`` for each ``x[b]`` of ``x (B, K, L)`` → ``(B, N, L)``, contiguous.

    A batch of one, or sequences of at least :data:`MIN_PER_SAMPLE_LENGTH`, take oneDNN one sample at a time;
    batches of shorter sequences take torch's batched ``matmul``.

    ``x`` may be a transposed view such as ``h.transpose(1, 2)`` of a ``(B, L, K)`` activation: the product
    reads it in place. This is the layout the causal conv and the selective scan work in.
    """
    if x.dim() != 3:
        raise ValueError(f"channels_first_matmul: expected x of shape (B, K, L), got {tuple(x.shape)}")
    batch, _, length = x.shape
    # Cast once here, so that both routes below run in the autocast dtype (torch's batched product would be
    # cast by autocast itself, the per-sample oneDNN one would not).
    weight, x = _autocast(weight, x)
    widened = _widened_dtype(weight, x)
    if widened is not None:
        # Widen once for the whole batch (the per-sample products below would each widen the weight again),
        # with autocast off so that neither route casts the widened operands back.
        with torch.autocast("cpu", enabled=False):
            out = channels_first_matmul(*_widen(weight, x))
        return out.to(widened)
    # oneDNN takes one sample per call. A batch of short sequences is many small calls whose fixed cost
    # outweighs the faster kernel (the demo's batch-16, 64-token training step was slower that way), so
    # those go to torch's batched product in one call.
    if not use_onednn(weight, x) or (batch > 1 and length < MIN_PER_SAMPLE_LENGTH):
        return torch.matmul(weight, x)
    outs = [matmul(weight, x[b]) for b in range(batch)]
    return outs[0].unsqueeze(0) if len(outs) == 1 else torch.stack(outs)
