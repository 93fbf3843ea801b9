"""Shared inputs for the selective-scan tests."""

from __future__ import annotations

import math

import numpy as np
import torch


def make_inputs(batch=2, channels=4, state=3, length=6, bc="shared", groups=1, use_D=True, use_z=True,
                use_bias=True, use_h0=False, dtype=torch.float64, seed=0):
    """Random scan arguments; ``bc`` is ``shared`` (B, N, L), ``grouped`` (B, G, N, L) or ``const`` (E, N)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    u = rand(batch, channels, length)
    # Positive step sizes, as a trained layer has them: negative ones (without softplus) make exp(delta*A) > 1
    # and the state grows without bound over long sequences.
    delta = (torch.rand(batch, channels, length, generator=g, dtype=torch.float64) * 0.8 + 0.02).to(dtype)
    A = -(torch.rand(channels, state, generator=g, dtype=torch.float64) * 1.5 + 0.1).to(dtype)
    shape = {"shared": (batch, state, length), "grouped": (batch, groups, state, length), "const": (channels, state)}[bc]
    B, C = rand(*shape), rand(*shape)
    D = rand(channels) if use_D else None
    z = rand(batch, channels, length) if use_z else None
    delta_bias = rand(channels, scale=0.01) if use_bias else None
    h0 = rand(batch, channels, state) if use_h0 else None
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=h0)


def naive_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """Element-by-element Python oracle of mamba_ssm's selective_scan_ref semantics (float64).

    Returns ``(out, last_state)`` as numpy arrays.
    """
    u, delta, A, B, C = (np.asarray(t.detach().double()) for t in (u, delta, A, B, C))
    batch, channels, length = u.shape
    state = A.shape[1]

    def projection(M, i, e, n, t):
        if M.ndim == 2:
            return M[e, n]
        if M.ndim == 3:
            return M[i, n, t]
        per_group = channels // M.shape[1]
        return M[i, e // per_group, n, t]

    out = np.zeros((batch, channels, length))
    last = np.zeros((batch, channels, state))
    for i in range(batch):
        for e in range(channels):
            h = [0.0] * state if initial_state is None else [float(v) for v in initial_state[i, e]]
            for t in range(length):
                d = float(delta[i, e, t]) + (float(delta_bias[e]) if delta_bias is not None else 0.0)
                if delta_softplus:
                    d = math.log1p(math.exp(d))
                y = 0.0
                for n in range(state):
                    h[n] = math.exp(d * A[e, n]) * h[n] + d * projection(B, i, e, n, t) * u[i, e, t]
                    y += projection(C, i, e, n, t) * h[n]
                if D is not None:
                    y += float(D[e]) * u[i, e, t]
                if z is not None:
                    zz = float(z[i, e, t])
                    y *= zz / (1.0 + math.exp(-zz))
                out[i, e, t] = y
            last[i, e] = h
    return out, last


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (0 when both are empty or zero)."""
    if expected.numel() == 0:
        return 0.0
    scale = expected.detach().double().abs().max().item()
    diff = (actual.detach().double() - expected.detach().double()).abs().max().item()
    return diff / scale if scale > 0 else diff
