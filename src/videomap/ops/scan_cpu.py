"""The fused CPU selective scan: a C++ kernel built on first use with ``torch.utils.cpp_extension``.

The extension also carries the depthwise causal convolution used in front of the scan
(``csrc/causal_conv_cpu.cpp``, see :mod:`videomap.ops.causal_conv`). The scan kernel
(``csrc/selective_scan_cpu.cpp``) has the semantics of :mod:`videomap.ops.scan_reference` and is
differentiable with respect to every tensor input and to the returned last state. It is compiled once per
source, compiler flags, CPU and torch version, and cached in torch's extension directory
(``$TORCH_EXTENSIONS_DIR`` to move it).
"""

from __future__ import annotations

import hashlib
import platform
import threading
from pathlib import Path
from typing import Any

import torch

from .scan_checks import as_grouped, compute_dtype, flip_time

_CSRC = Path(__file__).resolve().parent / "csrc"
# One extension holds every CPU kernel: the scan and the causal conv in front of it.
_SOURCES = (_CSRC / "selective_scan_cpu.cpp", _CSRC / "causal_conv_cpu.cpp")
_BASE_CFLAGS = ["-O3", "-ffp-contract=fast", "-fno-trapping-math"]
# at::parallel_for is an inline `#pragma omp parallel` (torch's CPU wheels use the OpenMP backend), compiled
# into this extension: without -fopenmp it silently runs on one thread. The extension then shares torch's
# libgomp (same soname, already loaded), so torch.set_num_threads applies. -march=native is what lets the
# compiler use AVX-512 where the CPU has it. Each fallback drops what a compiler may reject; the last one
# is correct but single-threaded.
_OPENMP = ["-fopenmp"]
_FLAG_SETS = (  # (compile flags, link flags)
    (_BASE_CFLAGS + ["-march=native"] + _OPENMP, _OPENMP),
    (_BASE_CFLAGS + _OPENMP, _OPENMP),
    (_BASE_CFLAGS, []),
)

_lock = threading.Lock()
_module: Any = None
_error: str | None = None
_tried = False


def _cpu_signature() -> str:
    """What distinguishes one CPU's ``-march=native`` build from another's."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _extension_name(flags: list[str]) -> str:
    """A name per source, flags, CPU and torch version, so that a change of any of them builds afresh."""
    digest = hashlib.sha256()
    for part in (*(source.read_bytes() for source in _SOURCES), " ".join(flags).encode(), _cpu_signature().encode(),
                 torch.__version__.encode()):
        digest.update(part)
        digest.update(b"\0")
    return f"videomap_scan_cpu_{digest.hexdigest()[:12]}"


def _build(verbose: bool):
    from torch.utils.cpp_extension import load

    missing = [str(source) for source in _SOURCES if not source.is_file()]
    if missing:
        raise RuntimeError(f"the kernel sources {missing} are missing from the installation")
    failures = []
    for cflags, ldflags in _FLAG_SETS:
        try:
            return load(name=_extension_name(cflags + ldflags), sources=[str(source) for source in _SOURCES],
                        extra_cflags=cflags, extra_ldflags=ldflags, verbose=verbose)
        except Exception as error:  # noqa: BLE001 - try the next flag set, report all at the end
            failures.append(f"[{' '.join(cflags)}] {type(error).__name__}: {str(error).strip()[-2000:]}")
    raise RuntimeError(
        "building the CPU selective-scan kernel failed (it needs a C++17 compiler and ninja: e.g. "
        "`apt-get install g++` and `pip install ninja`):\n" + "\n".join(failures)
    )


def build(verbose: bool = False):
    """Build (or load from the cache) the kernel and return the extension module; raises on failure."""
    global _module, _error, _tried
    with _lock:
        if _module is not None:
            return _module
        try:
            _module = _build(verbose)
            _error = None
        except Exception as error:
            _error = str(error)
            raise
        finally:
            _tried = True
        return _module


def cpu_kernel_available() -> bool:
    """Whether the kernel builds and loads here. Tried once per process; never raises."""
    if not _tried:
        try:
            build()
        except Exception:  # noqa: BLE001 - the message is kept for cpu_kernel_error()
            pass
    return _module is not None


def cpu_kernel_error() -> str | None:
    """Why the kernel is unavailable (``None`` when it loaded or was not tried yet)."""
    return _error


def load_cpu_kernel():
    """The extension module; ``RuntimeError`` with the build failure otherwise."""
    if _module is not None:
        return _module
    if _tried:
        raise RuntimeError(f"the CPU selective-scan kernel is unavailable: {_error}")
    try:
        return build()
    except RuntimeError:
        raise
    except Exception as error:  # noqa: BLE001 - normalise to RuntimeError for callers
        raise RuntimeError(f"the CPU selective-scan kernel is unavailable: {error}") from error


def _sum_batch(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None:
        return None
    return t[0] if t.shape[0] == 1 else t.sum(0)


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, needs_grad, reverse):
        kernel = load_cpu_kernel()
        out, last_state, checkpoints = kernel.fwd(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                                  bool(delta_softplus), needs_grad, bool(reverse))
        ctx.delta_softplus = bool(delta_softplus)
        ctx.reverse = bool(reverse)
        if needs_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, checkpoints)
        # an unused output arrives as None instead of a freshly allocated zero tensor
        ctx.set_materialize_grads(False)
        return out, last_state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_last_state):
        u, delta, A, B, C, D, z, delta_bias, checkpoints = ctx.saved_tensors
        need = ctx.needs_input_grad
        # A reverse scan's checkpoints are those of a forward scan of the flipped sequence: its backward is
        # that scan's backward on flipped copies, with the time-indexed gradients flipped back.
        if ctx.reverse:
            u, delta, B, C, z, grad_out = (flip_time(t) for t in (u, delta, B, C, z, grad_out))
        if grad_out is not None:
            grad_out = grad_out.contiguous()
        if grad_last_state is not None:
            grad_last_state = grad_last_state.contiguous()
        du, ddelta, dA, dB, dC, dD, dz, dbias, dinit = load_cpu_kernel().bwd(
            u, delta, A, B, C, D, z, delta_bias, checkpoints, grad_out, grad_last_state,
            ctx.delta_softplus, need[3], need[4], need[8],
        )
        if ctx.reverse:
            du, ddelta, dB, dC, dz = (flip_time(t) for t in (du, ddelta, dB, dC, dz))
        return (
            du if need[0] else None,
            ddelta if need[1] else None,
            _sum_batch(dA) if need[2] else None,
            dB if need[3] else None,
            dC if need[4] else None,
            _sum_batch(dD) if need[5] else None,
            dz if need[6] else None,
            _sum_batch(dbias) if need[7] else None,
            dinit if need[8] else None,
            None,
            None,
            None,
        )


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None,
                       delta_softplus=False, reverse=False):
    """Fused CPU selective scan, differentiable in every tensor input and in the returned state.

    Args:
        u, delta: ``(B, E, L)``. A: ``(E, N)`` with ``N <= 64``. B, C: ``(B, G, N, L)``, channel ``e`` reading
        group ``e // (E // G)``. D, delta_bias: ``(E,)`` or None. z: ``(B, E, L)`` or None.
        initial_state: ``(B, E, N)`` or None (zeros). All float32, or all float64 (a slower portable path
        with libm's exp, meant for tests and gradcheck), on the CPU; any strides.
        reverse: scan from position L - 1 down to 0 (see :func:`videomap.ops.selective_scan`).

    Returns:
        ``out (B, E, L)`` and ``last_state (B, E, N)``, the state after the last step.
    """
    dtype = u.dtype
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"selective_scan_cpu: expected float32 or float64 inputs, got {dtype}")
    for name, t in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias), ("initial_state", initial_state)):
        if t is not None and t.dtype != dtype:
            raise TypeError(f"selective_scan_cpu: `{name}` is {t.dtype} but `u` is {dtype}")
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    # checkpoints are only kept when a backward can follow (needs_input_grad ignores no_grad mode)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    return _SelectiveScanCPU.apply(*(_contiguous(t) for t in inputs), bool(delta_softplus), needs_grad,
                                   bool(reverse))


def selective_scan_cpu_backend(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                               return_last_state=False, *, initial_state=None, reverse=False):
    """The ``cpu`` entry of the backend table: :func:`videomap.ops.selective_scan`'s contract on top of
    :func:`selective_scan_cpu` (inputs cast to the compute dtype, B/C in the grouped layout)."""
    in_dtype = u.dtype
    dt = compute_dtype(in_dtype)
    batch, channels, length = u.shape

    def cast(t):
        return None if t is None else t.to(dt).contiguous()

    out, last_state = selective_scan_cpu(
        cast(u), cast(delta), cast(A),
        as_grouped(B, batch, channels, length, dt), as_grouped(C, batch, channels, length, dt),
        cast(D), cast(z), cast(delta_bias), cast(initial_state), delta_softplus, reverse=reverse,
    )
    out = out.to(in_dtype)
    return (out, last_state) if return_last_state else out


__all__ = ["build", "cpu_kernel_available", "cpu_kernel_error", "load_cpu_kernel", "selective_scan_cpu",
           "selective_scan_cpu_backend"]
