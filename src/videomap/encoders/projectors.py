"""Projectors from encoder tokens to a language model's embedding width (LLaVA's ``mm_projector_type``)."""

from __future__ import annotations

import re

from torch import nn

PROJECTORS = ("linear", "mlp2x_gelu", "identity")


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """``(..., in_dim)`` → ``(..., out_dim)``.

    Args:
        kind: ``"linear"``; ``"mlp{n}x_gelu"`` (``n`` linear layers with GELU between them, the first
            ``in_dim → out_dim``; ``"mlp2x_gelu"`` is LLaVA-1.5's); or ``"identity"`` (``in_dim == out_dim``).
    """
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "identity":
        if in_dim != out_dim:
            raise ValueError(f"an identity projector needs in_dim == out_dim, got {in_dim} and {out_dim}")
        return nn.Identity()
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if match and int(match.group(1)) >= 1:
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(int(match.group(1)) - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        return nn.Sequential(*layers)
    raise ValueError(f"unknown projector {kind!r}; choose one of {PROJECTORS} (or mlp<n>x_gelu)")
