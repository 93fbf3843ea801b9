"""A video LLM from a VideoMAP encoder: train the projector on captioned clips, then caption them.

    python examples/video_llm.py                     # synthetic clips, a tiny random Llama, byte tokenizer
    python examples/video_llm.py --train-llm --steps 100   # train the language model too: it learns to tell
                                                            # the two clips apart and captions each correctly
    python examples/video_llm.py --encoder runs/k400/model --llm path/to/causal-lm \\
        --video bike.mp4 --caption "a man rides a bike" --video cat.mp4 --caption "a cat sleeps"

``--encoder`` is a model directory (``save_pretrained`` / ``videomap convert``) or a registered name (random
weights); ``--llm`` any local Hugging Face causal-LM directory with its tokenizer. Needs ``transformers``;
``--video`` also needs PyAV.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch


def synthetic_clips(frames: int, size: int) -> tuple[list[np.ndarray], list[str]]:
    """Two uint8 ``(T, H, W, 3)`` clips of a bright square on a dark background, moving right or down."""
    clips, captions = [], []
    side = size // 4
    for direction, caption in (((0, 1), "a red square moves right"), ((1, 0), "a blue square moves down")):
        clip = np.full((frames, size, size, 3), 20, dtype=np.uint8)
        colour = (230, 40, 40) if direction == (0, 1) else (40, 40, 230)
        for t in range(frames):
            step = round(t * (size - side) / max(frames - 1, 1))
            top, left = (step, size // 3) if direction == (1, 0) else (size // 3, step)
            clip[t, top:top + side, left:left + side] = colour
        clips.append(clip)
        captions.append(caption)
    return clips, captions


def read_clip(path: str, frames: int) -> np.ndarray:
    """``frames`` frames spread evenly over a video file, ``uint8 (T, H, W, 3)``."""
    from videomap.data.decode import count_frames, decode_frames

    total = count_frames(path)
    return decode_frames(path, np.linspace(0, max(total - 1, 0), frames).round().astype(int)).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="videomap_tiny", help="model directory or registered name")
    parser.add_argument("--llm", default=None, help="local causal-LM directory (default: a tiny random Llama)")
    parser.add_argument("--video", action="append", default=[], help="a video file (repeat with --caption)")
    parser.add_argument("--caption", action="append", default=[], help="its caption")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=64, help="frames are resized to this square size")
    parser.add_argument("--layer", type=int, default=-2, help="encoder layer to read (default: the penultimate)")
    parser.add_argument("--projector", default="mlp2x_gelu", choices=["linear", "mlp2x_gelu"])
    parser.add_argument("--spatial-stride", type=int, default=1)
    parser.add_argument("--temporal-stride", type=int, default=1)
    parser.add_argument("--chunk-frames", type=int, default=None, help="encode long videos this many frames at a time")
    parser.add_argument("--train-llm", action="store_true", help="train the language model too, not only the projector")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import warnings

    from videomap.encoders import VideoEncoder
    from videomap.encoders.llm import build_video_llm

    torch.manual_seed(args.seed)
    if len(args.video) != len(args.caption):
        parser.error("give one --caption per --video")
    if args.video:
        clips, captions = [read_clip(p, args.frames) for p in args.video], list(args.caption)
    else:
        clips, captions = synthetic_clips(args.frames, args.img_size)

    with warnings.catch_warnings():
        if args.encoder == "videomap_tiny":
            warnings.simplefilter("ignore")  # the default demo runs on random encoder weights on purpose
        encoder = VideoEncoder.from_pretrained(args.encoder, layer=args.layer, img_size=args.img_size,
                                               chunk_frames=args.chunk_frames)
    llm = build_video_llm(encoder, args.llm, projector=args.projector, spatial_stride=args.spatial_stride,
                          temporal_stride=args.temporal_stride, freeze_language_model=not args.train_llm)
    # Every clip to the same size, normalised with the encoder's statistics: one batch.
    video = torch.cat([encoder.preprocess(clip, size=args.img_size) for clip in clips])
    grid = encoder.model.grid_size(video)
    print(f"{len(clips)} clips, {grid[0]} x {grid[1] * grid[2]} encoder tokens each -> "
          f"{llm.num_video_tokens(grid)} LLM positions; training "
          f"{sum(p.numel() for p in llm.trainable_parameters()):,} parameters")

    optimizer = torch.optim.AdamW(llm.trainable_parameters(), lr=args.lr, weight_decay=0.0)
    for step in range(1, args.steps + 1):
        loss = llm(video, captions).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step == 1 or step % 10 == 0 or step == args.steps:
            print(f"step {step:4d}  caption loss {loss.item():.3f}")

    llm.eval()
    for caption, text in zip(captions, llm.generate(video, max_new_tokens=args.max_new_tokens)):
        print(f"target: {caption!r}\n  generated: {text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
