"""videomap: VideoMAP video backbones (hybrid bidirectional Mamba + Transformer, 4:1) with frame-wise masked
autoregressive pretraining, fine-tuning and a video-LLM encoder, on CPU and GPU."""

__version__ = "0.1.0"
