"""A ``transformers`` wrapper: :class:`VideoMAPHFConfig` and :class:`VideoMAPForVideoClassification`,
registered with ``AutoConfig`` and ``AutoModelForVideoClassification`` (model type ``"videomap"``).

Needs ``transformers`` (``pip install 'videomap[hf]'``). Importing this module registers the classes, after
which ``AutoModelForVideoClassification.from_pretrained(dir)`` loads a directory written by
``VideoMAPForVideoClassification.save_pretrained``. Inputs follow the ``transformers`` video models
(VideoMAE, TimeSformer): ``pixel_values (B, T, C, H, W)``, normalised.

The backbone inside is a plain :class:`VideoMAP` (``model.videomap``); :meth:`from_videomap` and
:meth:`to_videomap` move weights between the two worlds unchanged.
"""

from __future__ import annotations

try:
    from transformers import AutoConfig, AutoModelForVideoClassification, PretrainedConfig, PreTrainedModel
    from transformers.modeling_outputs import ImageClassifierOutput
except ImportError as error:  # pragma: no cover - exercised only without the optional dependency
    raise ImportError(
        "videomap.models.hf needs transformers: pip install 'videomap[hf]' (or pip install transformers)"
    ) from error

import torch
import torch.nn.functional as F

from .config import VideoMAPConfig
from .videomap import VideoMAP

MODEL_TYPE = "videomap"


class VideoMAPHFConfig(PretrainedConfig):
    """``transformers`` config holding a :class:`VideoMAPConfig` as a dict under ``videomap``.

    The number of classes is ``transformers``' ``num_labels`` (or the size of ``id2label``); the backbone's
    ``num_classes`` follows it.
    """

    model_type = MODEL_TYPE

    def __init__(self, videomap: dict | None = None, **kwargs):
        backbone = VideoMAPConfig.from_dict(dict(videomap)) if videomap else VideoMAPConfig()
        if "num_labels" not in kwargs and "id2label" not in kwargs:
            kwargs["num_labels"] = backbone.num_classes
        super().__init__(**kwargs)
        self.videomap = backbone.to_dict()

    def backbone_config(self) -> VideoMAPConfig:
        """The :class:`VideoMAPConfig` to build, with ``num_classes = num_labels``."""
        return VideoMAPConfig.from_dict(dict(self.videomap)).replace(num_classes=self.num_labels)


class VideoMAPForVideoClassification(PreTrainedModel):
    """:class:`VideoMAP` behind the ``transformers`` model interface.

    ``forward(pixel_values (B, T, C, H, W), labels (B,) = None)`` → ``ImageClassifierOutput`` with
    ``logits (B, num_labels)``, the cross-entropy ``loss`` when ``labels`` are given and, with
    ``output_hidden_states``, the final tokens ``(B, 1 + T'·N, D)`` as the one hidden state.
    """

    config_class = VideoMAPHFConfig
    base_model_prefix = "videomap"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True

    def __init__(self, config: VideoMAPHFConfig):
        super().__init__(config)
        self.videomap = VideoMAP(config.backbone_config())
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module) -> None:
        # VideoMAP owns its initialisation (Mamba's dt and A inits are not transformers' defaults).
        if isinstance(module, VideoMAP):
            module.init_weights()

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None) -> None:
        self.videomap.set_grad_checkpointing(enable)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ):
        if pixel_values.dim() != 5:
            raise ValueError(f"pixel_values must be (B, T, C, H, W), got shape {tuple(pixel_values.shape)}")
        tokens = self.videomap.forward_features(pixel_values.permute(0, 2, 1, 3, 4))
        logits = self.videomap.forward_head(tokens)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        hidden = (tokens,) if output_hidden_states else None
        if return_dict is False:
            return tuple(v for v in (loss, logits, hidden) if v is not None)
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden)

    @classmethod
    def from_videomap(cls, model: VideoMAP, **config_kwargs) -> VideoMAPForVideoClassification:
        """Wrap ``model``'s architecture and weights (``config_kwargs`` such as ``id2label`` go to the
        config)."""
        if "id2label" in config_kwargs and len(config_kwargs["id2label"]) != model.num_classes:
            raise ValueError(f"id2label has {len(config_kwargs['id2label'])} names for {model.num_classes} classes")
        config = VideoMAPHFConfig(videomap=model.config.to_dict(), **config_kwargs)
        wrapped = cls(config)
        wrapped.videomap.load_state_dict(model.state_dict())
        return wrapped

    def to_videomap(self) -> VideoMAP:
        """The backbone as a plain :class:`VideoMAP` (shares the parameters)."""
        return self.videomap


def register() -> None:
    """Register the classes with ``AutoConfig`` and ``AutoModelForVideoClassification`` (idempotent)."""
    AutoConfig.register(MODEL_TYPE, VideoMAPHFConfig, exist_ok=True)
    AutoModelForVideoClassification.register(VideoMAPHFConfig, VideoMAPForVideoClassification, exist_ok=True)


register()

__all__ = ["VideoMAPHFConfig", "VideoMAPForVideoClassification", "register"]
