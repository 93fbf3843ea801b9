"""The public selective scan (DESIGN §3): one function, several backends with the same semantics."""

from __future__ import annotations

import torch

from .backend import implementation, kernel, resolve_backend
from .scan_checks import check_scan_args


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
            the state after position 0. The CPU and Triton kernels read and write in reverse without flipped
            copies; the others flip. This is how the backward direction of a bidirectional Mamba runs. Not
            part of mamba_ssm's signature.

    Returns:
        ``out (B, E, L)`` in ``u.dtype``; with ``return_last_state``, ``(out, last_state (B, E, N))`` where
        the state is in the compute dtype (fp32, fp64 for fp64 inputs).

    The backend comes from :func:`videomap.ops.scan_backend` or ``$VIDEOMAP_SCAN_BACKEND``
    (``auto|reference|cpu|triton|cuda``, see :mod:`videomap.ops.backend`); every backend computes in fp32
    (fp64 for fp64 inputs).
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state)
    run = implementation("scan", u.device, u.dtype, initial_state is not None)
    return run(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state=initial_state,
               reverse=reverse)


def selective_scan_accumulate(
    acc: torch.Tensor | None,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    *,
    scale: float = 1.0,
    reverse: bool = False,
) -> torch.Tensor:
    """``acc + scale * selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse=reverse)``.

    Args:
        acc: ``(B, E, L)`` in ``u.dtype``, updated in place (as ``acc.add_``) and returned; or ``None``, which
            returns ``scale * y`` in a new tensor. Pass a tensor nothing else reads afterwards, typically the
            result of a previous call: a bidirectional layer merges its two directions as
            ``y = selective_scan_accumulate(None, ..., scale=0.5)`` then
            ``selective_scan_accumulate(y, ..., scale=0.5, reverse=True)``.
        scale: factor on the scan's output (``0.5`` for a mean of two directions).
        The others: as :func:`selective_scan`.

    Returns:
        ``(B, E, L)`` in ``u.dtype``. Differentiable in every input, ``acc`` included. The CPU kernel scales
        and adds inside its output pass, so the merge costs no extra pass over memory and no extra buffer;
        other backends compute ``y`` and add it.
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias, None)
    if acc is not None and acc.shape != u.shape:
        raise ValueError(f"selective_scan_accumulate: `acc` must have shape {tuple(u.shape)}, got {tuple(acc.shape)}")
    backend = resolve_backend(u.device, u.dtype)
    if backend == "cpu":
        from .scan_cpu import selective_scan_accumulate_cpu

        return selective_scan_accumulate_cpu(acc, u, delta, A, B, C, D, z, delta_bias, delta_softplus, scale=scale,
                                             reverse=reverse)
    y = kernel("scan", backend, u.device.type)(u, delta, A, B, C, D, z, delta_bias, delta_softplus, False,
                                               initial_state=None, reverse=reverse)
    if acc is None:
        return y * scale if scale != 1.0 else y
    return acc.add_(y, alpha=scale)
