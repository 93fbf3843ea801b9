"""``VideoEncoder``: a VideoMAP backbone as the visual encoder of a video LLM (DESIGN §6).

It returns the tokens of one layer (the penultimate by default, as LLaVA's vision towers do) on a
``(T', N)`` grid, plus pooled summaries, for any number of frames: the backbone runs with
``dynamic_size=True``, so its position embeddings are resampled to each input's grid.

Long videos can be encoded in chunks of ``chunk_frames`` frames. Each chunk is encoded as a clip of its own:
its temporal embedding is the learned one resampled to the chunk's length (the learned one itself when the
chunk is as long as the model's ``num_frames``). Every chunk therefore looks like the clips the model was
trained on, whatever the video's length; the order of the chunks survives in the order of their tokens.
With a frozen encoder the memory for activations is that of one chunk, whatever the video's length.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..models import VideoMAP, create_model, list_models, load_model
from ..models.weights import CONFIG_NAME
from ..ops.matmul import emulated_bf16_note
from .inputs import to_model_input


@dataclass
class EncoderOutput:
    """What :meth:`VideoEncoder.encode_video` returns.

    Attributes:
        tokens: patch tokens of the selected layer, ``(B, T', N, D)``, ``N = Hg·Wg`` in raster order.
        cls: the class token of the selected layer, ``(B, D)`` (with chunking: the mean over chunks).
        pooled: mean of all patch tokens, ``(B, D)``.
        frame_pooled: mean of each frame's patch tokens, ``(B, T', D)``.
        grid: ``(T', Hg, Wg)``.
    """

    tokens: torch.Tensor
    cls: torch.Tensor
    pooled: torch.Tensor
    frame_pooled: torch.Tensor
    grid: tuple[int, int, int]


class VideoEncoder(nn.Module):
    """The LLM-facing view of a :class:`VideoMAP` backbone.

    Args:
        model: the backbone (built with ``dynamic_size=True`` to take any frame count or size).
        layer: which layer's output to return; negative counts from the end (``-1`` = last, ``-2`` = the
            penultimate, the default).
        norm: pass the selected layer's output through the backbone's final RMSNorm. The residual stream of
            a deep Mamba stack grows with depth; normalised tokens give a projector a stable input scale.
            With ``layer=-1, norm=True`` the tokens are exactly ``model.forward_features``'s.
        dtype: compute dtype; ``torch.bfloat16``/``float16`` runs the backbone under autocast (its
            parameters and residual stream stay fp32) and returns tokens in that dtype.
        chunk_frames: default chunk length for :meth:`encode_video` (``None`` = the whole video at once).
    """

    def __init__(
        self,
        model: VideoMAP,
        layer: int = -2,
        norm: bool = True,
        dtype: torch.dtype | None = None,
        chunk_frames: int | None = None,
    ):
        super().__init__()
        n = model.num_layers
        index = layer + n if layer < 0 else layer
        if not 0 <= index < n:
            raise IndexError(f"layer {layer} is out of range for a {n}-layer backbone")
        self.model = model
        self.layer = index
        self.norm = norm
        self.compute_dtype = dtype
        self.chunk_frames = chunk_frames
        self.frozen = False

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(
        cls,
        path_or_name: str | os.PathLike | VideoMAP,
        layer: int = -2,
        norm: bool = True,
        model_name: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        chunk_frames: int | None = None,
        **overrides,
    ) -> VideoEncoder:
        """Build an encoder.

        Args:
            path_or_name: a directory written by ``save_pretrained`` (or ``videomap convert``); a weights file
                (``.safetensors``/``.pt``/``.pth``) together with ``model_name``; a registered model name
                (random weights, with a warning); a Hugging Face hub id (needs ``huggingface_hub``); or a
                :class:`VideoMAP`, used as it is (switched to ``dynamic_size``).
            layer, norm, dtype, chunk_frames: see the class.
            model_name: the registered architecture of a bare weights file.
            device: where to put it.
            overrides: :class:`~videomap.models.VideoMAPConfig` fields, e.g. ``num_frames``/``img_size``: the
                grid to build the model at (a checkpoint's position embeddings are resampled to it on loading).
        """
        if isinstance(path_or_name, VideoMAP):
            if overrides or model_name:
                raise TypeError("config overrides and model_name apply when loading; the given VideoMAP is used as it is")
            model = path_or_name
        else:
            model = load_backbone(path_or_name, model_name, **overrides)
        if not model.dynamic_size:
            model.dynamic_size = True
            model.config = model.config.replace(dynamic_size=True)
        encoder = cls(model, layer=layer, norm=norm, dtype=dtype, chunk_frames=chunk_frames)
        return encoder.to(device).eval() if device is not None else encoder.eval()

    def freeze(self) -> VideoEncoder:
        """No gradients for the backbone, eval mode, and :meth:`encode_video` under ``torch.no_grad``."""
        self.model.requires_grad_(False)
        self.frozen = True
        return self.eval()

    def train(self, mode: bool = True) -> VideoEncoder:
        # A frozen tower stays in eval mode (no drop path) even inside a model put in training mode.
        return super().train(mode and not self.frozen)

    # ------------------------------------------------------------------ LLaVA-style surface

    @property
    def config(self):
        return self.model.config

    @property
    def hidden_size(self) -> int:
        """Token width ``D``."""
        return self.model.embed_dim

    @property
    def patch_size(self) -> int:
        return self.model.patch_size

    @property
    def image_size(self) -> int:
        """The (square) frame size the position embeddings were learned at."""
        return self.model.img_size[0]

    @property
    def num_patches_per_side(self) -> int:
        """``Hg`` at :attr:`image_size`."""
        return self.model.img_size[0] // self.model.patch_size

    @property
    def num_patches(self) -> int:
        """Patch tokens per frame, ``N = Hg·Wg``, at the learned frame size."""
        height, width = self.model.img_size
        return (height // self.model.patch_size) * (width // self.model.patch_size)

    @property
    def num_frames(self) -> int:
        """The clip length the temporal embedding was learned for."""
        return self.model.num_frames

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the returned tokens."""
        return self.compute_dtype or self.model.pos_embed.dtype

    @property
    def device(self) -> torch.device:
        return self.model.pos_embed.device

    @property
    def is_loaded(self) -> bool:
        return True

    @property
    def select_layer(self) -> int:
        """The selected layer's index (LLaVA's name for it)."""
        return self.layer

    # ------------------------------------------------------------------ encoding

    def preprocess(self, video, size=None) -> torch.Tensor:
        """Any accepted video → normalised float32 ``(B, C, T, H, W)`` on the encoder's device
        (see :func:`~videomap.encoders.inputs.to_model_input`)."""
        return to_model_input(video, self.model.config.mean, self.model.config.std, size=size, device=self.device)

    def _autocast(self):
        if self.compute_dtype in (torch.bfloat16, torch.float16):
            if self.device.type == "cpu" and self.compute_dtype == torch.bfloat16:
                note = emulated_bf16_note()
                if note:  # Python's warning filter shows it once per call site
                    warnings.warn(f"VideoEncoder(dtype=torch.bfloat16): {note}", RuntimeWarning, stacklevel=3)
            return torch.autocast(self.device.type, dtype=self.compute_dtype)
        return contextlib.nullcontext()

    def _encode_clip(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``(B, C, T, H, W)`` → patch tokens ``(B, T', N, D)`` and class token ``(B, D)`` of the layer."""
        with self._autocast():
            ((patches, cls),) = self.model.forward_intermediates(
                x, indices=[self.layer], norm=self.norm, stop_early=True, output_fmt="NTLC",
                intermediates_only=True, return_prefix_tokens=True,
            )
        dtype = self.dtype
        return patches.to(dtype), cls[:, 0].to(dtype)

    def encode_video(self, video, chunk_frames: int | None = None, size=None) -> EncoderOutput:
        """Encode a batch of videos.

        Args:
            video: normalised float ``(B, C, T, H, W)``, or ``uint8 (B, T, H, W, C)`` / ``(T, H, W, C)``
                frames (normalised here with the model's mean/std). Any ``T`` divisible by the tubelet and
                ``H, W`` divisible by the patch size.
            chunk_frames: encode ``chunk_frames`` frames at a time (see the module docstring); ``None``
                uses the encoder's default.
            size: resize frames to this ``H = W`` or ``(H, W)`` first.

        Returns:
            :class:`EncoderOutput` with ``tokens (B, T', N, D)``, ``cls (B, D)``, ``pooled (B, D)``,
            ``frame_pooled (B, T', D)``.
        """
        x = self.preprocess(video, size)
        frames, grid_h, grid_w = self.model.grid_size(x)
        chunk = chunk_frames if chunk_frames is not None else self.chunk_frames
        grad = contextlib.nullcontext() if not self.frozen else torch.no_grad()
        with grad:
            if chunk is None or chunk >= x.shape[2]:
                tokens, cls = self._encode_clip(x)
            else:
                if chunk < 1 or chunk % self.model.tubelet_size:
                    raise ValueError(f"chunk_frames {chunk} must be a positive multiple of the tubelet size "
                                     f"{self.model.tubelet_size}")
                pieces = [self._encode_clip(x[:, :, s:s + chunk]) for s in range(0, x.shape[2], chunk)]
                tokens = torch.cat([p for p, _ in pieces], dim=1)
                cls = torch.stack([c for _, c in pieces], dim=1).mean(dim=1)
        frame_pooled = tokens.mean(dim=2)
        return EncoderOutput(tokens=tokens, cls=cls, pooled=frame_pooled.mean(dim=1), frame_pooled=frame_pooled,
                             grid=(frames, grid_h, grid_w))

    def forward(self, video, chunk_frames: int | None = None) -> torch.Tensor:
        """Patch tokens flattened over frames, ``(B, T'·N, D)`` (a vision tower's ``forward``)."""
        return self.encode_video(video, chunk_frames=chunk_frames).tokens.flatten(1, 2)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, norm={self.norm}, dtype={self.compute_dtype}, chunk_frames={self.chunk_frames}"


# ---------------------------------------------------------------------------------------------- loading


def load_backbone(path_or_name: str | os.PathLike, model_name: str | None = None, **overrides) -> VideoMAP:
    """A headless, ``dynamic_size`` backbone from a directory, a weights file, a registered name or a hub id
    (see :meth:`VideoEncoder.from_pretrained`)."""
    overrides = {**overrides, "num_classes": 0, "dynamic_size": True}
    path = Path(path_or_name)
    if path.is_dir() or path.is_file():
        if model_name is None and not (path / CONFIG_NAME).is_file():
            raise ValueError(f"{path} holds weights without a {CONFIG_NAME}; pass model_name=<registered architecture>")
        # An encoder never uses the classifier; leaving it out keeps loading quiet about its size.
        return load_model(path, model_name, with_head=False, **overrides)
    name = str(path_or_name)
    if name in list_models():
        warnings.warn(
            f"VideoEncoder.from_pretrained({name!r}): a registered name builds RANDOM weights; pass a directory "
            f"written by save_pretrained or `videomap convert` for trained ones",
            UserWarning, stacklevel=3,
        )
        return create_model(name, **overrides)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name):  # owner/name: a Hugging Face hub id
        try:
            from ..models.hub import resolve_model_dir
        except ImportError as error:
            raise FileNotFoundError(
                f"{name!r} is neither a local path nor a registered model; to load it as a Hugging Face hub id, "
                f"pip install 'videomap[hub]'"
            ) from error
        try:
            directory = resolve_model_dir(name)
        except Exception as error:  # offline, unknown repository, ...: say both readings failed
            raise FileNotFoundError(
                f"{name!r} is not a local path, and fetching it as a hub id failed: {error}"
            ) from error
        return load_backbone(directory, model_name, **overrides)
    raise FileNotFoundError(
        f"{name!r} is not a directory, a weights file, a registered model ({', '.join(list_models())}) "
        f"or a hub id"
    )
