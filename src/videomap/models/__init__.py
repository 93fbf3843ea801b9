"""VideoMAP models: the :class:`VideoMAP` class, its typed config, the registry, and save/load."""

from .checkpoint import (
    CheckpointMismatchError,
    LoadReport,
    load_state_dict_into,
    read_checkpoint,
    save_pretrained,
)
from .config import IMAGENET_MEAN, IMAGENET_STD, VideoMAPConfig
from .registry import MODEL_CONFIGS, create_model, get_model_config, list_models
from .videomap import VideoMAP

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
    "load_state_dict_into",
    "read_checkpoint",
    "save_pretrained",
]
