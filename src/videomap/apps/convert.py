"""``videomap convert SRC OUT``: the command line of :mod:`videomap.models.convert`."""

from __future__ import annotations

import argparse
import sys

from videomap.models.convert import MAP_NUM_HEADS, SOURCES, convert_checkpoint
from videomap.models.weights import CheckpointMismatchError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videomap convert",
        description="Convert a VideoMamba (video_sm or image_sm) or image MAP checkpoint into a videomap model "
                    "directory.",
    )
    parser.add_argument("src", help="upstream checkpoint (.pth/.pt/.bin/.safetensors)")
    parser.add_argument("out", help="output directory (config.json + model.safetensors + conversion.json)")
    parser.add_argument("--from", dest="source", choices=("auto",) + SOURCES, default="auto",
                        help="checkpoint layout (default: detected from the keys)")
    parser.add_argument("--model", default=None,
                        help="registered model to build (default: inferred for VideoMamba; MAP's own layer layout for MAP)")
    parser.add_argument("--num-frames", type=int, default=None,
                        help="frames the model is built for (image checkpoints: default 8)")
    parser.add_argument("--img-size", type=int, default=None, help="image size the model is built for")
    parser.add_argument("--tubelet-size", type=int, default=None,
                        help="image checkpoints (MAP, videomamba_image): frames per tubelet of the inflated stem")
    parser.add_argument("--num-heads", type=int, default=None, help=f"MAP: attention heads (MAP's default {MAP_NUM_HEADS})")
    parser.add_argument("--num-classes", type=int, default=None, help="classifier outputs (a new head if it differs)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="unpickle arbitrary objects (only for files from a source you trust)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="VideoMamba (video or image): report keys that do not fit instead of refusing")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    return parser


def convert_main(argv: list[str] | None = None) -> int:
    """``videomap convert SRC OUT [options]``; returns the exit status."""
    args = build_parser().parse_args(argv)
    keys = ("num_frames", "img_size", "num_classes", "tubelet_size", "num_heads")
    options = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    try:
        _, report = convert_checkpoint(
            args.src, args.out, source=args.source, name=args.model, trust_pickle=args.trust_pickle,
            strict=not args.allow_partial, overwrite=args.overwrite, **options,
        )
    except (CheckpointMismatchError, FileNotFoundError, FileExistsError, RuntimeError, ValueError, TypeError) as error:
        print(f"videomap convert: {error}", file=sys.stderr)
        return 1
    print(report.describe())
    print(f"wrote {args.out} (load it with videomap.VideoMAP.from_pretrained or create_model(..., checkpoint_path=...))")
    return 0


if __name__ == "__main__":
    sys.exit(convert_main())
