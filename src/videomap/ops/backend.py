"""Choosing a kernel: ``VIDEOMAP_SCAN_BACKEND``, a context manager, ``auto``, and the one table from
(device type, backend) to an implementation, shared by the selective scan and the causal conv.

``auto`` picks, for CUDA tensors, ``cuda`` (mamba_ssm / causal_conv1d) then ``triton`` then ``reference``;
for CPU tensors ``cpu`` (the fused C++ kernels) then ``reference``. It logs its choice once per (op, device
type, backend), as a warning with the reason when it had to fall back to the reference loop. A forced
scan backend that cannot run raises an error saying why. The causal conv follows the same table; a forced
backend it cannot use (``cuda`` without the causal_conv1d package, ``cpu`` on CUDA tensors) falls back to
the conv's ``auto`` choice, except ``triton``, which is never replaced silently.

Optional kernels (mamba_ssm, causal_conv1d, triton) are imported only when a table entry needing them is
looked up, so ``import videomap`` works without them.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import logging
import os
from typing import Callable

import torch

# The CPU kernel's probe is on every call's path; importing its module builds nothing.
from .scan_cpu import cpu_kernel_available, cpu_kernel_error

logger = logging.getLogger("videomap.ops")

BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")
ENV_VAR = "VIDEOMAP_SCAN_BACKEND"
OPS = ("scan", "conv")
_OP_NAMES = {"scan": "selective_scan", "conv": "causal_conv1d"}

# What `auto` tries, in order, per device type; other device types get the reference.
AUTO_ORDER: dict[str, tuple[str, ...]] = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}

# (op, device type, backend) -> "module:function" inside videomap.ops, imported on first use. "*" matches any
# device type. Scan implementations take (u, delta, A, B, C, D, z, delta_bias, delta_softplus,
# return_last_state, *, initial_state, reverse); conv implementations take (x, weight, bias, activation,
# reverse). Arguments arrive validated (scan_checks).
KERNELS: dict[tuple[str, str, str], str] = {
    ("scan", "*", "reference"): "scan_reference:selective_scan_reference",
    ("scan", "cpu", "cpu"): "scan_cpu:selective_scan_cpu_backend",
    ("scan", "cpu", "triton"): "scan_triton:selective_scan_triton",
    ("scan", "cuda", "triton"): "scan_triton:selective_scan_triton",
    ("scan", "cuda", "cuda"): "scan_cuda:selective_scan_cuda",
    ("conv", "*", "reference"): "causal_conv:causal_conv1d_reference",
    ("conv", "cpu", "cpu"): "causal_conv:causal_conv1d_cpu",
    ("conv", "cpu", "triton"): "causal_conv_triton:causal_conv1d_triton",
    ("conv", "cuda", "triton"): "causal_conv_triton:causal_conv1d_triton",
    ("conv", "cuda", "cuda"): "causal_conv:causal_conv1d_cuda",
}

_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("videomap_scan_backend", default=None)
_announced: set[tuple[str, str, str]] = set()


def _validate(name: str, source: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {name!r} from {source}; choose one of {', '.join(BACKENDS)}")
    return name


def requested_backend() -> str:
    """The backend asked for: the innermost :func:`scan_backend` context, else the environment, else ``auto``."""
    name = _override.get()
    if name is not None:
        return name
    return _validate(os.environ.get(ENV_VAR, "auto") or "auto", f"${ENV_VAR}")


@contextlib.contextmanager
def scan_backend(name: str):
    """Run the enclosed code with the given backend (``auto|reference|cpu|triton|cuda``) for the selective
    scan and the causal conv.

    Example::

        with videomap.ops.scan_backend("reference"):
            out = selective_scan(u, delta, A, B, C)
    """
    token = _override.set(_validate(name, "scan_backend()"))
    try:
        yield
    finally:
        _override.reset(token)


def _announce(op: str, device_type: str, backend: str, why: str = "") -> None:
    key = (op, device_type, backend)
    if key in _announced:
        return
    _announced.add(key)
    what = "selective scan" if op == "scan" else "causal conv"
    message = f"videomap: {what} on {device_type} uses the '{backend}' backend" + (f" ({why})" if why else "")
    (logger.warning if backend == "reference" and why else logger.info)(message)


# ------------------------------------------------------------------------------------------ availability


def cuda_kernel_available() -> bool:
    """mamba_ssm's scan imports and CUDA is available."""
    from .scan_cuda import cuda_kernel_available as available

    return available()


def cuda_conv_available() -> bool:
    """The causal_conv1d package imports and CUDA is available."""
    from .causal_conv import cuda_conv_kernel

    return torch.cuda.is_available() and cuda_conv_kernel() is not None


@functools.lru_cache(maxsize=1)
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as error:  # noqa: BLE001 - a broken install can raise more than ImportError
        return f"triton is not importable ({type(error).__name__}: {error}); pip install triton"
    return None


def triton_interpreter_enabled() -> bool:
    """Whether Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1``, read when kernels are
    first compiled, so it must be set before :mod:`videomap.ops.scan_triton` is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def triton_unavailable_reason(device: torch.device) -> str | None:
    """``None`` when the Triton kernels can run on ``device``, else why not."""
    if device.type == "cpu":
        if not triton_interpreter_enabled():
            return ("Triton runs CPU tensors only under its interpreter: set TRITON_INTERPRET=1 before "
                    "videomap's Triton kernels are first used")
    elif device.type != "cuda":
        return f"there are no Triton kernels for {device.type} tensors"
    return _triton_import_error()


def unavailable_reason(op: str, backend: str, device: torch.device, dtype: torch.dtype,
                       needs_initial_state: bool = False) -> str | None:
    """``None`` when ``backend`` can run ``op`` (``scan|conv``) on these tensors, else why not."""
    if backend == "reference":
        return None
    if backend == "triton":
        return triton_unavailable_reason(device)
    if backend == "cpu":
        if device.type != "cpu":
            return f"the tensors are on {device}"
        if not cpu_kernel_available():
            return f"the CPU kernel could not be built: {cpu_kernel_error()}"
        return None
    if backend == "cuda":
        if device.type != "cuda":
            return f"the tensors are on {device}"
        if op == "conv":
            return None if cuda_conv_available() else "the causal_conv1d package is not importable"
        if not cuda_kernel_available():
            return "mamba_ssm is not importable: pip install mamba-ssm causal-conv1d"
        if needs_initial_state or dtype == torch.float64:
            return "mamba_ssm's kernel supports neither `initial_state` nor float64"
        return None
    raise ValueError(f"unknown backend {backend!r}")


# ------------------------------------------------------------------------------------------ resolution


def _auto(op: str, device: torch.device, dtype: torch.dtype, needs_initial_state: bool) -> str:
    skipped = []
    for candidate in AUTO_ORDER.get(device.type, ("reference",)):
        reason = unavailable_reason(op, candidate, device, dtype, needs_initial_state)
        if reason is None:
            _announce(op, device.type, candidate, "; ".join(skipped))
            return candidate
        skipped.append(f"'{candidate}': {reason}")
    raise AssertionError("the reference backend is always available")


def resolve_backend(device: torch.device, dtype: torch.dtype, needs_initial_state: bool = False,
                    op: str = "scan") -> str:
    """The concrete backend (``reference|cpu|triton|cuda``) for ``op`` on tensors on ``device``; raises if
    one was forced that cannot run there (for the conv, only a forced ``triton``)."""
    name = requested_backend()
    if name == "auto":
        return _auto(op, device, dtype, needs_initial_state)
    reason = unavailable_reason(op, name, device, dtype, needs_initial_state)
    if reason is None:
        return name
    if op == "conv" and name != "triton":
        return _auto(op, device, dtype, needs_initial_state)
    raise RuntimeError(f"{_OP_NAMES[op]}: backend '{name}' was requested but {reason}")


@functools.lru_cache(maxsize=None)
def _load(target: str) -> Callable:
    module, function = target.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)


def kernel(op: str, backend: str, device_type: str) -> Callable:
    """The implementation of ``op`` for ``backend`` on ``device_type`` from :data:`KERNELS`."""
    target = KERNELS.get((op, device_type, backend)) or KERNELS.get((op, "*", backend))
    if target is None:
        raise RuntimeError(f"{_OP_NAMES[op]}: no '{backend}' implementation for {device_type} tensors")
    return _load(target)


def implementation(op: str, device: torch.device, dtype: torch.dtype, needs_initial_state: bool = False) -> Callable:
    """The kernel that runs ``op`` here, after :func:`resolve_backend`."""
    return kernel(op, resolve_backend(device, dtype, needs_initial_state, op), device.type)
