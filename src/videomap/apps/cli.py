"""The ``videomap`` command line: one console script, one subcommand per job.

Each subcommand lives in its own module and receives the remaining arguments, so that recipes with dotted
overrides (``videomap pretrain --config recipe.yaml optim.lr=1e-4``) are parsed where their schema is known.
Modules are imported only when their subcommand runs, keeping ``videomap --help`` instant.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module:function taking argv, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("videomap.apps.commands:pretrain_main", "frame-wise masked autoregressive pretraining"),
    "finetune": ("videomap.apps.commands:finetune_main", "fine-tune a backbone for video classification"),
    "eval": ("videomap.apps.commands:eval_main", "multi-view evaluation: top-1/top-5, per-class accuracy"),
    "extract": ("videomap.apps.commands:extract_main", "per-video features into safetensors shards"),
    "predict": ("videomap.apps.commands:predict_main", "top-k classes of video files or folders"),
    "convert": ("videomap.apps.convert:convert_main",
                "VideoMamba / image MAP checkpoints -> a videomap model directory"),
    "list-models": ("videomap.apps.cli:list_models_main", "the registered model names"),
    "bench": ("videomap.apps.cli:bench_main", "benchmarks: scan, backbone, encoder, roofline, gpu, entry, data"),
    "ablate": ("videomap.apps.ablate:ablate_main",
               "the ablation study: schedules, objectives, masking, label fractions, widths"),
    "demo": ("videomap.apps.demo:demo_main",
             "the main job: pretrain on real clips, fine-tune on few labels, compare with scratch"),
}

BENCHMARKS: dict[str, str] = {
    "scan": "videomap.apps.bench.scan:main",
    "backbone": "videomap.apps.bench.backbone:main",
    "encoder": "videomap.apps.bench.encoder:main",
    "gpu": "videomap.apps.bench.gpu:main",
    "entry": "videomap.apps.bench.entry:main",
    "data": "videomap.apps.bench.data:main",
    "roofline": "videomap.apps.bench.roofline:main",
}


def _call(target: str, argv: list[str]) -> int:
    module, function = target.split(":")
    return int(getattr(importlib.import_module(module), function)(argv) or 0)


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: videomap <command> [args...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `videomap <command> --help` for a command's options."]
    return "\n".join(lines)


def bench_main(argv: list[str]) -> int:
    """``videomap bench <name> [options]``."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        known = ", ".join(BENCHMARKS)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"videomap bench: unknown benchmark {argv[0]!r}; choose one of: {known}", file=sys.stderr)
            return 2
        print(f"usage: videomap bench {{{known}}} [options]")
        return 0
    return _call(BENCHMARKS[argv[0]], argv[1:])


def list_models_main(argv: list[str]) -> int:
    """``videomap list-models [PATTERN]``: one registered name per line."""
    from videomap.models import list_models

    print("\n".join(list_models(argv[0] if argv else None)))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from videomap import __version__

        print(f"videomap {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"videomap: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from videomap.ops.allocator import tune_cpu_allocator

    tune_cpu_allocator()
    return _call(COMMANDS[name][0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
