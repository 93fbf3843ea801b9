"""The Triton selective scan: forward and backward kernels for CUDA tensors (and CPU tensors under
``TRITON_INTERPRET=1``), with the semantics of :mod:`videomap.ops.scan_reference`.

Layout of the work: one program per (batch, block of ``BLOCK_E`` channels); the ``N`` states of its channels
live in registers as a ``[BLOCK_E, N]`` tile and the loop over ``L`` runs sequentially inside the program.
A block never straddles a B/C group, so each step reads one ``N``-vector of ``B`` and of ``C`` for the whole
block, and the backward's reduction of ``dB``/``dC`` over the channels of a group is one ``tl.sum`` per step
plus a deterministic sum over blocks in torch (no atomics).

Memory: the forward stores the state only every ``chunk`` steps (``(B, L / chunk, E, N)``, O(B·E·L) for
``N <= chunk``); the backward walks the chunks from last to first, recomputes each chunk's states from its
checkpoint into a per-program scratch tile (``chunk × BLOCK_E × N``, it stays in cache) and runs the adjoint
recurrence backwards in time. All state and accumulation is in fp32 (fp64 for fp64 inputs); inputs are read
and outputs written in their own dtypes, so bf16/fp16 tensors are never copied to fp32.

This module imports triton at import time; :mod:`videomap.ops.backend` imports it only when the ``triton``
backend is chosen.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .scan_checks import compute_dtype

DEFAULT_CHUNK = 64


@triton.jit
def _softplus(x):
    # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)); log(1 + y) rounds a tiny y away, so its series is
    # used there (triton.language has no log1p).
    y = tl.exp(-tl.abs(x))
    log1p_y = tl.where(y < 1e-4, y * (1.0 - 0.5 * y), tl.log(1.0 + y))
    return tl.maximum(x, 0.0) + log1p_y


@triton.jit
def _channel_block(pid, N, seg_size, blocks_per_seg, b_group_size, c_group_size,
                   BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
    """The channels of program ``pid`` and their masks, shared by the forward and backward kernels: channel
    indices ``e`` ``[BLOCK_E]``, the B and C groups they read, state indices ``n`` ``[BLOCK_N]``, the masks, and
    the flat ``(E, N)`` offsets ``tile`` ``[BLOCK_E, BLOCK_N]`` of their states."""
    seg = pid // blocks_per_seg
    local = (pid % blocks_per_seg) * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = local < seg_size
    e = seg * seg_size + local
    gB = (seg * seg_size) // b_group_size
    gC = (seg * seg_size) // c_group_size
    n = tl.arange(0, BLOCK_N)
    mask_n = n < N
    mask = mask_e[:, None] & mask_n[None, :]
    tile = e[:, None] * N + n[None, :]
    return e, mask_e, gB, gC, n, mask_n, mask, tile


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, out_ptr, last_ptr, ckpt_ptr,
    L, E, N, seg_size, blocks_per_seg, b_group_size, c_group_size,
    s_ub, s_ue, s_ul, s_db, s_de, s_dl, s_ae, s_an,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    s_zb, s_ze, s_zl, s_ob, s_oe, s_ol, s_hb, s_he, s_hn, s_kb, s_kc,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, REVERSE: tl.constexpr, SAVE: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One (batch, channel block): out ``(B, E, L)``, last ``(B, E, N)``, ckpt ``(B, L / CHUNK, E, N)``."""
    DT = last_ptr.dtype.element_ty
    pid_b = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    e, mask_e, gB, gC, n, mask_n, mask, tile = _channel_block(
        pid, N, seg_size, blocks_per_seg, b_group_size, c_group_size, BLOCK_E, BLOCK_N)

    A = tl.load(A_ptr + e[:, None] * s_ae + n[None, :] * s_an, mask=mask, other=0.0).to(DT)
    if HAS_D:
        Dv = tl.load(D_ptr + e, mask=mask_e, other=0.0).to(DT)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + e, mask=mask_e, other=0.0).to(DT)
    h = tl.zeros([BLOCK_E, BLOCK_N], dtype=DT)
    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * s_hb + e[:, None] * s_he + n[None, :] * s_hn, mask=mask, other=0.0).to(DT)

    u_row = u_ptr + pid_b * s_ub + e * s_ue
    d_row = delta_ptr + pid_b * s_db + e * s_de
    z_row = z_ptr + pid_b * s_zb + e * s_ze
    o_row = out_ptr + pid_b * s_ob + e * s_oe
    B_col = B_ptr + pid_b * s_Bb + gB * s_Bg + n * s_Bn
    C_col = C_ptr + pid_b * s_Cb + gC * s_Cg + n * s_Cn
    for s in range(L):
        if REVERSE:
            t = L - 1 - s
        else:
            t = s
        if SAVE:
            if s % CHUNK == 0:
                tl.store(ckpt_ptr + pid_b * s_kb + (s // CHUNK) * s_kc + tile, h, mask=mask)
        ut = tl.load(u_row + t * s_ul, mask=mask_e, other=0.0).to(DT)
        dt = tl.load(d_row + t * s_dl, mask=mask_e, other=0.0).to(DT)
        if HAS_BIAS:
            dt = dt + bias
        if SOFTPLUS:
            dt = _softplus(dt)
        Bt = tl.load(B_col + t * s_Bl, mask=mask_n, other=0.0).to(DT)
        Ct = tl.load(C_col + t * s_Cl, mask=mask_n, other=0.0).to(DT)
        h = tl.exp(dt[:, None] * A) * h + (dt * ut)[:, None] * Bt[None, :]
        y = tl.sum(h * Ct[None, :], axis=1)
        if HAS_D:
            y = y + Dv * ut
        if HAS_Z:
            zt = tl.load(z_row + t * s_zl, mask=mask_e, other=0.0).to(DT)
            y = y * zt * tl.sigmoid(zt)
        tl.store(o_row + t * s_ol, y, mask=mask_e)
    tl.store(last_ptr + pid_b * E * N + tile, h, mask=mask)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, gout_ptr, glast_ptr, scratch_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    L, E, N, seg_size, blocks_per_seg, b_group_size, c_group_size,
    s_ub, s_ue, s_ul, s_db, s_de, s_dl, s_ae, s_an,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    s_zb, s_ze, s_zl, s_gb, s_ge, s_gl, s_kb, s_kc,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_GLAST: tl.constexpr, REVERSE: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Adjoint of :func:`_scan_fwd_kernel` for one (batch, channel block).

    Writes du, ddelta, dz ``(B, E, L)`` and dh0 ``(B, E, N)`` directly, and per-program partial sums that
    torch reduces: dA ``(B, E, N)`` and dD, dbias ``(B, E)`` over the batch, dB, dC ``(B, programs, N, L)``
    over the blocks of a group.
    """
    DT = ckpt_ptr.dtype.element_ty
    pid_b = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    programs = tl.num_programs(1)
    rows = tl.arange(0, BLOCK_E)
    e, mask_e, gB, gC, n, mask_n, mask, tile = _channel_block(
        pid, N, seg_size, blocks_per_seg, b_group_size, c_group_size, BLOCK_E, BLOCK_N)

    A = tl.load(A_ptr + e[:, None] * s_ae + n[None, :] * s_an, mask=mask, other=0.0).to(DT)
    if HAS_D:
        Dv = tl.load(D_ptr + e, mask=mask_e, other=0.0).to(DT)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + e, mask=mask_e, other=0.0).to(DT)
    gh = tl.zeros([BLOCK_E, BLOCK_N], dtype=DT)  # dLoss/dh_t, carried backwards in time
    if HAS_GLAST:
        gh = tl.load(glast_ptr + pid_b * E * N + tile, mask=mask, other=0.0).to(DT)
    dA_acc = tl.zeros([BLOCK_E, BLOCK_N], dtype=DT)
    dD_acc = tl.zeros([BLOCK_E], dtype=DT)
    dbias_acc = tl.zeros([BLOCK_E], dtype=DT)

    u_row = u_ptr + pid_b * s_ub + e * s_ue
    d_row = delta_ptr + pid_b * s_db + e * s_de
    z_row = z_ptr + pid_b * s_zb + e * s_ze
    g_row = gout_ptr + pid_b * s_gb + e * s_ge
    # du, ddelta, dz are contiguous (B, E, L); dB, dC partials are contiguous (B, programs, N, L).
    du_row = du_ptr + (pid_b * E + e) * L
    dd_row = ddelta_ptr + (pid_b * E + e) * L
    dz_row = dz_ptr + (pid_b * E + e) * L
    part = (pid_b * programs + pid) * N * L + n * L
    B_col = B_ptr + pid_b * s_Bb + gB * s_Bg + n * s_Bn
    C_col = C_ptr + pid_b * s_Cb + gC * s_Cg + n * s_Cn
    scratch = scratch_ptr + (pid_b * programs + pid) * (CHUNK * BLOCK_E * BLOCK_N) \
        + rows[:, None] * BLOCK_N + n[None, :]

    n_chunks = tl.cdiv(L, CHUNK)
    for k in range(n_chunks):
        c = n_chunks - 1 - k
        # Recompute the states before every step of chunk c from its checkpoint.
        h = tl.load(ckpt_ptr + pid_b * s_kb + c * s_kc + tile, mask=mask, other=0.0)
        for i in range(CHUNK):
            s = c * CHUNK + i
            if s < L:
                if REVERSE:
                    t = L - 1 - s
                else:
                    t = s
                tl.store(scratch + i * (BLOCK_E * BLOCK_N), h)
                ut = tl.load(u_row + t * s_ul, mask=mask_e, other=0.0).to(DT)
                dt = tl.load(d_row + t * s_dl, mask=mask_e, other=0.0).to(DT)
                if HAS_BIAS:
                    dt = dt + bias
                if SOFTPLUS:
                    dt = _softplus(dt)
                Bt = tl.load(B_col + t * s_Bl, mask=mask_n, other=0.0).to(DT)
                h = tl.exp(dt[:, None] * A) * h + (dt * ut)[:, None] * Bt[None, :]
        # Each thread reads back states other threads may have written.
        tl.debug_barrier()
        for i in range(CHUNK):
            s = c * CHUNK + (CHUNK - 1 - i)
            if s < L:
                if REVERSE:
                    t = L - 1 - s
                else:
                    t = s
                h_prev = tl.load(scratch + (CHUNK - 1 - i) * (BLOCK_E * BLOCK_N))
                ut = tl.load(u_row + t * s_ul, mask=mask_e, other=0.0).to(DT)
                dt_raw = tl.load(d_row + t * s_dl, mask=mask_e, other=0.0).to(DT)
                if HAS_BIAS:
                    dt_raw = dt_raw + bias
                if SOFTPLUS:
                    dt = _softplus(dt_raw)
                else:
                    dt = dt_raw
                Bt = tl.load(B_col + t * s_Bl, mask=mask_n, other=0.0).to(DT)
                Ct = tl.load(C_col + t * s_Cl, mask=mask_n, other=0.0).to(DT)
                decay = tl.exp(dt[:, None] * A)
                h = decay * h_prev + (dt * ut)[:, None] * Bt[None, :]
                g = tl.load(g_row + t * s_gl, mask=mask_e, other=0.0).to(DT)
                if HAS_Z:
                    zt = tl.load(z_row + t * s_zl, mask=mask_e, other=0.0).to(DT)
                    sig = tl.sigmoid(zt)
                    y = tl.sum(h * Ct[None, :], axis=1)
                    if HAS_D:
                        y = y + Dv * ut
                    tl.store(dz_row + t, g * y * sig * (1.0 + zt * (1.0 - sig)), mask=mask_e)
                    dy = g * zt * sig
                else:
                    dy = g
                if HAS_D:
                    dD_acc += dy * ut
                    du = dy * Dv
                else:
                    du = tl.zeros([BLOCK_E], dtype=DT)
                tl.store(dC_ptr + part + t, tl.sum(dy[:, None] * h, axis=0), mask=mask_n)
                gh += dy[:, None] * Ct[None, :]
                ghB = tl.sum(gh * Bt[None, :], axis=1)
                tl.store(dB_ptr + part + t, tl.sum(gh * (dt * ut)[:, None], axis=0), mask=mask_n)
                gdecay = gh * h_prev * decay
                ddt = ut * ghB + tl.sum(gdecay * A, axis=1)
                dA_acc += gdecay * dt[:, None]
                if SOFTPLUS:
                    ddt = ddt * tl.sigmoid(dt_raw)
                if HAS_BIAS:
                    dbias_acc += ddt
                tl.store(du_row + t, du + dt * ghB, mask=mask_e)
                tl.store(dd_row + t, ddt, mask=mask_e)
                gh = gh * decay
        # The next chunk's recompute overwrites the scratch tile.
        tl.debug_barrier()
    tl.store(dh0_ptr + pid_b * E * N + tile, gh, mask=mask)
    tl.store(dA_ptr + pid_b * E * N + tile, dA_acc, mask=mask)
    if HAS_D:
        tl.store(dD_ptr + pid_b * E + e, dD_acc, mask=mask_e)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * E + e, dbias_acc, mask=mask_e)


def _next_pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def _launch_shape(batch: int, channels: int, seg_size: int, device: torch.device,
                  block_e: int | None, narrowest: int = 4) -> tuple[int, int]:
    """``(BLOCK_E, blocks per segment)``: blocks as wide as 32 channels, narrowed on a GPU (down to
    ``narrowest``) until there are enough programs to fill it (the loop over L is sequential, so parallelism
    comes only from here)."""
    if block_e is None:
        block_e = min(32, _next_pow2(seg_size))
        if device.type == "cuda":
            target = 2 * torch.cuda.get_device_properties(device).multi_processor_count
            segments = channels // seg_size
            while block_e > narrowest and batch * segments * triton.cdiv(seg_size, block_e) < target:
                block_e //= 2
    block_e = max(2, _next_pow2(block_e))
    return block_e, triton.cdiv(seg_size, block_e)


def _num_warps(block_e: int, block_n: int) -> int:
    return max(1, min(4, block_e * block_n // 128))


def _grouped_view(BC: torch.Tensor, batch: int, channels: int, length: int) -> torch.Tensor:
    """B or C as a ``(B, G, N, L)`` view without copies: ``(B, N, L)`` is one group, a constant ``(E, N)`` is
    one group per channel broadcast over batch and time (stride 0)."""
    if BC.dim() == 2:
        return BC[None, :, :, None].expand(batch, channels, BC.shape[1], length)
    if BC.dim() == 3:
        return BC[:, None]
    return BC


def scan_forward_triton(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse, chunk=DEFAULT_CHUNK,
                        block_e=None, keep_checkpoints=False):
    """Launch the forward kernel. B, C as ``(B, G, N, L)`` views. Returns ``out (B, E, L)``, ``last (B, E, N)``
    and what :func:`scan_backward_triton` needs besides the inputs: the checkpoints and the launch
    configuration (``(None, None)`` unless ``keep_checkpoints``)."""
    batch, channels, length = u.shape
    state = A.shape[1]
    dt = compute_dtype(u.dtype)
    # Programs are aligned to segments that lie inside one B group and one C group.
    b_group, c_group = channels // B.shape[1], channels // C.shape[1]
    seg_size = math.gcd(b_group, c_group)
    block_e, blocks_per_seg = _launch_shape(batch, channels, seg_size, u.device, block_e)
    block_n = max(2, _next_pow2(state))
    n_chunks = triton.cdiv(length, chunk)
    out = torch.empty((batch, channels, length), device=u.device, dtype=u.dtype)
    last = torch.empty((batch, channels, state), device=u.device, dtype=dt)
    ckpt = torch.empty((batch, n_chunks if keep_checkpoints else 1, channels, state), device=u.device, dtype=dt)
    grid = (batch, (channels // seg_size) * blocks_per_seg)
    h0 = initial_state if initial_state is not None else last
    _scan_fwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
        delta_bias if delta_bias is not None else u, h0, out, last, ckpt,
        length, channels, state, seg_size, blocks_per_seg, b_group, c_group,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(),
        *(z.stride() if z is not None else u.stride()), *out.stride(), *h0.stride(),
        ckpt.stride(0), ckpt.stride(1),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), HAS_H0=initial_state is not None, REVERSE=bool(reverse),
        SAVE=bool(keep_checkpoints), CHUNK=chunk, BLOCK_E=block_e, BLOCK_N=block_n,
        num_warps=_num_warps(block_e, block_n),
    )
    if not keep_checkpoints:
        return out, last, (None, None)
    # The checkpoints are per channel, so the backward may block the channels differently: not narrower
    # than 8 by default, because its dB/dC partials take one (B, N, L) row per block.
    block_e_bwd, blocks_bwd = _launch_shape(batch, channels, seg_size, u.device, block_e, narrowest=8)
    config = (bool(delta_softplus), bool(reverse), chunk, block_e_bwd, blocks_bwd, seg_size, block_n)
    return out, last, (ckpt, config)


def scan_backward_triton(u, delta, A, B, C, D, z, delta_bias, initial_state, saved, grad_out, grad_last=None):
    """Launch the backward kernel for a :func:`scan_forward_triton` call with these inputs and ``saved`` =
    its ``(checkpoints, config)``. Returns ``du, ddelta, dA, dB, dC, dD, dz, dbias, dinit``: dA, dD, dbias
    summed over the batch, dB and dC per group ``(B, G, N, L)``, all in the inputs' dtypes; None where an
    input is None."""
    ckpt, config = saved
    softplus, reverse, chunk, block_e, blocks_per_seg, seg_size, block_n = config
    batch, channels, length = u.shape
    state = A.shape[1]
    dt = ckpt.dtype
    dev = u.device
    if grad_out is None:
        grad_out = torch.zeros_like(u)
    programs = (channels // seg_size) * blocks_per_seg
    b_group, c_group = channels // B.shape[1], channels // C.shape[1]
    du = torch.empty((batch, channels, length), device=dev, dtype=u.dtype)
    ddelta = torch.empty((batch, channels, length), device=dev, dtype=delta.dtype)
    dz = torch.empty((batch, channels, length), device=dev, dtype=z.dtype) if z is not None else du
    dA = torch.empty((batch, channels, state), device=dev, dtype=dt)
    dB = torch.empty((batch, programs, state, length), device=dev, dtype=dt)
    dC = torch.empty((batch, programs, state, length), device=dev, dtype=dt)
    dD = torch.empty((batch, channels), device=dev, dtype=dt) if D is not None else dA
    dbias = torch.empty((batch, channels), device=dev, dtype=dt) if delta_bias is not None else dA
    dh0 = torch.empty((batch, channels, state), device=dev, dtype=dt)
    scratch = torch.empty((batch, programs, chunk, block_e, block_n), device=dev, dtype=dt)
    _scan_bwd_kernel[(batch, programs)](
        u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
        delta_bias if delta_bias is not None else u, ckpt, grad_out,
        grad_last.contiguous() if grad_last is not None else dA, scratch,
        du, ddelta, dz, dA, dB, dC, dD, dbias, dh0,
        length, channels, state, seg_size, blocks_per_seg, b_group, c_group,
        *u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(),
        *(z.stride() if z is not None else u.stride()), *grad_out.stride(), ckpt.stride(0), ckpt.stride(1),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
        HAS_GLAST=grad_last is not None, REVERSE=reverse, CHUNK=chunk, BLOCK_E=block_e, BLOCK_N=block_n,
        num_warps=_num_warps(block_e, block_n),
    )

    def per_group(partial: torch.Tensor, groups: int) -> torch.Tensor:
        # (B, programs, N, L) -> (B, G, N, L): sum the blocks of each group, in a fixed order.
        return partial.view(batch, groups, programs // groups, state, length).sum(2)

    return (
        du,
        ddelta,
        dA.sum(0).to(A.dtype),
        per_group(dB, B.shape[1]).to(B.dtype),
        per_group(dC, C.shape[1]).to(C.dtype),
        dD.sum(0).to(D.dtype) if D is not None else None,
        dz if z is not None else None,
        dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
        dh0.to(initial_state.dtype) if initial_state is not None else None,
    )


class _SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse, chunk, block_e,
                needs_grad):
        out, last, (ckpt, config) = scan_forward_triton(u, delta, A, B, C, D, z, delta_bias, initial_state,
                                                        delta_softplus, reverse, chunk, block_e, needs_grad)
        if needs_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, ckpt)
            ctx.config = config
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_last):
        u, delta, A, B, C, D, z, delta_bias, initial_state, ckpt = ctx.saved_tensors
        grads = scan_backward_triton(u, delta, A, B, C, D, z, delta_bias, initial_state, (ckpt, ctx.config),
                                     grad_out, grad_last)
        need = ctx.needs_input_grad
        return (*(g if wanted else None for g, wanted in zip(grads, need)), None, None, None, None, None)


def selective_scan_triton(
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
    chunk: int = DEFAULT_CHUNK,
    block_e: int | None = None,
):
    """Triton selective scan with the contract of :func:`videomap.ops.selective_scan` (arguments already
    validated), differentiable in every tensor input and in the returned last state.

    Args:
        u, delta, z: ``(B, E, L)``. A: ``(E, N)``. B, C: ``(B, N, L)``, ``(B, G, N, L)`` or ``(E, N)``.
        D, delta_bias: ``(E,)``. initial_state: ``(B, E, N)``. Any strides, any float dtypes (mixed allowed).
        chunk: steps between the forward's saved states (the backward recomputes one chunk at a time).
        block_e: channels per program (a power of two; default chosen from the shape and the GPU).

    Returns:
        ``out (B, E, L)`` in ``u.dtype`` [and ``last_state (B, E, N)`` in fp32, fp64 for fp64 inputs].
    """
    batch, channels, length = u.shape
    inputs = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    out, last = _SelectiveScanTriton.apply(
        u, delta, A, _grouped_view(B, batch, channels, length), _grouped_view(C, batch, channels, length),
        D, z, delta_bias, initial_state, delta_softplus, reverse, int(chunk), block_e, needs_grad,
    )
    return (out, last) if return_last_state else out


__all__ = ["DEFAULT_CHUNK", "scan_backward_triton", "scan_forward_triton", "selective_scan_triton"]
