"""The VideoMAP backbone: one class for every registered variant, driven by :class:`VideoMAPConfig`."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import (
    LAYER_TYPES,
    LayerScale,
    MambaLayer,
    PatchEmbed3d,
    RMSNorm,
    add_position_embeddings,
    resample_spatial_pos_embed,
    resample_temporal_pos_embed,
    trunc_normal_,
)
from ..ops.allocator import tune_cpu_allocator
from .config import GLOBAL_POOLS, VideoMAPConfig

EMBEDDING_PARAMS = ("cls_token", "pos_embed", "temporal_pos_embedding")
# Mamba keeps its state-space parameters out of weight decay; so do we.
SSM_NO_DECAY = ("A_log", "A_b_log", "D", "D_b")
OUTPUT_FORMATS = ("NLC", "NTLC")


class VideoMAP(nn.Module):
    """Hybrid bidirectional-Mamba / Transformer video backbone (DESIGN §2).

    Input ``x (B, C, T, H, W)``, normalised with ``config.mean/std``. The sequence is
    ``[cls, frame 0 tokens, frame 1 tokens, …]`` (``1 + T'·N`` tokens of width ``D``); layer ``i`` is a Mamba
    layer or a Transformer layer as ``config.schedule[i]`` says; a final RMSNorm (``norm_f``) and a linear
    ``head`` on the pooled token follow.

    Parameter names follow VideoMamba (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
    ``temporal_pos_embedding``, ``layers.{i}.norm/mixer``, ``norm_f``, ``head``), so the ``videomamba_*``
    variants load its checkpoints.
    """

    def __init__(self, config: VideoMAPConfig | None = None, **overrides):
        super().__init__()
        config = (config or VideoMAPConfig()).replace(**overrides)
        self.config = config
        self.embed_dim = self.num_features = config.embed_dim
        self.patch_size = config.patch_size
        self.tubelet_size = config.tubelet_size
        self.num_frames = config.num_frames
        self.img_size = config.image_hw
        self.schedule = config.schedule
        self.num_layers = config.num_layers
        self.num_classes = config.num_classes
        self.global_pool = config.global_pool
        self.dynamic_size = config.dynamic_size
        self.residual_in_fp32 = config.residual_in_fp32
        self.grad_checkpointing = False

        dim = config.embed_dim
        frames, grid_h, grid_w = config.grid
        self.patch_embed = PatchEmbed3d(config.patch_size, config.tubelet_size, config.in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid_h * grid_w, dim))
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, frames, dim))

        # Stochastic depth grows linearly with depth; plain floats, so the model can be built on "meta".
        n = self.num_layers
        drop_paths = [config.drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        self.layers = nn.ModuleList(
            LAYER_TYPES[kind].from_config(config, drop_paths[i]) for i, kind in enumerate(config.schedule)
        )
        self.norm_f = RMSNorm(dim, eps=config.norm_eps)
        self.head_drop = nn.Dropout(config.drop_rate)
        self.head = nn.Linear(dim, config.num_classes) if config.num_classes > 0 else nn.Identity()
        self.init_weights()

    # ------------------------------------------------------------------ initialisation

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise every parameter.

        Linear weights truncated-normal(0.02) with zero biases (ViT/VideoMamba); convolutions get PyTorch's
        default and LayerScale its initial value; ``pos_embed`` truncated-normal(0.02), class token and
        temporal embedding zero (VideoMamba); Mamba's dt init and S4D-real ``A``; each Mamba ``out_proj``
        rescaled by ``1/sqrt(num_layers)`` as in Mamba's GPT-2-style init, so the residual stream's variance
        does not grow with depth.
        """
        trunc_normal_(self.pos_embed)
        nn.init.zeros_(self.cls_token)
        nn.init.zeros_(self.temporal_pos_embedding)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.Conv1d, nn.Conv3d, nn.LayerNorm, RMSNorm, LayerScale)):
                module.reset_parameters()
        for layer in self.layers:
            if isinstance(layer, MambaLayer):
                layer.mixer.reset_ssm_parameters()
                nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
                layer.mixer.out_proj.weight.div_(math.sqrt(self.num_layers))

    # ------------------------------------------------------------------ tokens

    def grid_size(self, x_or_shape: torch.Tensor | Sequence[int]) -> tuple[int, int, int]:
        """Token grid ``(T', H/p, W/p)`` of a video ``(B, C, T, H, W)``, or of a shape ``(B, C, T, H, W)`` /
        ``(T, H, W)``."""
        shape = tuple(x_or_shape.shape if isinstance(x_or_shape, torch.Tensor) else x_or_shape)
        if len(shape) == 5:
            shape = shape[2:]
        if len(shape) != 3:
            raise ValueError(f"expected a (B, C, T, H, W) video or a (T, H, W) shape, got shape {shape}")
        return self.patch_embed.grid_size(*shape)

    def position_embeddings(self, grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``pos_embed (1, 1 + Hg·Wg, D)`` and ``temporal_pos_embedding (1, T', D)`` for a token grid.

        At the configured grid these are the parameters themselves; at another grid they are resampled
        (bicubic in space, linear in time) when ``dynamic_size`` is on, and an error otherwise.
        """
        own = self.config.grid
        if tuple(grid) == own:
            return self.pos_embed, self.temporal_pos_embedding
        if not self.dynamic_size:
            raise ValueError(
                f"input token grid (T', H', W') = {tuple(grid)} differs from the model's {own} "
                f"({self.num_frames} frames of {self.img_size[0]}x{self.img_size[1]}); build the model with "
                f"dynamic_size=True to resample the position embeddings, or with matching num_frames/img_size"
            )
        pos = resample_spatial_pos_embed(self.pos_embed, own[1:], grid[1:])
        temporal = resample_temporal_pos_embed(self.temporal_pos_embedding, grid[0])
        return pos, temporal

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch-embed a video and add the class token and position embeddings.

        x: ``(B, C, T, H, W)`` → ``(B, 1 + T'·N, D)``, ordered ``[cls, frame 0 tokens, frame 1 tokens, …]``
        with each frame's tokens in raster order.
        """
        grid = self.grid_size(x)
        pos, temporal = self.position_embeddings(grid)
        return add_position_embeddings(self.patch_embed(x), self.cls_token, pos, temporal)

    # ------------------------------------------------------------------ encoder

    def _run_layer(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            # Non-reentrant checkpointing restores the RNG state, so DropPath draws the same masks twice.
            return checkpoint(layer, x, use_reentrant=False)
        return layer(x)

    def _stream(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.float() if self.residual_in_fp32 else tokens

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run every layer and the final norm on any token sequence.

        tokens: ``(B, L, D)``, e.g. from :meth:`prepare_tokens` or a subset of it → ``(B, L, D)``.
        """
        if tokens.device.type == "cpu":
            # Large per-layer intermediates page-fault afresh under glibc's defaults; tune once, here, so a
            # plain script is as fast as the command (VIDEOMAP_MALLOC_TUNING=0 opts out).
            tune_cpu_allocator()
        x = self._stream(tokens)
        for layer in self.layers:
            x = self._run_layer(layer, x)
        return self.norm_f(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``(B, C, T, H, W)`` → all tokens after the final norm, ``(B, 1 + T'·N, D)``."""
        return self.forward_tokens(self.prepare_tokens(x))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens ``(B, 1 + L, D)`` → ``(B, D)``: the class token, or the mean of the patch tokens."""
        if self.global_pool == "avg":
            return tokens[:, 1:].mean(dim=1)
        return tokens[:, 0]

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """tokens ``(B, 1 + L, D)`` → logits ``(B, num_classes)``, or pooled features ``(B, D)`` with
        ``pre_logits``."""
        x = self.head_drop(self.pool(tokens))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``(B, C, T, H, W)`` → logits ``(B, num_classes)`` (pooled features when ``num_classes == 0``)."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NLC",
        intermediates_only: bool = False,
        return_prefix_tokens: bool = False,
    ):
        """Outputs of selected layers (timm's contract).

        Args:
            x: ``(B, C, T, H, W)``.
            indices: layer indices (negative counts from the end), or an int ``n`` for the last ``n``
                layers; ``None`` = every layer.
            norm: apply the final norm to each intermediate.
            stop_early: skip the layers after the last requested one (the final output then comes from
                that layer).
            output_fmt: ``"NLC"`` → patch tokens ``(B, T'·N, D)``; ``"NTLC"`` → ``(B, T', N, D)``.
            intermediates_only: return only the list of intermediates.
            return_prefix_tokens: return each intermediate as ``(tokens, cls (B, 1, D))``.

        Returns:
            ``(final_tokens (B, 1 + T'·N, D), intermediates)`` or, with ``intermediates_only``, the list.
        """
        if output_fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output_fmt must be one of {OUTPUT_FORMATS}, got {output_fmt!r}")
        take = self._resolve_indices(indices)
        frames, grid_h, grid_w = self.grid_size(x)
        last = max(take) if (stop_early or intermediates_only) else self.num_layers - 1

        x = self._stream(self.prepare_tokens(x))
        intermediates = []
        for i, layer in enumerate(self.layers[: last + 1]):
            x = self._run_layer(layer, x)
            if i in take:
                y = self.norm_f(x) if norm else x
                patches = y[:, 1:]
                if output_fmt == "NTLC":
                    patches = patches.reshape(y.shape[0], frames, grid_h * grid_w, y.shape[-1])
                intermediates.append((patches, y[:, :1]) if return_prefix_tokens else patches)
        if intermediates_only:
            return intermediates
        return self.norm_f(x), intermediates

    def _resolve_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        n = self.num_layers
        if indices is None:
            return list(range(n))
        if isinstance(indices, int):
            if not 0 < indices <= n:
                raise ValueError(f"cannot take the last {indices} of {n} layers")
            return list(range(n - indices, n))
        out = []
        for i in indices:
            j = i + n if i < 0 else i
            if not 0 <= j < n:
                raise IndexError(f"layer index {i} is out of range for {n} layers")
            out.append(j)
        return sorted(set(out))

    # ------------------------------------------------------------------ training helpers

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head by a freshly initialised one with ``num_classes`` outputs (0 = no head)."""
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        if num_classes > 0:
            like = self.pos_embed
            self.head = nn.Linear(self.embed_dim, num_classes, device=like.device, dtype=like.dtype)
            trunc_normal_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        else:
            self.head = nn.Identity()
        self.config = self.config.replace(num_classes=num_classes, global_pool=self.global_pool)

    def no_weight_decay(self) -> set[str]:
        """Full names of the parameters to exclude from weight decay: the class token, the position
        embeddings and every Mamba ``A_log``/``D`` (both directions)."""
        names = set(EMBEDDING_PARAMS)
        names.update(n for n, _ in self.named_parameters() if n.rsplit(".", 1)[-1] in SSM_NO_DECAY)
        return names

    def get_num_layers(self) -> int:
        """Number of residual layers (layer-decay ids run from 0 to this + 1)."""
        return self.num_layers

    def get_layer_id(self, param_name: str) -> int:
        """Layer-decay id of a parameter: 0 for the embeddings, ``i + 1`` for layer ``i``,
        ``num_layers + 1`` for the final norm and the head."""
        if param_name.startswith(EMBEDDING_PARAMS + ("patch_embed",)):
            return 0
        match = re.match(r"layers\.(\d+)\.", param_name)
        if match:
            return int(match.group(1)) + 1
        return self.num_layers + 1

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm-style parameter groups: the stem, then one group per layer (final norm last)."""
        return {
            "stem": r"^cls_token|^pos_embed|^temporal_pos_embedding|^patch_embed",
            "blocks": r"^layers\.(\d+)" if coarse else [(r"^layers\.(\d+)", None), (r"^norm_f", (99999,))],
        }

    # ------------------------------------------------------------------ save / load

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` to ``directory`` (created if needed)."""
        from .weights import save_pretrained

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, strict: bool = True, **overrides) -> VideoMAP:
        """Rebuild a model saved by :meth:`save_pretrained`; ``overrides`` change config fields (e.g.
        ``num_frames=16`` resamples the temporal embedding, ``num_classes=174`` gives a new head)."""
        from .weights import from_pretrained

        return from_pretrained(directory, strict=strict, model_class=cls, **overrides)

    def extra_repr(self) -> str:
        return f"schedule={self.schedule!r}, grid={self.config.grid}"
