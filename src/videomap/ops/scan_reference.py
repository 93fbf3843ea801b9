"""The selective scan as a readable sequential loop: the specification every other backend is tested against.

Semantics are those of mamba_ssm's ``selective_scan_ref`` for real ``A``::

    delta_t = softplus(delta_t + delta_bias)            (each step optional)
    h_t     = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t     = <C_t, h_t> + D * u_t
    out_t   = y_t * silu(z_t)                           (when z is given)

with ``h_{-1} = 0`` (or ``initial_state``); ``reverse=True`` runs the same recurrence from ``t = L - 1`` down
to ``t = 0``. Everything runs in :func:`compute_dtype` (fp32, or fp64 for fp64
inputs) and the output is cast back to ``u.dtype``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .scan_checks import compute_dtype, expand_to_channels


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    initial_state: torch.Tensor | None = None,
    reverse: bool = False,
):
    """Sequential selective scan (autograd-differentiable).

    Args:
        u, delta: ``(B, E, L)``. A: ``(E, N)`` real. B, C: ``(B, N, L)``, grouped ``(B, G, N, L)``, or
        constant ``(E, N)``. D, delta_bias: ``(E,)``. z: ``(B, E, L)``. initial_state: ``(B, E, N)``.
        reverse: visit the positions from the last to the first.

    Returns:
        ``out (B, E, L)`` in ``u.dtype``; with ``return_last_state`` also the state after the last step
        visited (``h_{L-1}``, or ``h_0`` when ``reverse``) ``(B, E, N)`` in the compute dtype.
    """
    in_dtype = u.dtype
    dt = compute_dtype(in_dtype)
    batch, channels, length = u.shape
    u = u.to(dt)
    delta = delta.to(dt)
    A = A.to(dt)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dt)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)

    # unbind once per tensor: slicing [..., t] inside the loop would make the backward O(L^2).
    b_steps = expand_to_channels(B, channels, length, dt).unbind(-1)  # L x (B|1, E|1, N)
    c_steps = expand_to_channels(C, channels, length, dt).unbind(-1)
    u_steps = u.unbind(-1)  # L x (B, E)
    delta_steps = delta.unbind(-1)

    if initial_state is None:
        h = u.new_zeros(batch, channels, A.shape[1])
    else:
        h = initial_state.to(dt)
    ys: list[torch.Tensor | None] = [None] * length
    for t in (range(length - 1, -1, -1) if reverse else range(length)):
        decay = torch.exp(delta_steps[t][..., None] * A)  # (B, E, N)
        h = decay * h + (delta_steps[t] * u_steps[t])[..., None] * b_steps[t]
        ys[t] = (h * c_steps[t]).sum(-1)
    y = torch.stack(ys, dim=-1) if length else u.new_zeros(batch, channels, 0)
    if D is not None:
        y = y + u * D.to(dt)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dt))
    out = y.to(in_dtype)
    return (out, h) if return_last_state else out
