"""The fused CPU selective scan: a C++ kernel built on first use with ``torch.utils.cpp_extension``.

The extension also carries the depthwise causal convolution used in front of the scan
(``csrc/causal_conv_cpu.cpp``, see :mod:`videomap.ops.causal_conv`). The scan kernel
(``csrc/selective_scan_cpu.cpp``: the host side; ``scan_kernel.h``: the forward and backward template;
``scan_simd.h``: the vector types; ``bindings.cpp``: the Python module) has the semantics of :mod:`videomap.ops.scan_reference` and is
differentiable with respect to every tensor input and to the returned last state. It is compiled once per
source, instruction-set variant, compiler flags, CPU and torch version, and cached in torch's extension
directory (``$TORCH_EXTENSIONS_DIR`` to move it).

Instruction-set variants (``$VIDEOMAP_CPU_ISA``, read when the kernel is first built in a process):

- ``native`` (default): ``-march=native``, so the AVX-512 path where the CPU has AVX-512 (F, BW, VL), the
  AVX2 path on an AVX2 CPU, the portable path elsewhere. Never fails for lack of AVX-512.
- ``avx512``: ``-march=x86-64-v4`` (refused on a CPU without AVX-512).
- ``avx2``: ``-march=x86-64-v3`` (AVX2 + FMA): the AVX-512 path is compiled out even on an AVX-512 CPU.
- ``generic``: the portable 16-lane template path, built for baseline x86-64 (or the compiler's default
  target elsewhere).

:func:`cpu_kernel_isa` says which path the loaded kernel runs (``avx512``, ``avx2`` or ``generic``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import torch

from .scan_checks import as_grouped, compute_dtype

log = logging.getLogger("videomap.ops")

_CSRC = Path(__file__).resolve().parent / "csrc"
# One extension holds every CPU kernel: the scan and the causal conv in front of it.
_SOURCES = (_CSRC / "selective_scan_cpu.cpp", _CSRC / "causal_conv_cpu.cpp", _CSRC / "bindings.cpp")
# Included by the sources; hashed with them, so that a change to any of them builds afresh.
_HEADERS = (_CSRC / "scan_simd.h", _CSRC / "scan_kernel.h", _CSRC / "scan_host.h")
_BASE_CFLAGS = ["-O3", "-ffp-contract=fast", "-fno-trapping-math"]
# at::parallel_for is an inline `#pragma omp parallel` (torch's CPU wheels use the OpenMP backend), compiled
# into this extension: without -fopenmp it silently runs on one thread. The extension then shares torch's
# libgomp (same soname, already loaded), so torch.set_num_threads applies. -march=native is what lets the
# compiler use AVX-512 where the CPU has it. Each fallback drops what a compiler may reject; the last one
# is correct but single-threaded.
_OPENMP = ["-fopenmp"]

ISA_ENV_VAR = "VIDEOMAP_CPU_ISA"
ISAS = ("native", "avx512", "avx2", "generic")
# Target flags per requested variant: the x86-64 micro-architecture levels pin what the compiler may use,
# so a forced variant builds the same code on any machine that can run it.
_ISA_FLAGS: dict[str, tuple[list[str], ...]] = {
    "native": (["-march=native"], []),
    "avx512": (["-march=x86-64-v4", "-mtune=native"], ["-march=x86-64-v4"]),
    "avx2": (["-march=x86-64-v3", "-mtune=native"], ["-march=x86-64-v3"]),
    "generic": (["-DVIDEOMAP_SCAN_GENERIC", "-march=x86-64"], ["-DVIDEOMAP_SCAN_GENERIC"]),
}
# CPU flags a forced variant needs (as /proc/cpuinfo spells them): its code would fault without them.
_ISA_CPU_FLAGS = {"avx512": ("avx512f", "avx512bw", "avx512vl"), "avx2": ("avx2", "fma")}

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


def requested_isa() -> str:
    """The variant asked for by ``$VIDEOMAP_CPU_ISA`` (``native`` when unset); ``ValueError`` if unknown."""
    name = (os.environ.get(ISA_ENV_VAR, "") or "native").strip().lower()
    if name not in ISAS:
        raise ValueError(f"${ISA_ENV_VAR}={name!r}: choose one of {', '.join(ISAS)}")
    return name


def _flag_sets(isa: str) -> list[tuple[list[str], list[str]]]:
    """(compile flags, link flags) to try in order for ``isa``: with OpenMP first, then without it; for
    ``native`` also without ``-march``, which some compilers reject."""
    target_sets = list(_ISA_FLAGS[isa])
    if isa != "native" and platform.machine().lower() not in ("x86_64", "amd64"):
        target_sets = [[f for f in flags if f.startswith("-D")] for flags in target_sets]
    sets = [(_BASE_CFLAGS + target + _OPENMP, _OPENMP) for target in target_sets]
    return sets + [(_BASE_CFLAGS + target_sets[-1], [])]


def _check_cpu_supports(isa: str) -> None:
    """Refuse a forced variant whose instructions this CPU lacks (its kernel would die on the first one)."""
    needed = _ISA_CPU_FLAGS.get(isa, ())
    flags = set(_cpu_signature().split())
    missing = [flag for flag in needed if flag not in flags]
    if missing:
        raise RuntimeError(f"${ISA_ENV_VAR}={isa} needs CPU features {', '.join(missing)}, which this CPU lacks")


def _extension_name(isa: str, flags: list[str]) -> str:
    """A name per variant, source, flags, CPU and torch version, so that a change of any of them builds
    afresh and variants never share a cache entry."""
    digest = hashlib.sha256()
    files = (*_SOURCES, *_HEADERS)
    for part in (*(f.read_bytes() for f in files), " ".join(flags).encode(), _cpu_signature().encode(),
                 torch.__version__.encode()):
        digest.update(part)
        digest.update(b"\0")
    return f"videomap_scan_cpu_{isa}_{digest.hexdigest()[:12]}"


#: A build lock with no file in its build folder touched for this long was left by an interrupted build.
STALE_LOCK_SECONDS = 600.0


def wait_for_build_lock(build_dir: str | os.PathLike, stale_after: float = STALE_LOCK_SECONDS,
                        poll: float = 1.0) -> bool:
    """Wait while another process builds into ``build_dir``; remove its ``lock`` if that build is dead.

    torch's extension builder takes ``build_dir/lock`` for the length of a build and waits, without end, for
    any lock it finds. A build killed part-way (a timeout, Ctrl-C) leaves the lock behind, and every later
    process would then hang on import. A live build keeps writing objects into the folder, so a lock whose
    folder has seen no change for ``stale_after`` seconds is taken as dead and removed, with a warning.

    Returns whether a stale lock was removed.
    """
    folder = Path(build_dir)
    lock = folder / "lock"
    while lock.exists():
        try:
            newest = max(entry.stat().st_mtime for entry in folder.iterdir())
        except (OSError, ValueError):  # the folder or an entry vanished meanwhile: look again
            newest = time.time()
        if time.time() - newest > stale_after:
            log.warning("videomap: removing %s, left by an interrupted kernel build (nothing in %s changed for "
                        "%.0f s)", lock, folder, time.time() - newest)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            return True
        time.sleep(poll)
    return False


def _clear_dead_build(name: str) -> None:
    try:
        from torch.utils.cpp_extension import _get_build_directory

        build_dir = _get_build_directory(name, verbose=False)
    except Exception:  # noqa: BLE001 - a private helper of torch's; without it torch's own wait applies
        return
    wait_for_build_lock(build_dir)


def _build(verbose: bool, isa: str | None = None):
    from torch.utils.cpp_extension import load

    missing = [str(source) for source in (*_SOURCES, *_HEADERS) if not source.is_file()]
    if missing:
        raise RuntimeError(f"the kernel sources {missing} are missing from the installation")
    isa = isa or requested_isa()
    _check_cpu_supports(isa)
    failures = []
    for cflags, ldflags in _flag_sets(isa):
        try:
            name = _extension_name(isa, cflags + ldflags)
            _clear_dead_build(name)
            # Copies: load() appends torch's link flags to extra_ldflags in place, which would change the
            # shared list, hence the next build's name, so that every later build in the process recompiled.
            return load(name=name, sources=[str(source) for source in _SOURCES],
                        extra_cflags=list(cflags), extra_ldflags=list(ldflags), verbose=verbose)
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


@contextlib.contextmanager
def kernel_variant(isa: str, verbose: bool = False):
    """Run the enclosed code on variant ``isa``'s kernel (built, or loaded from its cache entry), then go
    back to the process's own; for side-by-side measurements of variants. Yields the extension module."""
    global _module
    if isa not in ISAS:
        raise ValueError(f"unknown CPU kernel variant {isa!r}; choose one of {', '.join(ISAS)}")
    module = _build(verbose, isa)
    with _lock:
        previous, _module = _module, module
    try:
        yield module
    finally:
        with _lock:
            _module = previous


def cpu_kernel_isa() -> str | None:
    """The instruction-set path of the loaded kernel (``avx512``, ``avx2`` or ``generic``); ``None`` when it
    cannot be built. Builds it on first use."""
    return load_cpu_kernel().isa() if cpu_kernel_available() else None


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
    """The kernel's forward and backward. Time-indexed inputs may be bfloat16 (the forward reads them as
    they are and writes a bfloat16 output); the backward then runs the fp32 kernel on widened copies, which
    recomputes the same fp32 states from the same checkpoints."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, needs_grad, reverse,
                out, scale, accumulate):
        kernel = load_cpu_kernel()
        result, last_state, checkpoints = kernel.fwd(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                                     bool(delta_softplus), needs_grad, bool(reverse), out,
                                                     float(scale), bool(accumulate))
        if out is not None:
            ctx.mark_dirty(out)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.reverse = bool(reverse)
        ctx.scale = float(scale)
        ctx.accumulate = bool(accumulate)
        if needs_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, checkpoints)
        # an unused output arrives as None instead of a freshly allocated zero tensor
        ctx.set_materialize_grads(False)
        return result, last_state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_last_state):
        u, delta, A, B, C, D, z, delta_bias, checkpoints = ctx.saved_tensors
        need = ctx.needs_input_grad
        # what was added to `out` passes its gradient through unchanged
        grad_acc = grad_out if ctx.accumulate and need[12] else None
        du, ddelta, dA, dB, dC, dD, dz, dbias, dinit = scan_backward_cpu(
            u, delta, A, B, C, D, z, delta_bias, checkpoints, grad_out, grad_last_state,
            delta_softplus=ctx.delta_softplus, reverse=ctx.reverse, scale=ctx.scale,
            want_dB=need[3], want_dC=need[4], want_dinit=need[8])
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
            grad_acc,
            None,
            None,
        )


def scan_backward_cpu(u, delta, A, B, C, D, z, delta_bias, checkpoints, grad_out, grad_last_state=None, *,
                      delta_softplus, reverse, scale=1.0, want_dB=True, want_dC=True, want_dinit=False,
                      want_out=False):
    """The kernel's backward for a forward call made with the same arguments (see :func:`selective_scan_cpu`).

    Args:
        u, delta, A, B, C, D, z, delta_bias: the forward's inputs, in the kernel's layouts (B, C grouped
            ``(B, G, N, L)``); time-indexed ones may be bfloat16 (the backward runs in fp32 on widened copies,
            recomputing the same fp32 states from the same checkpoints).
        checkpoints: what the forward returned with checkpoints kept.
        grad_out: gradient of the forward's result ``scale * y`` ``(B, E, L)``, or None.
        grad_last_state: gradient of the returned last state ``(B, E, N)``, or None.
        delta_softplus, reverse, scale: as the forward call had them.
        want_dB, want_dC, want_dinit: whether to compute those gradients.
        want_out: also return the forward's ``y`` (gated, before ``scale``; needs ``z``), which the backward
            recomputes on its way anyway: a caller that needs it need not have kept it.

    Returns:
        ``du, ddelta, dA, dB, dC, dD, dz, dbias, dinit`` in the inputs' dtypes; ``dA (B, E, N)``, ``dD`` and
        ``dbias (B, E)`` are per sample (sum them over the batch); unwanted or absent ones are None. With
        ``want_out``, ``y (B, E, L)`` (in the compute dtype) follows.
    """
    time_dtype = u.dtype
    if time_dtype == torch.bfloat16:
        u, delta, B, C, z = (None if t is None else t.float() for t in (u, delta, B, C, z))
    if grad_out is not None:
        grad_out = grad_out.to(A.dtype)
        if scale != 1.0:
            grad_out = grad_out * scale
        grad_out = grad_out.contiguous()
    if grad_last_state is not None:
        grad_last_state = grad_last_state.contiguous()
    # A reverse scan's backward reads and writes in reverse too (no flipped copies).
    du, ddelta, dA, dB, dC, dD, dz, dbias, dinit, out = load_cpu_kernel().bwd(
        u, delta, A, B, C, D, z, delta_bias, checkpoints, grad_out, grad_last_state,
        bool(delta_softplus), bool(want_dB), bool(want_dC), bool(want_dinit), bool(want_out), bool(reverse),
    )
    if time_dtype != A.dtype:
        du, ddelta, dB, dC, dz = (None if t is None else t.to(time_dtype) for t in (du, ddelta, dB, dC, dz))
    grads = (du, ddelta, dA, dB, dC, dD, dz, dbias, dinit)
    return (*grads, out) if want_out else grads


def _contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.contiguous()


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None,
                       delta_softplus=False, reverse=False, *, out=None, scale=1.0, accumulate=False):
    """Fused CPU selective scan, differentiable in every tensor input and in the returned state.

    Args:
        u, delta: ``(B, E, L)``. A: ``(E, N)`` with ``N <= 64``. B, C: ``(B, G, N, L)``, channel ``e`` reading
        group ``e // (E // G)``. D, delta_bias: ``(E,)`` or None. z: ``(B, E, L)`` or None.
        initial_state: ``(B, E, N)`` or None (zeros). All float32, or all float64 (a slower portable path
        with libm's exp, meant for tests and gradcheck), on the CPU; any strides. Or the time-indexed ones
        (u, delta, z, B, C) bfloat16 with A, D, delta_bias and initial_state float32: the kernel widens them
        in registers, keeps fp32 states and writes a bfloat16 output (``last_state`` stays float32).
        reverse: scan from position L - 1 down to 0 (see :func:`videomap.ops.selective_scan`).
        out: ``(B, E, L)`` contiguous, u's dtype, or None: the buffer the result is written into, in place.
        scale: the result is ``scale * y``. accumulate: add ``scale * y`` to what ``out`` holds instead
        (``out`` required). This is how the two directions of a bidirectional layer merge without a
        separate pass.

    Returns:
        ``out (B, E, L)`` and ``last_state (B, E, N)``, the state after the last step.
    """
    dtype = u.dtype
    state_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    if dtype not in (torch.float32, torch.float64, torch.bfloat16):
        raise TypeError(f"selective_scan_cpu: expected float32, float64 or bfloat16 inputs, got {dtype}")
    for name, t, want in (("delta", delta, dtype), ("A", A, state_dtype), ("B", B, dtype), ("C", C, dtype),
                          ("D", D, state_dtype), ("z", z, dtype), ("delta_bias", delta_bias, state_dtype),
                          ("initial_state", initial_state, state_dtype)):
        if t is not None and t.dtype != want:
            raise TypeError(f"selective_scan_cpu: `{name}` is {t.dtype}, expected {want} for {dtype} `u`")
    if out is not None and (out.shape != u.shape or out.dtype != dtype or not out.is_contiguous()):
        raise ValueError(f"selective_scan_cpu: `out` must be a contiguous {tuple(u.shape)} {dtype} tensor")
    if accumulate and out is None:
        raise ValueError("selective_scan_cpu: `accumulate` needs `out`")
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    # checkpoints are only kept when a backward can follow (needs_input_grad ignores no_grad mode)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (*inputs, out))
    return _SelectiveScanCPU.apply(*(_contiguous(t) for t in inputs), bool(delta_softplus), needs_grad,
                                   bool(reverse), out, float(scale), bool(accumulate))


def _time_dtype(u, delta, B, C, z) -> torch.dtype:
    """The dtype the kernel reads the time-indexed inputs in: bfloat16 when all of them are bfloat16 (no
    widened copies), else the compute dtype."""
    series = [t for t in (u, delta, B, C, z) if t is not None]
    if all(t.dtype == torch.bfloat16 for t in series) and B.dim() >= 3 and C.dim() >= 3:
        return torch.bfloat16
    return compute_dtype(u.dtype)


def _scan_cpu_call(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, reverse, out, scale,
                   accumulate):
    """:func:`selective_scan_cpu` on arguments in the public contract's forms (any dtypes, B/C in every
    layout): casts only what the kernel cannot read as it is."""
    dt = compute_dtype(u.dtype)
    series = _time_dtype(u, delta, B, C, z)
    batch, channels, length = u.shape

    def cast(t, to):
        return None if t is None else t.to(to).contiguous()

    return selective_scan_cpu(
        cast(u, series), cast(delta, series), cast(A, dt),
        as_grouped(B, batch, channels, length, series), as_grouped(C, batch, channels, length, series),
        cast(D, dt), cast(z, series), cast(delta_bias, dt), cast(initial_state, dt), delta_softplus,
        reverse=reverse, out=out, scale=scale, accumulate=accumulate,
    )


def selective_scan_cpu_backend(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                               return_last_state=False, *, initial_state=None, reverse=False):
    """The ``cpu`` entry of the backend table: :func:`videomap.ops.selective_scan`'s contract on top of
    :func:`selective_scan_cpu` (inputs cast to the compute dtype unless all time-indexed ones are bfloat16,
    B/C in the grouped layout)."""
    out, last_state = _scan_cpu_call(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, reverse,
                                     None, 1.0, False)
    out = out.to(u.dtype)
    return (out, last_state) if return_last_state else out


def selective_scan_accumulate_cpu(acc, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                                  *, scale=1.0, reverse=False):
    """``acc + scale * y`` for the scan output ``y``, the scaling and the sum done in the kernel's output pass
    and written into ``acc`` (updated in place and returned); ``scale * y`` when ``acc`` is None. See
    :func:`videomap.ops.selective_scan_accumulate`."""
    if acc is not None and (acc.dtype != u.dtype or not acc.is_contiguous()
                            or _time_dtype(u, delta, B, C, z) != u.dtype):
        # the kernel cannot write into this buffer: the same result out of place, then added
        return acc.add_(selective_scan_cpu_backend(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                                   reverse=reverse), alpha=scale)
    out, _ = _scan_cpu_call(u, delta, A, B, C, D, z, delta_bias, delta_softplus, None, reverse, acc, scale,
                            acc is not None)
    return out.to(u.dtype)


def selective_scan_channels_last(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, *,
                                 reverse=False, out=None, scale=1.0, accumulate=False):
    """The CPU kernel's forward on channels-last tensors, for inference (no autograd).

    The scan of :func:`selective_scan_cpu` with the time-indexed tensors laid out position-major, as
    ``F.linear`` produces them: each step reads 16 consecutive channels of one position, so the kernel
    transposes nothing and the Mamba layer needs no layout copies between its products and its scans.
    Same arithmetic in the same order as :func:`selective_scan_cpu`: the same bits.

    Args:
        u, delta, z: ``(B, L, E)`` (z optional). B, C: ``(B, L, N)``, e.g. slices of ``x_proj``'s output, or
            grouped ``(B, L, G, N)``, channel ``e`` reading group ``e // (E // G)``.
            Every one of them needs contiguous channels (last stride 1, and groups of N for B and C); batch and
            position strides are free, so halves and slices of a product's output are read in place. All
            float32, all float64, or all bfloat16 (then A, D, delta_bias are float32; states stay fp32).
        A: ``(E, N)``, ``N <= 64``. D, delta_bias: ``(E,)`` or None.
        reverse, scale, accumulate, out: as :func:`selective_scan_cpu`; ``out`` is ``(B, L, E)`` with
            contiguous channels.

    Returns:
        ``out (B, L, E)``: ``scale * y``, or ``out + scale * y`` with ``accumulate``.
    """
    tensors = (u, delta, A, B, C, D, z, delta_bias, out)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError("selective_scan_channels_last: inference only (no autograd); use selective_scan_cpu "
                           "or run under torch.no_grad()")
    if B.dim() == 3 or C.dim() == 3:
        B, C = (t.unsqueeze(2) if t.dim() == 3 else t for t in (B, C))
    with torch.profiler.record_function("videomap::selective_scan_channels_last"):  # named in profiles
        return load_cpu_kernel().fwd_last(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), bool(reverse),
                                          out, float(scale), bool(accumulate))


__all__ = ["ISAS", "ISA_ENV_VAR", "build", "cpu_kernel_available", "cpu_kernel_error", "cpu_kernel_isa",
           "kernel_variant", "load_cpu_kernel", "requested_isa", "selective_scan_accumulate_cpu",
           "selective_scan_channels_last", "selective_scan_cpu", "selective_scan_cpu_backend"]
