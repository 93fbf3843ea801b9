"""VideoMAP models: the :class:`VideoMAP` class, its typed config, the registry, and the one loader and
writer of model folders (:func:`load_model`, :func:`save_pretrained`)."""

from .config import IMAGENET_MEAN, IMAGENET_STD, VideoMAPConfig
from .registry import MODEL_CONFIGS, create_model, get_model_config, list_models
from .videomap import VideoMAP
from .weights import (
    CheckpointMismatchError,
    LoadReport,
    load_model,
    load_state_dict_into,
    read_checkpoint,
    save_pretrained,
)

__all__ = [
    "CheckpointMismatchError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadReport",
    "MODEL_CONFIGS",
    "VideoMAP",
    "VideoMAPConfig",
    "create_model",
    "get_model_config",
    "list_models",
    "load_model",
    "load_state_dict_into",
    "read_checkpoint",
    "save_pretrained",
]
