"""The bidirectional Mamba mixer (DESIGN §2.6; Vision Mamba's "v2" form, as in VideoMamba and MAP)."""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from ..ops import resolve_backend, selective_scan_accumulate
from ..ops.causal_conv import causal_conv1d, causal_conv1d_channels_last
from ..ops.matmul import autocast_dtype, channels_first_matmul, linear
from ..ops.scan_cpu import selective_scan_channels_last
from .norm import RMSNorm
from .weight_init import init_dt_proj_, s4d_real_A_log

MERGE_MODES = ("mean", "sum")

FUSED_ENV_VAR = "VIDEOMAP_FUSED_MAMBA"
#: ``$VIDEOMAP_FUSED_MAMBA`` values: the fused training layer saving ``xz`` (the default), the fused layer that
#: also recomputes ``in_proj`` (the least memory), the unfused reference.
FUSED_MODES = {"1": "xz", "xz": "xz", "input": "input", "0": None}


def fused_mamba_mode() -> str | None:
    """What ``$VIDEOMAP_FUSED_MAMBA`` asks for: ``"xz"`` (unset, ``1`` or ``xz``), ``"input"``, or ``None``
    for the unfused layer (``0``). Read on every training forward, so it can be changed between steps."""
    value = os.environ.get(FUSED_ENV_VAR, "").strip().lower() or "1"
    if value not in FUSED_MODES:
        raise ValueError(f"${FUSED_ENV_VAR}={value!r}: choose one of {', '.join(FUSED_MODES)}")
    return FUSED_MODES[value]


INFERENCE_ENV_VAR = "VIDEOMAP_MAMBA_INFERENCE"
#: ``$VIDEOMAP_MAMBA_INFERENCE`` values: the layouts the layer can run inference in on the CPU kernels.
INFERENCE_LAYOUTS = ("channels_last", "channels_first")


def inference_layout() -> str:
    """What ``$VIDEOMAP_MAMBA_INFERENCE`` asks for: ``"channels_last"`` (unset; the default) or
    ``"channels_first"`` (the training layer's layout, kept for comparison). Read on every inference forward."""
    value = os.environ.get(INFERENCE_ENV_VAR, "").strip().lower() or "channels_last"
    if value not in INFERENCE_LAYOUTS:
        raise ValueError(f"${INFERENCE_ENV_VAR}={value!r}: choose one of {', '.join(INFERENCE_LAYOUTS)}")
    return value


def _state_dtype(t: torch.Tensor) -> torch.Tensor:
    """A per-channel parameter in the scan's state dtype: fp32, or fp64 for an fp64 layer."""
    return t if t.dtype == torch.float64 else t.float()


class BiMamba(nn.Module):
    """Selective-state-space mixer run over the sequence in both directions.

    ``in_proj`` (D → 2E) gives ``x, z``. Each direction has its own causal ``conv1d`` (kernel ``d_conv``),
    ``x_proj`` (E → dt_rank + 2N), ``dt_proj`` (dt_rank → E), ``A_log`` (E, N) and ``D`` (E); the backward
    direction (``*_b`` parameters) computes what its forward counterpart would on the flipped sequence,
    flipped back; the conv and the scan run from the last position to the first (``reverse=True``), so no
    flipped copies are made on the CPU. The two gated outputs are merged by ``mean`` or ``sum`` and projected
    by ``out_proj`` (E → D). The merge is part of the scans: the first writes ``scale * y`` and the second adds
    ``scale * y_b`` into the same buffer (``scale`` 0.5 for ``mean``), which in fp32 gives the same bits as
    ``(y + y_b) * 0.5``.

    Parameter names and shapes are those of VideoMamba's ``Mamba(bimamba=True)``, so its checkpoints load;
    ``merge="sum"`` reproduces it exactly.

    In training the layer (with the RMSNorm in front of it, passed as ``norm``) runs as one fused autograd
    node (:mod:`videomap.ops.bimamba_fused`) that saves the input, ``xz`` and the scan checkpoints and
    recomputes the rest in the backward: the same gradients for about a third of the memory. It is used with
    the ``cpu`` and ``triton`` scan backends in fp32/fp64 without autocast. ``$VIDEOMAP_FUSED_MAMBA`` (or the
    ``fused`` attribute, which wins when set) picks it: ``xz`` (default), ``input`` (also recompute
    ``in_proj``; keeps only the layer input) or ``0`` (the unfused layer, the reference). Inference (no grad)
    never takes it (there is nothing to save); autocast and the other backends take the unfused layer.

    Inference on the CPU kernels (no autograd, fp32 or bf16) keeps every tensor position-major, as
    ``F.linear`` makes them: ``in_proj``'s ``(B, L, 2E)`` output is read in place by the convs and the scans
    (:func:`~videomap.ops.scan_cpu.selective_scan_channels_last`), ``x_proj``'s ``B`` and ``C`` are slices of
    its output, and ``out_proj`` returns ``(B, L, D)`` directly; no layout is transposed anywhere.
    ``$VIDEOMAP_MAMBA_INFERENCE=channels_first`` (or the ``inference`` attribute) keeps the training layout
    at inference instead.
    """

    #: ``None`` follows ``$VIDEOMAP_FUSED_MAMBA``; ``"xz"``, ``"input"`` or ``"off"`` overrides it.
    fused: str | None = None
    #: ``None`` follows ``$VIDEOMAP_MAMBA_INFERENCE``; ``"channels_last"`` or ``"channels_first"`` overrides it.
    inference: str | None = None

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        merge: str = "mean",
    ):
        super().__init__()
        if merge not in MERGE_MODES:
            raise ValueError(f"BiMamba: merge must be one of {MERGE_MODES}, got {merge!r}")
        self.dim = dim
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = int(expand * dim)
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.merge = merge
        inner, rank = self.d_inner, self.dt_rank

        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        # Forward direction.
        self.conv1d = self._make_conv()
        self.x_proj = nn.Linear(inner, rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(rank, inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(inner, d_state))
        self.D = nn.Parameter(torch.empty(inner))
        # Backward direction.
        self.conv1d_b = self._make_conv()
        self.x_proj_b = nn.Linear(inner, rank + 2 * d_state, bias=False)
        self.dt_proj_b = nn.Linear(rank, inner, bias=True)
        self.A_b_log = nn.Parameter(torch.empty(inner, d_state))
        self.D_b = nn.Parameter(torch.empty(inner))

        self.out_proj = nn.Linear(inner, dim, bias=False)
        self.reset_ssm_parameters()

    def _make_conv(self) -> nn.Conv1d:
        # Only the weight (E, 1, K) and bias (E,) are used, through ops.causal_conv1d; the module keeps
        # the checkpoint layout.
        return nn.Conv1d(self.d_inner, self.d_inner, self.d_conv, groups=self.d_inner, padding=self.d_conv - 1)

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba's dt init, S4D-real ``A`` and ``D = 1``, for both directions."""
        for dt_proj in (self.dt_proj, self.dt_proj_b):
            init_dt_proj_(dt_proj)
        for a_log in (self.A_log, self.A_b_log):
            a_log.copy_(s4d_real_A_log(self.d_inner, self.d_state, device=a_log.device))
        for d in (self.D, self.D_b):
            nn.init.ones_(d)

    def _scan_direction(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        conv: nn.Conv1d,
        x_proj: nn.Linear,
        dt_proj: nn.Linear,
        A_log: torch.Tensor,
        D: torch.Tensor,
        reverse: bool = False,
        acc: torch.Tensor | None = None,
        scale: float = 1.0,
    ) -> torch.Tensor:
        """One direction. x, z: ``(B, E, L)`` → ``acc + scale * y`` for the gated output ``y (B, E, L)``
        (``scale * y`` when ``acc`` is None; ``acc`` is updated in place), all in sequence order.

        ``reverse`` runs the conv and the scan from the last position to the first, which is the forward
        direction applied to the flipped sequence and flipped back (the x and dt projections act per position,
        so they commute with the flip); the CPU kernels do it without flipped copies.
        """
        x = causal_conv1d(x, conv.weight.squeeze(1), conv.bias, activation="silu", reverse=reverse)
        # The projections stay in the channels-first (B, C, L) layout of the conv and the scan, as
        # (C_out, C_in) @ (B, C_in, L) products: no (B, E, L) transpose is copied, and B and C come out as
        # (B, N, L) slices.
        x_dbl = channels_first_matmul(x_proj.weight, x)  # (B, R + 2N, L)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
        # dt_proj's bias is applied inside the scan (delta_bias), before the softplus, as in Mamba.
        delta = channels_first_matmul(dt_proj.weight, dt)  # (B, E, L)
        A = -torch.exp(_state_dtype(A_log))
        return selective_scan_accumulate(
            acc,
            x,
            delta,
            A,
            B,
            C,
            _state_dtype(D),
            z=z,
            delta_bias=_state_dtype(dt_proj.bias),
            delta_softplus=True,
            scale=scale,
            reverse=reverse,
        )

    def _channels_last_inference(self, hidden_states: torch.Tensor) -> bool:
        """Whether this call takes the channels-last inference path: no autograd, CPU tensors whose products run
        in fp32 or bf16 (their own dtype or CPU autocast's), and the CPU kernels selected for the scan."""
        if torch.is_grad_enabled() or hidden_states.device.type != "cpu" or hidden_states.dtype == torch.float64:
            return False
        if self.inference is not None and self.inference not in INFERENCE_LAYOUTS:
            raise ValueError(f"BiMamba.inference must be None or one of {INFERENCE_LAYOUTS}, got {self.inference!r}")
        if (self.inference or inference_layout()) != "channels_last":
            return False
        dtype = autocast_dtype() or hidden_states.dtype
        return dtype in (torch.float32, torch.bfloat16) and resolve_backend(hidden_states.device, dtype) == "cpu"

    def _forward_channels_last(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, L, D)`` → ``(B, L, D)`` with every intermediate ``(B, L, channels)``; see the class docstring."""
        xz = linear(hidden_states, self.in_proj.weight)  # (B, L, 2E)
        x, z = xz[..., : self.d_inner], xz[..., self.d_inner:]  # read in place: channels are contiguous
        scale = 0.5 if self.merge == "mean" else 1.0
        y = None
        for conv, x_proj, dt_proj, A_log, D, reverse in (
            (self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D, False),
            (self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b, True),
        ):
            u = causal_conv1d_channels_last(x, conv.weight.squeeze(1), conv.bias, "silu", reverse)
            x_dbl = linear(u, x_proj.weight)  # (B, L, R + 2N)
            dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
            delta = linear(dt, dt_proj.weight)  # (B, L, E); dt_proj's bias is applied in the scan
            # the first direction writes scale * y, the second adds its own into the same buffer
            y = selective_scan_channels_last(
                u, delta, -torch.exp(_state_dtype(A_log)), B, C, _state_dtype(D), z, _state_dtype(dt_proj.bias),
                True, reverse=reverse, out=y, scale=scale, accumulate=y is not None,
            )
        return linear(y, self.out_proj.weight)

    def _fused_path(self, hidden_states: torch.Tensor) -> tuple[str, str] | None:
        """``(recompute mode, scan backend)`` when this call takes the fused layer, else ``None``."""
        if not torch.is_grad_enabled() or hidden_states.dtype not in (torch.float32, torch.float64):
            return None
        device = hidden_states.device
        if torch.is_autocast_enabled(device.type):
            return None
        mode = fused_mamba_mode() if self.fused is None else (None if self.fused == "off" else self.fused)
        if mode is None:
            return None
        from ..ops.bimamba_fused import SCAN_STEPS

        backend = resolve_backend(device, hidden_states.dtype)
        return (mode, backend) if backend in SCAN_STEPS else None

    def _direction_weights(self, conv, x_proj, dt_proj, A_log, D):
        from ..ops.bimamba_fused import DirectionWeights

        return DirectionWeights(conv.weight.squeeze(1), conv.bias, x_proj.weight, dt_proj.weight, dt_proj.bias,
                                A_log, D)

    def _forward_fused(self, hidden_states: torch.Tensor, mode: str, backend: str,
                       norm: nn.Module | None) -> torch.Tensor:
        from ..ops.bimamba_fused import bimamba_inner

        out = bimamba_inner(
            hidden_states, self.in_proj.weight, self.out_proj.weight,
            self._direction_weights(self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D),
            self._direction_weights(self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b),
            dt_rank=self.dt_rank, d_state=self.d_state, scale=0.5 if self.merge == "mean" else 1.0,
            norm_weight=None if norm is None else norm.weight, norm_eps=1e-5 if norm is None else norm.eps,
            recompute=mode, backend=backend,
        )
        return out.transpose(1, 2)

    def forward(self, hidden_states: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        """hidden_states: ``(B, L, D)`` → ``(B, L, D)``.

        ``norm``: an :class:`~videomap.layers.RMSNorm` to apply to ``hidden_states`` first. Passing it here
        rather than calling it before lets the fused training path recompute its output in the backward
        instead of keeping it.
        """
        path = self._fused_path(hidden_states)
        if path is not None and (norm is None or isinstance(norm, RMSNorm)):
            return self._forward_fused(hidden_states, *path, norm)
        if norm is not None:
            hidden_states = norm(hidden_states)
        if self._channels_last_inference(hidden_states):
            return self._forward_channels_last(hidden_states)
        # (E2, D) @ (B, D, L) lands directly in the (B, 2E, L) layout the conv and the scan want.
        xz = channels_first_matmul(self.in_proj.weight, hidden_states.transpose(1, 2))
        x, z = xz.chunk(2, dim=1)
        if x.shape[0] > 1:  # the halves are strided then: copy them once rather than in each direction's ops
            x, z = x.contiguous(), z.contiguous()
        scale = 0.5 if self.merge == "mean" else 1.0
        y = self._scan_direction(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D, scale=scale)
        y = self._scan_direction(
            x, z, self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b, reverse=True, acc=y,
            scale=scale,
        )
        # out_proj as (D, E) @ (E, L) per sample: reading y channels-first in place, where F.linear on the
        # (B, L, E) view would first copy it; the result is returned as a (B, L, D) view.
        return channels_first_matmul(self.out_proj.weight, y).transpose(1, 2)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
            f"dt_rank={self.dt_rank}, merge={self.merge!r}"
        )
