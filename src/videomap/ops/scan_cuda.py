"""The CUDA backend: mamba_ssm's fused ``selective_scan_fn``, imported lazily.

mamba_ssm imports triton (and compiled extensions) at import time, which can fail in many ways besides
ImportError, so any exception means "not available".
"""

from __future__ import annotations

import functools

from .scan_checks import flip_time


@functools.lru_cache(maxsize=1)
def _load():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as error:  # noqa: BLE001 - see module docstring
        return None, f"{type(error).__name__}: {error}"
    return selective_scan_fn, ""


def cuda_kernel_available() -> bool:
    import torch

    return torch.cuda.is_available() and _load()[0] is not None


def selective_scan_cuda(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        return_last_state=False, *, initial_state=None, reverse=False):
    """mamba_ssm's fused scan; same contract as :func:`videomap.ops.selective_scan` except that
    ``initial_state`` must be ``None``. ``reverse`` scans flipped copies (mamba_ssm has no reverse mode)."""
    fn, error = _load()
    if fn is None:
        raise RuntimeError(f"mamba_ssm is not importable ({error}); pip install mamba-ssm causal-conv1d")
    if initial_state is not None:
        raise RuntimeError("selective_scan: mamba_ssm's kernel has no `initial_state`")
    if reverse:
        result = fn(flip_time(u), flip_time(delta), A, flip_time(B), flip_time(C), D, flip_time(z), delta_bias,
                    delta_softplus, return_last_state)
        return (result[0].flip(-1), result[1]) if return_last_state else result.flip(-1)
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
