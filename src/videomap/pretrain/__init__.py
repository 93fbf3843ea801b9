"""Frame-wise masked autoregressive pretraining (DESIGN §4): masking, targets, decoder, objective."""

from .decoder import FrameCausalDecoder, frame_causal_mask
from .masking import frame_token_mask, num_hidden, sample_mask_ratio, visible_indices, whole_frame_mask
from .objective import MAPPretrainer
from .targets import CLIPTarget, PixelTarget, patchify, unpatchify
from .visualize import reconstruction_grid, save_png

__all__ = [
    "CLIPTarget",
    "FrameCausalDecoder",
    "MAPPretrainer",
    "PixelTarget",
    "frame_causal_mask",
    "frame_token_mask",
    "num_hidden",
    "patchify",
    "reconstruction_grid",
    "sample_mask_ratio",
    "save_png",
    "unpatchify",
    "visible_indices",
    "whole_frame_mask",
]
