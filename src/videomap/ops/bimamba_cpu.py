"""The fused bidirectional Mamba layer on the CPU: one autograd node that keeps only what its backward needs.

The unfused layer (:class:`videomap.layers.BiMamba` with ``VIDEOMAP_FUSED_MAMBA=0``) leaves autograd to save
every intermediate of both directions: the norm's output, conv outputs before and after SiLU, the x/dt
projections, the deltas, the scans' inputs and outputs, the merge. That is about 20 ``(B, L, D)``-sized
tensors per layer, most of a hybrid model's training memory. This function computes the same layer from its
input (before the RMSNorm in front of it) to the output of ``out_proj`` and saves only

* the input ``x (B, L, D)``,
* ``xz (B, 2E, L)``, the output of ``in_proj`` (``recompute="xz"``, the default; mamba_ssm's
  ``mamba_inner_fn`` keeps it too), and each direction's scan checkpoints ``(B, L / 64, E, N)`` (small);
  with ``recompute="input"`` neither: the backward runs the norm, ``in_proj`` and the scans' forward again.

The backward recomputes the cheap parts (norm, causal conv, SiLU, x and dt projections) of one direction at
a time, runs the scan kernel's backward on them (which also gives back the scan's output, for ``out_proj``'s
weight gradient), and lets autograd carry the gradients through the recomputed parts. The recomputed values
are the forward's (same kernels, same order), so the gradients are those of the unfused layer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .causal_conv import causal_conv1d_cpu
from .matmul import channels_first_matmul, matmul
from .rms_norm import rms_norm
from .scan_cpu import load_cpu_kernel, scan_backward_cpu

RECOMPUTE_MODES = ("xz", "input")


class DirectionWeights(NamedTuple):
    """One direction's parameters, as the layer holds them."""

    conv_weight: torch.Tensor  # (E, K)
    conv_bias: torch.Tensor  # (E,)
    x_proj_weight: torch.Tensor  # (R + 2N, E)
    dt_proj_weight: torch.Tensor  # (E, R)
    dt_proj_bias: torch.Tensor  # (E,)
    A_log: torch.Tensor  # (E, N)
    D: torch.Tensor  # (E,)


def _cheap_part(x: torch.Tensor, w: DirectionWeights, dt_rank: int, d_state: int, reverse: bool):
    """Conv + SiLU and the x/dt projections of one direction: ``u, delta (B, E, L)``, ``B, C (B, 1, N, L)``.

    Autograd-tracked when grad mode is on (the backward's recomputation); the same kernels in the same order
    as the forward either way, so the values are the forward's bit for bit.
    """
    u = causal_conv1d_cpu(x, w.conv_weight, w.conv_bias, activation="silu", reverse=reverse)
    x_dbl = channels_first_matmul(w.x_proj_weight, u)  # (B, R + 2N, L)
    dt, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=1)
    delta = channels_first_matmul(w.dt_proj_weight, dt)  # (B, E, L)
    return u, delta, B[:, None].contiguous(), C[:, None].contiguous()


def _scan_forward(x, z, w: DirectionWeights, dt_rank, d_state, reverse, out, scale, keep_checkpoints):
    """One direction's ``scale * y`` written into (or, with ``out``, added to) a ``(B, E, L)`` buffer; returns
    the buffer and the scan checkpoints (empty unless ``keep_checkpoints``)."""
    u, delta, B, C = _cheap_part(x, w, dt_rank, d_state, reverse)
    A = -torch.exp(w.A_log)
    result, _, checkpoints = load_cpu_kernel().fwd(
        u, delta, A, B, C, w.D, z, w.dt_proj_bias, None, True, keep_checkpoints, reverse, out, float(scale),
        out is not None)
    return result, checkpoints


def _weight_grad(grad: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """``sum_b grad[b] @ inp[b]``: the weight gradient of a per-sample product ``out[b] = W @ x[b]``, with
    ``grad (B, M, L)`` and ``inp (B, L, K)`` (often a transposed view) → ``(M, K)``; one oneDNN product per
    sample, no batched copy."""
    total = matmul(grad[0], inp[0])
    for b in range(1, grad.shape[0]):
        total = total.add_(matmul(grad[b], inp[b]))
    return total


def _halves(xz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, z = xz.chunk(2, dim=1)
    return x.contiguous(), z.contiguous()  # views when the batch is 1, copies otherwise


def _normed(x: torch.Tensor, norm_weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    return x if norm_weight is None else rms_norm(x, norm_weight, eps)


def _forward_y(xz, forward_w, backward_w, dt_rank, d_state, scale, keep_checkpoints):
    """The merged gated output ``y (B, E, L)`` of both directions and their checkpoints."""
    x, z = _halves(xz)
    y, ckpt_f = _scan_forward(x, z, forward_w, dt_rank, d_state, False, None, scale, keep_checkpoints)
    y, ckpt_b = _scan_forward(x, z, backward_w, dt_rank, d_state, True, y, scale, keep_checkpoints)
    return y, ckpt_f, ckpt_b


def _direction_backward(x, z, w: DirectionWeights, ckpt, dy, dt_rank, d_state, scale, reverse):
    """One direction's gradients from ``dy`` (the gradient of the merged output): ``dx, dz`` ``(B, E, L)``,
    the direction's parameter gradients (in :class:`DirectionWeights` order) and its output ``y`` (gated,
    before ``scale``)."""
    leaves = [x.detach().requires_grad_()] + [t.detach().requires_grad_() for t in w[:4]]
    with torch.enable_grad():
        u, delta, B, C = _cheap_part(leaves[0], DirectionWeights(*leaves[1:], *w[4:]), dt_rank, d_state, reverse)
    A = -torch.exp(w.A_log)
    du, ddelta, dA, dB, dC, dD, dz, dbias, _, y = scan_backward_cpu(
        u.detach(), delta.detach(), A, B.detach(), C.detach(), w.D, z, w.dt_proj_bias, ckpt, dy, None,
        delta_softplus=True, reverse=reverse, scale=scale, want_out=True)
    dx, dconv_w, dconv_b, dx_proj, ddt_proj = torch.autograd.grad((u, delta, B, C), leaves, (du, ddelta, dB, dC))
    # A = -exp(A_log), so dA_log = dA * A.
    return dx, dz, [dconv_w, dconv_b, dx_proj, ddt_proj, dbias.sum(0), dA.sum(0) * A, dD.sum(0)], y


class _BiMambaInnerCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, norm_weight, eps, in_proj_weight, out_proj_weight, dt_rank, d_state, scale, recompute,
                *weights):
        forward_w, backward_w = DirectionWeights(*weights[:7]), DirectionWeights(*weights[7:])
        xz = channels_first_matmul(in_proj_weight, _normed(x, norm_weight, eps).transpose(1, 2))
        keep = recompute == "xz"
        y, ckpt_f, ckpt_b = _forward_y(xz, forward_w, backward_w, dt_rank, d_state, scale, keep)
        out = channels_first_matmul(out_proj_weight, y)  # (B, D, L)
        ctx.dims = (float(eps), dt_rank, d_state, float(scale), recompute)
        if keep:
            ctx.save_for_backward(x, norm_weight, in_proj_weight, out_proj_weight, xz, ckpt_f, ckpt_b, *weights)
        else:
            ctx.save_for_backward(x, norm_weight, in_proj_weight, out_proj_weight, None, None, None, *weights)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, norm_weight, in_proj_weight, out_proj_weight, xz, ckpt_f, ckpt_b, *weights = ctx.saved_tensors
        eps, dt_rank, d_state, scale, recompute = ctx.dims
        forward_w, backward_w = DirectionWeights(*weights[:7]), DirectionWeights(*weights[7:])
        leaf_x = x.detach().requires_grad_()
        leaf_norm = None if norm_weight is None else norm_weight.detach().requires_grad_()
        with torch.enable_grad():
            normed = _normed(leaf_x, leaf_norm, eps)
        if xz is None:  # redo the forward, this time keeping the checkpoints
            xz = channels_first_matmul(in_proj_weight, normed.detach().transpose(1, 2))
            ckpt_f, ckpt_b = _forward_y(xz, forward_w, backward_w, dt_rank, d_state, scale, True)[1:]
        grad_out = grad_out.to(xz.dtype)
        dy = channels_first_matmul(out_proj_weight.t(), grad_out)  # out = W_out @ y: dy = W_out^T g, (B, E, L)
        x_half, z_half = _halves(xz)
        dx_f, dz_f, grads_f, y = _direction_backward(x_half, z_half, forward_w, ckpt_f, dy, dt_rank, d_state, scale,
                                                     False)
        dx_b, dz_b, grads_b, y_b = _direction_backward(x_half, z_half, backward_w, ckpt_b, dy, dt_rank, d_state,
                                                       scale, True)
        del dy, x_half, z_half
        # The merge as the forward did it: scale * y, then + scale * y_b.
        y = y.mul_(scale).add_(y_b, alpha=scale)
        del y_b
        d_out_proj = _weight_grad(grad_out, y.transpose(1, 2))
        del y
        dxz = torch.cat([dx_f.add_(dx_b), dz_f.add_(dz_b)], dim=1)  # (B, 2E, L)
        del dx_f, dx_b, dz_f, dz_b
        d_in_proj = _weight_grad(dxz, normed.detach())  # xz = W_in @ normed^T per sample
        d_normed = channels_first_matmul(in_proj_weight.t(), dxz).transpose(1, 2)
        if leaf_norm is None:
            d_x, d_norm = d_normed, None
        else:
            d_x, d_norm = torch.autograd.grad(normed, (leaf_x, leaf_norm), d_normed)
        return (d_x, d_norm, None, d_in_proj, d_out_proj, None, None, None, None, *grads_f, *grads_b)


def bimamba_inner_cpu(
    x: torch.Tensor,
    in_proj_weight: torch.Tensor,
    out_proj_weight: torch.Tensor,
    forward_weights: DirectionWeights,
    backward_weights: DirectionWeights,
    *,
    dt_rank: int,
    d_state: int,
    scale: float,
    norm_weight: torch.Tensor | None = None,
    norm_eps: float = 1e-5,
    recompute: str = "xz",
) -> torch.Tensor:
    """The bidirectional Mamba layer (with the RMSNorm in front of it) as one autograd node.

    Args:
        x: the layer input ``(B, L, D)``: before the norm when ``norm_weight`` is given, else the mixer's
            input.
        in_proj_weight: ``(2E, D)``. out_proj_weight: ``(D, E)``.
        forward_weights, backward_weights: the two directions' parameters (:class:`DirectionWeights`).
        dt_rank, d_state: ``R`` and ``N``. scale: the merge factor (0.5 for ``mean``, 1.0 for ``sum``).
        norm_weight, norm_eps: the RMSNorm applied to ``x`` first (:func:`videomap.ops.rms_norm.rms_norm`).
        recompute: ``"xz"`` keeps ``x``, ``xz`` and the scan checkpoints for the backward; ``"input"`` keeps
            only ``x`` and redoes the forward in the backward (the least memory, one more forward's time).

    Returns:
        ``(B, D, L)``, channels first (a ``.transpose(1, 2)`` view is the usual layout). float32 or float64;
        differentiable in every tensor argument.
    """
    if recompute not in RECOMPUTE_MODES:
        raise ValueError(f"bimamba_inner_cpu: recompute must be one of {RECOMPUTE_MODES}, got {recompute!r}")
    weights = [t.contiguous() for t in (*forward_weights, *backward_weights)]
    return _BiMambaInnerCPU.apply(x, norm_weight, float(norm_eps), in_proj_weight, out_proj_weight, int(dt_rank),
                                  int(d_state), float(scale), recompute, *weights)
