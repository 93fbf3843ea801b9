"""videomap: VideoMAP video backbones (hybrid bidirectional Mamba + Transformer, 4:1) with frame-wise masked
autoregressive pretraining, fine-tuning and a video-LLM encoder, on CPU and GPU.

``import videomap`` loads only the core (torch, numpy, safetensors, einops); video decoding, plots, the hub
and transformers are imported when first used.
"""

from .encoders import EncoderOutput, VideoEncoder
from .models import VideoMAP, VideoMAPConfig, create_model, get_model_config, list_models

__version__ = "0.1.0"

__all__ = [
    "EncoderOutput",
    "VideoEncoder",
    "VideoMAP",
    "VideoMAPConfig",
    "create_model",
    "get_model_config",
    "list_models",
    "__version__",
]
