"""The LLM-facing side of videomap: :class:`VideoEncoder` (a backbone as a video LLM's visual encoder),
projectors, token reducers and, in :mod:`videomap.encoders.llm`, a video → causal-LM path.

``videomap.encoders.llm`` needs ``transformers`` and is imported only when used.
"""

from .encoder import EncoderOutput, VideoEncoder, load_backbone
from .inputs import resize_frames, to_model_input
from .projectors import PROJECTORS, build_projector
from .reducers import TokenReducer, spatial_pool, temporal_pool
from .tokenizer import ByteTokenizer

__all__ = [
    "ByteTokenizer",
    "EncoderOutput",
    "PROJECTORS",
    "TokenReducer",
    "VideoEncoder",
    "build_projector",
    "load_backbone",
    "resize_frames",
    "spatial_pool",
    "temporal_pool",
    "to_model_input",
]
