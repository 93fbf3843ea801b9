"""Frame-wise masked autoregressive pretraining (DESIGN §4): an objective that wraps an encoder.

MAE's split: :meth:`MAPPretrainer.forward_encoder` runs the backbone on the visible tokens only,
:meth:`forward_decoder` puts mask tokens back and runs the frame-causal decoder, :meth:`forward_loss` scores
the masked tokens. The backbone itself never owns a loss.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..layers.pos_embed import resample_spatial_pos_embed, resample_temporal_pos_embed
from .decoder import FrameCausalDecoder
from .masking import frame_token_mask, sample_mask_ratio, visible_indices, whole_frame_mask
from .targets import CLIPTarget, PixelTarget

TARGETS = ("pixel", "clip")
PREDICTS = ("same", "next")


class MAPPretrainer(nn.Module):
    """Frame-wise masked autoregressive pretraining around a VideoMAP-style encoder.

    Args:
        encoder: a model with ``prepare_tokens(x) -> (B, 1 + T'·N, D)``, ``forward_tokens(tokens)``,
            ``grid_size(x) -> (T', H/p, W/p)``, ``embed_dim``, ``patch_size``, ``tubelet_size``,
            ``num_frames`` and ``img_size`` (every :class:`videomap.models.VideoMAP` has them).
        target: ``"pixel"`` (per-patch-normalised patches) or ``"clip"`` (frozen CLIP features; give
            ``clip_model``, a local ``CLIPVisionModel`` directory or module).
        predict: ``"same"`` — frame ``t``'s outputs regress frame ``t``'s masked tokens (MAP's released code);
            ``"next"`` — they regress frame ``t + 1``'s masked tokens.
        mask_ratio: fraction of each frame's tokens hidden, or ``"random"`` for a ratio drawn per batch from
            MAP's truncated normal on [0.3, 0.7] (mean 0.5, σ 0.25).
        whole_frames: hide whole frames instead of tokens inside every frame.
        decoder_depth, decoder_dim, decoder_heads: the frame-causal decoder's size.
        decoder_causal: ``False`` makes the decoder bidirectional over frames (MAE's decoder). With
            ``predict="same"`` that is the masked-autoencoding control: the same masking and targets, without
            the autoregressive order.
        norm_pix_loss: per-patch normalisation of pixel targets.
    """

    def __init__(self, encoder: nn.Module, target: str = "pixel", predict: str = "same",
                 mask_ratio: float | str = 0.5, whole_frames: bool = False, decoder_depth: int = 4,
                 decoder_dim: int = 384, decoder_heads: int = 6, decoder_mlp_ratio: float = 4.0,
                 norm_pix_loss: bool = True, clip_model=None, in_chans: int = 3, decoder_causal: bool = True):
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"unknown pretraining target {target!r}; choose one of {TARGETS}")
        if predict not in PREDICTS:
            raise ValueError(f"unknown predict mode {predict!r}; choose one of {PREDICTS}")
        if not (mask_ratio == "random" or isinstance(mask_ratio, (int, float))):
            raise ValueError(f"mask_ratio must be a number in [0, 1) or 'random', got {mask_ratio!r}")
        self.encoder = encoder
        self.target_name, self.predict, self.mask_ratio, self.whole_frames = target, predict, mask_ratio, whole_frames
        tubelet, patch = encoder.tubelet_size, encoder.patch_size
        if target == "pixel":
            self.target = PixelTarget(tubelet, patch, norm_pix=norm_pix_loss)
        else:
            if clip_model is None:
                raise ValueError("target='clip' needs clip_model: a local CLIPVisionModel directory")
            config = getattr(encoder, "config", None)
            kwargs = {"input_mean": tuple(config.mean), "input_std": tuple(config.std)} if config is not None else {}
            self.target = CLIPTarget(clip_model, tubelet=tubelet, **kwargs)
        img = encoder.img_size if isinstance(encoder.img_size, (tuple, list)) else (encoder.img_size,) * 2
        self.grid = (encoder.num_frames // tubelet, img[0] // patch, img[1] // patch)

        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, self.grid[1] * self.grid[2], decoder_dim))
        self.decoder_temporal_pos_embed = nn.Parameter(torch.zeros(1, self.grid[0], decoder_dim))
        self.decoder = FrameCausalDecoder(decoder_dim, decoder_depth, decoder_heads, decoder_mlp_ratio,
                                          causal=decoder_causal)
        self.decoder_pred = nn.Linear(decoder_dim, self.target.dim(in_chans))
        self._init_decoder_weights()

    def _init_decoder_weights(self):
        for p in (self.mask_token, self.decoder_pos_embed, self.decoder_temporal_pos_embed):
            nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        names = {"mask_token", "decoder_pos_embed", "decoder_temporal_pos_embed"}
        encoder_names = getattr(self.encoder, "no_weight_decay", lambda: set())()
        return names | {f"encoder.{n}" for n in encoder_names}

    # ----------------------------------------------------------------------------------------------------
    def sample_mask(self, batch: int, frames: int, tokens: int, generator: torch.Generator | None = None,
                    device=None) -> torch.Tensor:
        """A fresh ``(B, T', N)`` bool mask (``True`` = hidden) from ``generator``."""
        ratio = sample_mask_ratio(generator) if self.mask_ratio == "random" else float(self.mask_ratio)
        if self.whole_frames:
            # Under "next" only frames 1 … T'−1 are scored, so frame 0 stays visible and every mask hides a
            # scored frame; with token masking every frame hides tokens and frames ≥ 1 are always scored.
            return whole_frame_mask(batch, frames, tokens, ratio, generator=generator, device=device,
                                    keep_first=self.predict == "next")
        return frame_token_mask(batch, frames, tokens, ratio, generator=generator, device=device)

    def forward_encoder(self, video: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the visible tokens only.

        Returns:
            latent ``(B, 1 + L_vis, D)`` (class token first, then visible tokens in spatial-first order) and
            their flat indices ``(B, L_vis)`` into ``T'·N``.
        """
        tokens = self.encoder.prepare_tokens(video)  # (B, 1 + T'·N, D), positions already added
        index = visible_indices(mask)
        patches = tokens[:, 1:].gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))
        return self.encoder.forward_tokens(torch.cat([tokens[:, :1], patches], dim=1)), index

    def forward_decoder(self, latent: torch.Tensor, index: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Scatter encoded tokens back, fill the hidden ones with the mask token, decode frame-causally.

        Returns:
            ``(B, T', N, P)``: row ``t`` is the decoder's output for frame ``t`` (before any ``next`` shift).
        """
        frames, height, width = grid
        x = self.decoder_embed(latent[:, 1:])  # the class token is not decoded
        batch, _, dim = x.shape
        full = self.mask_token.to(x.dtype).expand(batch, frames * height * width, dim)
        full = full.scatter(1, index[..., None].expand(-1, -1, dim), x)
        pos = resample_spatial_pos_embed(self.decoder_pos_embed, self.grid[1:], (height, width), num_prefix_tokens=0)
        tpos = resample_temporal_pos_embed(self.decoder_temporal_pos_embed, frames)
        full = full.reshape(batch, frames, height * width, dim) + pos[:, None] + tpos[:, :, None]
        return self.decoder_pred(self.decoder(full))

    def forward_loss(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
        """Align outputs with targets and average the per-token loss over the hidden tokens.

        Returns:
            ``(loss, pred)`` where ``pred (B, T', N, P)`` is aligned with ``target``: for ``predict="next"``,
            ``pred[:, t]`` comes from the outputs of frame ``t − 1``; frame 0 has no prediction (zeros) and
            no loss.

        Raises ``ValueError`` when the mask leaves no token to score (e.g. a given mask that hides only
        frame 0 under ``predict="next"``): such a step would report a loss of exactly 0.
        """
        weight = mask.float()
        if self.predict == "next":
            pred = torch.cat([torch.zeros_like(output[:, :1]), output[:, :-1]], dim=1)
            weight = torch.cat([torch.zeros_like(weight[:, :1]), weight[:, 1:]], dim=1)
        else:
            pred = output
        scored = weight.sum()
        if not bool(scored > 0):
            # A zero loss would look like a perfect step and train nothing.
            raise ValueError("the mask leaves no hidden token to score"
                             + (" (predict='next' scores the hidden tokens of frames 1 … T'-1 only)"
                                if self.predict == "next" else "") + "; hide more tokens")
        per_token = self.target.loss(pred, target)
        loss = (per_token * weight).sum() / scored
        return loss, pred

    def forward(self, video: torch.Tensor, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """One pretraining step's forward.

        Args:
            video: normalised ``(B, C, T, H, W)``.
            mask: optional ``(B, T', N)`` bool (``True`` = hidden); sampled from ``generator`` when omitted.

        Returns:
            ``{"loss": scalar, "pred": (B, T', N, P), "target": (B, T', N, P), "mask": (B, T', N)}``.
        """
        grid = tuple(self.encoder.grid_size(video))
        frames, height, width = grid
        if self.predict == "next" and frames < 2:
            raise ValueError("predict='next' needs at least two frames after the tubelet")
        if mask is None:
            mask = self.sample_mask(video.shape[0], frames, height * width, generator, video.device)
        elif tuple(mask.shape) != (video.shape[0], frames, height * width):
            raise ValueError(f"mask must be (B, T', N) = {(video.shape[0], frames, height * width)}, "
                             f"got {tuple(mask.shape)}")
        latent, index = self.forward_encoder(video, mask)
        output = self.forward_decoder(latent, index, grid)
        if self.target_name == "clip":
            target = self.target(video, grid_hw=(height, width), patch=self.encoder.patch_size)
        else:
            target = self.target(video)
        loss, pred = self.forward_loss(output, target, mask)
        return {"loss": loss, "pred": pred, "target": target, "mask": mask}
