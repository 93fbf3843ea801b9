"""Argument validation and layout helpers shared by every backend of the selective scan and the causal conv:
the public functions validate here once, so the kernels in the backend table receive well-formed arguments."""

from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a scan runs in: fp32 for half/bfloat16/fp32 inputs, fp64 for fp64 inputs.

    mamba_ssm upcasts to fp32; we keep fp64 as fp64 so that ``gradcheck`` is meaningful.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def _shape_error(name: str, tensor: torch.Tensor, expected: str) -> ValueError:
    return ValueError(f"selective_scan: `{name}` must have shape {expected}, got {tuple(tensor.shape)}")


def check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state) -> None:
    """Raise a clear ``ValueError``/``TypeError`` for any argument outside DESIGN §3's contract."""
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"selective_scan: `u` must be a (B, E, L) tensor, got {getattr(u, 'shape', type(u))}")
    if not u.is_floating_point():
        raise TypeError(f"selective_scan: `u` must be floating point, got {u.dtype}")
    batch, channels, length = u.shape
    if delta.shape != u.shape:
        raise _shape_error("delta", delta, f"{tuple(u.shape)} (same as u)")
    if not delta.is_floating_point():
        raise TypeError(f"selective_scan: `delta` must be floating point, got {delta.dtype}")
    if A.is_complex():
        raise NotImplementedError("selective_scan: complex `A` is not supported; VideoMAP uses real A")
    if A.dim() != 2 or A.shape[0] != channels:
        raise _shape_error("A", A, f"(E={channels}, N)")
    state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.is_complex():
            raise NotImplementedError(f"selective_scan: complex `{name}` is not supported")
        if t.dim() == 2:
            if tuple(t.shape) != (channels, state):
                raise _shape_error(name, t, f"(E={channels}, N={state})")
        elif t.dim() == 3:
            if tuple(t.shape) != (batch, state, length):
                raise _shape_error(name, t, f"(B={batch}, N={state}, L={length})")
        elif t.dim() == 4:
            groups = t.shape[1]
            if t.shape[0] != batch or t.shape[2:] != (state, length) or groups == 0 or channels % groups:
                raise _shape_error(name, t, f"(B={batch}, G, N={state}, L={length}) with E={channels} divisible by G")
        else:
            raise _shape_error(name, t, "(B, N, L), (B, G, N, L) or (E, N)")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (channels,):
            raise _shape_error(name, t, f"(E={channels},)")
    if z is not None and z.shape != u.shape:
        raise _shape_error("z", z, f"{tuple(u.shape)} (same as u)")
    if initial_state is not None and tuple(initial_state.shape) != (batch, channels, state):
        raise _shape_error("initial_state", initial_state, f"(B={batch}, E={channels}, N={state})")
    for name, t in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias), ("initial_state", initial_state)):
        if t is not None and t.device != u.device:
            raise ValueError(f"selective_scan: `{name}` is on {t.device} but `u` is on {u.device}")
        if t is not None and not t.is_floating_point():
            raise TypeError(f"selective_scan: `{name}` must be floating point, got {t.dtype}")


CONV_ACTIVATIONS = (None, "silu")


def check_conv_args(x, weight, bias, activation) -> None:
    """Raise a clear ``ValueError`` for causal-conv arguments outside ``x (B, E, L)``, ``weight (E, K)``,
    ``bias (E,)``, ``activation in (None, "silu")``."""
    if activation not in CONV_ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be one of {CONV_ACTIVATIONS}, got {activation!r}")
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"causal_conv1d: expected x (B, E, L) and weight (E, K), got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (x.shape[1],):
        raise ValueError(f"causal_conv1d: `bias` must have shape (E={x.shape[1]},), got {tuple(bias.shape)}")


def expand_to_channels(BC: torch.Tensor, channels: int, length: int, dtype: torch.dtype) -> torch.Tensor:
    """View B or C as ``(B or 1, E or 1, N, L)`` in ``dtype``, broadcastable against ``(B, E, N, L)``."""
    BC = BC.to(dtype)
    if BC.dim() == 2:
        return BC[None, :, :, None].expand(-1, -1, -1, length)
    if BC.dim() == 3:
        return BC[:, None]
    return BC.repeat_interleave(channels // BC.shape[1], dim=1)


def as_grouped(BC: torch.Tensor, batch: int, channels: int, length: int, dtype: torch.dtype) -> torch.Tensor:
    """B or C in the kernels' layout ``(B, G, N, L)``, contiguous, in ``dtype`` (autograd-tracked)."""
    BC = BC.to(dtype)
    if BC.dim() == 2:  # constant per channel: one group per channel
        BC = BC[None, :, :, None].expand(batch, channels, BC.shape[1], length)
    elif BC.dim() == 3:
        BC = BC[:, None]
    return BC.contiguous()


def flip_time(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` flipped along L (a new contiguous tensor); constant ``(E, N)`` projections and ``None`` pass through."""
    return t if t is None or t.dim() < 3 else t.flip(-1)
