"""Choosing the selective-scan backend: ``VIDEOMAP_SCAN_BACKEND``, a context manager, and ``auto``.

``auto`` picks the fastest backend available for the tensors' device (mamba_ssm's kernel on CUDA, the fused
C++ kernel on CPU) and logs its choice once per (device type, backend); when the fast path cannot be had it
falls back to the reference loop and says why, once.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os

import torch

logger = logging.getLogger("videomap.ops")

BACKENDS = ("auto", "reference", "cpu", "cuda")
ENV_VAR = "VIDEOMAP_SCAN_BACKEND"

_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("videomap_scan_backend", default=None)
_announced: set[tuple[str, str]] = set()


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
    """Run the enclosed code with the given selective-scan backend (``auto|reference|cpu|cuda``).

    Example::

        with videomap.ops.scan_backend("reference"):
            out = selective_scan(u, delta, A, B, C)
    """
    token = _override.set(_validate(name, "scan_backend()"))
    try:
        yield
    finally:
        _override.reset(token)


def _announce(device_type: str, backend: str, why: str = "") -> None:
    key = (device_type, backend)
    if key in _announced:
        return
    _announced.add(key)
    message = f"videomap: selective scan on {device_type} uses the '{backend}' backend" + (f" ({why})" if why else "")
    (logger.warning if why else logger.info)(message)


def cuda_kernel_available() -> bool:
    from .scan_cuda import cuda_kernel_available as available

    return available()


def cpu_kernel_available() -> bool:
    from .scan_cpu import cpu_kernel_available as available

    return available()


def resolve_backend(device: torch.device, dtype: torch.dtype, needs_initial_state: bool = False) -> str:
    """The concrete backend (``reference|cpu|cuda``) for tensors on ``device``; raises if one was forced but
    cannot run there."""
    name = requested_backend()
    if name == "reference":
        return name
    if name == "cpu":
        if device.type != "cpu":
            raise RuntimeError(f"selective_scan: backend 'cpu' was requested but the tensors are on {device}")
        if not cpu_kernel_available():
            from .scan_cpu import cpu_kernel_error

            raise RuntimeError(f"selective_scan: the 'cpu' kernel could not be built: {cpu_kernel_error()}")
        return name
    if name == "cuda":
        if device.type != "cuda":
            raise RuntimeError(f"selective_scan: backend 'cuda' was requested but the tensors are on {device}")
        if not cuda_kernel_available():
            raise RuntimeError(
                "selective_scan: backend 'cuda' needs mamba_ssm (pip install mamba-ssm causal-conv1d)"
            )
        if needs_initial_state or dtype == torch.float64:
            raise RuntimeError("selective_scan: the 'cuda' backend supports neither `initial_state` nor float64")
        return name
    # auto
    if device.type == "cuda":
        if needs_initial_state or dtype == torch.float64:
            return "reference"
        if cuda_kernel_available():
            _announce("cuda", "cuda")
            return "cuda"
        _announce("cuda", "reference", "mamba_ssm is not importable: pip install mamba-ssm causal-conv1d")
        return "reference"
    if device.type == "cpu":
        if cpu_kernel_available():
            _announce("cpu", "cpu")
            return "cpu"
        from .scan_cpu import cpu_kernel_error

        _announce("cpu", "reference", f"the fused CPU kernel could not be built: {cpu_kernel_error()}")
        return "reference"
    _announce(device.type, "reference", "no fused kernel for this device")
    return "reference"
