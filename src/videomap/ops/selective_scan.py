"""The public selective scan (DESIGN §3): one function, several backends with the same semantics."""

from __future__ import annotations

import torch

from .backend import resolve_backend
from .scan_checks import as_grouped, check_scan_args, compute_dtype, flip_time
from .scan_reference import selective_scan_reference


def selective_scan(
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
    """Selective scan with mamba_ssm's ``selective_scan_fn`` contract, on any device.

    Args:
        u: input ``(B, E, L)``.
        delta: step sizes ``(B, E, L)`` (before ``delta_bias`` and softplus).
        A: real state matrix ``(E, N)`` (negative for a stable scan).
        B, C: input/output projections ``(B, N, L)``, grouped ``(B, G, N, L)`` (channel ``e`` uses group
            ``e // (E // G)``), or constant ``(E, N)``.
        D: skip ``(E,)``. z: gate ``(B, E, L)``, applied as ``y * silu(z)``. delta_bias: ``(E,)``.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the state after the last step.
        initial_state: ``(B, E, N)`` state before the first step (default zeros); with the returned last
            state it lets a long sequence be scanned in chunks. Not part of mamba_ssm's signature.
        reverse: run the recurrence from the last position to the first, i.e. the scan of every
            time-indexed input flipped along L, with the output flipped back; the returned last state is
            the state after position 0. The CPU kernel reads and writes in reverse without flipped copies;
            the other backends flip. This is how the backward direction of a bidirectional Mamba runs. Not
            part of mamba_ssm's signature.

    Returns:
        ``out (B, E, L)`` in ``u.dtype``; with ``return_last_state``, ``(out, last_state (B, E, N))`` where
        the state is in the compute dtype (fp32, fp64 for fp64 inputs).

    The backend comes from :func:`videomap.ops.scan_backend` or ``$VIDEOMAP_SCAN_BACKEND``
    (``auto|reference|cpu|cuda``); every backend computes in fp32 (fp64 for fp64 inputs).
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state)
    backend = resolve_backend(u.device, u.dtype, needs_initial_state=initial_state is not None)
    if reverse and backend != "cpu":
        result = selective_scan(flip_time(u), flip_time(delta), A, flip_time(B), flip_time(C), D, flip_time(z),
                                delta_bias, delta_softplus, return_last_state, initial_state=initial_state)
        return (result[0].flip(-1), result[1]) if return_last_state else result.flip(-1)
    if backend == "reference":
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                                        initial_state=initial_state)
    if backend == "cuda":
        from .scan_cuda import selective_scan_cuda

        return selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    from .scan_cpu import selective_scan_cpu

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

