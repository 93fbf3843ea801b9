"""videomap: VideoMAP video backbones (hybrid bidirectional Mamba + Transformer, 4:1) with frame-wise masked
autoregressive pretraining, fine-tuning and a video-LLM encoder, on CPU and GPU.

``import videomap`` loads only the core (torch, numpy, safetensors, einops); video decoding, plots, the hub
and transformers are imported when first used.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The top-level names resolve on first use (PEP 562), so that importing one package, e.g. ``videomap.ops``,
# loads that package and what it needs, not the whole library.
_EXPORTS = {
    "EncoderOutput": "videomap.encoders",
    "VideoEncoder": "videomap.encoders",
    "VideoMAP": "videomap.models",
    "VideoMAPConfig": "videomap.models",
    "create_model": "videomap.models",
    "get_model_config": "videomap.models",
    "list_models": "videomap.models",
}

__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .encoders import EncoderOutput, VideoEncoder
    from .models import VideoMAP, VideoMAPConfig, create_model, get_model_config, list_models


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'videomap' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list:
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
