"""The fused bidirectional Mamba layer for training: one autograd node that keeps only what its backward needs.

The unfused layer (:class:`videomap.layers.BiMamba` with ``VIDEOMAP_FUSED_MAMBA=0``) leaves autograd to save
every intermediate of both directions: the norm's output, conv outputs before and after SiLU, the x/dt
projections, the deltas, the scans' inputs and outputs, the merge. That is about 20 ``(B, L, D)``-sized
tensors per layer, most of a hybrid model's training memory. This function computes the same layer from its
input (before the RMSNorm in front of it) to the output of ``out_proj`` and saves only

* the input ``x (B, L, D)``,
* ``xz (B, 2E, L)``, the output of ``in_proj`` (``recompute="xz"``, the default; mamba_ssm's
  ``mamba_inner_fn`` keeps it too), and each direction's scan checkpoints ``(B, L / 64, E, N)`` (small);
  with ``recompute="input"`` neither: the backward runs the norm, ``in_proj`` and the scans' forward again,
* on the Triton backend also the merged output ``y (B, E, L)``, which ``out_proj``'s weight gradient needs
  (the CPU kernel's backward recomputes it on its way and hands it back).

The backward recomputes the cheap parts (norm, causal conv, SiLU, x and dt projections) of one direction at
a time, runs the scan kernel's backward on them, and lets autograd carry the gradients through the
recomputed parts. The recomputed values are the forward's (same kernels, same order), so the gradients are
those of the unfused layer. Backends: ``cpu`` (the C++ kernels) and ``triton`` (CUDA, or CPU tensors under
``TRITON_INTERPRET=1``); the causal conv takes whatever the conv table picks.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .backend import implementation
from .matmul import channels_first_matmul, matmul
from .rms_norm import rms_norm

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
    u = implementation("conv", x.device, x.dtype)(x, w.conv_weight, w.conv_bias, "silu", reverse)
    x_dbl = channels_first_matmul(w.x_proj_weight, u)  # (B, R + 2N, L)
    dt, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=1)
    delta = channels_first_matmul(w.dt_proj_weight, dt)  # (B, E, L)
    return u, delta, B[:, None].contiguous(), C[:, None].contiguous()


class ScanSteps(NamedTuple):
    """What the fused layer needs from a scan backend.

    forward(u, delta, A, B, C, D, z, bias, reverse, out, scale, keep) -> (out, saved): ``scale * y`` written to
        a new buffer (``out`` None) or added to ``out``; ``saved`` is what ``backward`` needs besides the inputs
        (a tuple whose tensors are the checkpoints; empty unless ``keep``).
    backward(u, delta, A, B, C, D, z, bias, saved, dy, reverse, scale) -> (du, ddelta, dA, dB, dC, dD, dz, dbias,
        y): dA, dD, dbias summed over the batch; ``y`` is the forward's gated output before ``scale``, or None
        when the backend does not recompute it (then the layer keeps ``y`` from its forward).
    """

    forward: Callable
    backward: Callable
    returns_output: bool


def _cpu_forward(u, delta, A, B, C, D, z, bias, reverse, out, scale, keep):
    from .scan_cpu import load_cpu_kernel

    result, _, checkpoints = load_cpu_kernel().fwd(u, delta, A, B, C, D, z, bias, None, True, keep, reverse, out,
                                                   float(scale), out is not None)
    return result, (checkpoints,)


def _cpu_backward(u, delta, A, B, C, D, z, bias, saved, dy, reverse, scale):
    from .scan_cpu import scan_backward_cpu

    du, ddelta, dA, dB, dC, dD, dz, dbias, _, y = scan_backward_cpu(
        u, delta, A, B, C, D, z, bias, saved[0], dy, None, delta_softplus=True, reverse=reverse, scale=scale,
        want_out=True)
    return du, ddelta, dA.sum(0), dB, dC, dD.sum(0), dz, dbias.sum(0), y


def _triton_forward(u, delta, A, B, C, D, z, bias, reverse, out, scale, keep):
    from .scan_triton import scan_forward_triton

    y, _, (checkpoints, config) = scan_forward_triton(u, delta, A, B, C, D, z, bias, None, True, reverse,
                                                      keep_checkpoints=keep)
    result = y.mul_(scale) if out is None else out.add_(y, alpha=scale)
    return result, ((checkpoints, config) if keep else ())


def _triton_backward(u, delta, A, B, C, D, z, bias, saved, dy, reverse, scale):
    from .scan_triton import scan_backward_triton

    grads = scan_backward_triton(u, delta, A, B, C, D, z, bias, None, saved, dy * scale if scale != 1.0 else dy)
    return (*grads[:8], None)


SCAN_STEPS = {"cpu": ScanSteps(_cpu_forward, _cpu_backward, True),
              "triton": ScanSteps(_triton_forward, _triton_backward, False)}


def _scan_forward(steps: ScanSteps, x, z, w: DirectionWeights, dt_rank, d_state, reverse, out, scale, keep):
    """One direction's ``scale * y`` written into (or, with ``out``, added to) a ``(B, E, L)`` buffer; returns
    the buffer and what the scan's backward needs."""
    u, delta, B, C = _cheap_part(x, w, dt_rank, d_state, reverse)
    return steps.forward(u, delta, -torch.exp(w.A_log), B, C, w.D, z, w.dt_proj_bias, reverse, out, scale, keep)


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


def _forward_y(steps: ScanSteps, xz, forward_w, backward_w, dt_rank, d_state, scale, keep):
    """The merged gated output ``y (B, E, L)`` of both directions and what their backward needs."""
    x, z = _halves(xz)
    y, saved_f = _scan_forward(steps, x, z, forward_w, dt_rank, d_state, False, None, scale, keep)
    y, saved_b = _scan_forward(steps, x, z, backward_w, dt_rank, d_state, True, y, scale, keep)
    return y, saved_f, saved_b


def _direction_backward(steps: ScanSteps, x, z, w: DirectionWeights, saved, dy, dt_rank, d_state, scale, reverse):
    """One direction's gradients from ``dy`` (the gradient of the merged output): ``dx, dz`` ``(B, E, L)``,
    the direction's parameter gradients (in :class:`DirectionWeights` order) and its output ``y`` (gated,
    before ``scale``; None if the backend does not give it back)."""
    leaves = [x.detach().requires_grad_()] + [t.detach().requires_grad_() for t in w[:4]]
    with torch.enable_grad():
        u, delta, B, C = _cheap_part(leaves[0], DirectionWeights(*leaves[1:], *w[4:]), dt_rank, d_state, reverse)
    A = -torch.exp(w.A_log)
    du, ddelta, dA, dB, dC, dD, dz, dbias, y = steps.backward(
        u.detach(), delta.detach(), A, B.detach(), C.detach(), w.D, z, w.dt_proj_bias, saved, dy, reverse, scale)
    dx, dconv_w, dconv_b, dx_proj, ddt_proj = torch.autograd.grad((u, delta, B, C), leaves, (du, ddelta, dB, dC))
    # A = -exp(A_log), so dA_log = dA * A.
    return dx, dz, [dconv_w, dconv_b, dx_proj, ddt_proj, dbias, dA * A, dD], y


class _BiMambaInner(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, norm_weight, eps, in_proj_weight, out_proj_weight, dt_rank, d_state, scale, recompute,
                backend, *weights):
        steps = SCAN_STEPS[backend]
        forward_w, backward_w = DirectionWeights(*weights[:7]), DirectionWeights(*weights[7:])
        xz = channels_first_matmul(in_proj_weight, _normed(x, norm_weight, eps).transpose(1, 2))
        keep = recompute == "xz"
        y, saved_f, saved_b = _forward_y(steps, xz, forward_w, backward_w, dt_rank, d_state, scale, keep)
        out = channels_first_matmul(out_proj_weight, y)  # (B, D, L)
        ctx.dims = (float(eps), dt_rank, d_state, float(scale), recompute, backend)
        if keep:
            # Each direction's saved tuple is (checkpoints, *plain Python values).
            ctx.extras = (saved_f[1:], saved_b[1:])
            kept_y = None if steps.returns_output else y
            ctx.save_for_backward(x, norm_weight, in_proj_weight, out_proj_weight, xz, saved_f[0], saved_b[0], kept_y,
                                  *weights)
        else:
            ctx.save_for_backward(x, norm_weight, in_proj_weight, out_proj_weight, None, None, None, None, *weights)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, norm_weight, in_proj_weight, out_proj_weight, xz, ckpt_f, ckpt_b, y, *weights = ctx.saved_tensors
        eps, dt_rank, d_state, scale, recompute, backend = ctx.dims
        steps = SCAN_STEPS[backend]
        forward_w, backward_w = DirectionWeights(*weights[:7]), DirectionWeights(*weights[7:])
        leaf_x = x.detach().requires_grad_()
        leaf_norm = None if norm_weight is None else norm_weight.detach().requires_grad_()
        with torch.enable_grad():
            normed = _normed(leaf_x, leaf_norm, eps)
        if xz is None:  # redo the forward, this time keeping what the scans' backward needs
            xz = channels_first_matmul(in_proj_weight, normed.detach().transpose(1, 2))
            y, saved_f, saved_b = _forward_y(steps, xz, forward_w, backward_w, dt_rank, d_state, scale, True)
            if steps.returns_output:
                y = None  # the scans' backward hands it back again; do not hold two copies meanwhile
        else:
            saved_f, saved_b = (ckpt_f, *ctx.extras[0]), (ckpt_b, *ctx.extras[1])
        grad_out = grad_out.to(xz.dtype)
        dy = channels_first_matmul(out_proj_weight.t(), grad_out)  # out = W_out @ y: dy = W_out^T g, (B, E, L)
        x_half, z_half = _halves(xz)
        dx_f, dz_f, grads_f, y_f = _direction_backward(steps, x_half, z_half, forward_w, saved_f, dy, dt_rank,
                                                       d_state, scale, False)
        dx_b, dz_b, grads_b, y_b = _direction_backward(steps, x_half, z_half, backward_w, saved_b, dy, dt_rank,
                                                       d_state, scale, True)
        del dy, x_half, z_half, saved_f, saved_b
        if y is None:  # the merge as the forward did it: scale * y, then + scale * y_b
            y = y_f.mul_(scale).add_(y_b, alpha=scale)
        del y_f, y_b
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
        return (d_x, d_norm, None, d_in_proj, d_out_proj, None, None, None, None, None, *grads_f, *grads_b)


def bimamba_inner(
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
    backend: str = "cpu",
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
        backend: the scan kernels, ``"cpu"`` or ``"triton"`` (:data:`SCAN_STEPS`).

    Returns:
        ``(B, D, L)``, channels first (a ``.transpose(1, 2)`` view is the usual layout). float32 or float64;
        differentiable in every tensor argument.
    """
    if recompute not in RECOMPUTE_MODES:
        raise ValueError(f"bimamba_inner: recompute must be one of {RECOMPUTE_MODES}, got {recompute!r}")
    if backend not in SCAN_STEPS:
        raise ValueError(f"bimamba_inner: no fused layer for the {backend!r} scan backend; use one of "
                         f"{sorted(SCAN_STEPS)}")
    weights = [t.contiguous() for t in (*forward_weights, *backward_weights)]
    return _BiMambaInner.apply(x, norm_weight, float(norm_eps), in_proj_weight, out_proj_weight, int(dt_rank),
                               int(d_state), float(scale), recompute, backend, *weights)
