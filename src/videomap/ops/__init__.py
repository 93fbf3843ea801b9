"""Functional kernels. The only package that imports optional kernels (mamba_ssm, causal_conv1d, triton)."""

from .backend import BACKENDS, requested_backend, resolve_backend, scan_backend
from .scan_reference import selective_scan_reference
from .selective_scan import selective_scan, selective_scan_accumulate

__all__ = [
    "BACKENDS",
    "requested_backend",
    "resolve_backend",
    "scan_backend",
    "selective_scan",
    "selective_scan_accumulate",
    "selective_scan_reference",
]
