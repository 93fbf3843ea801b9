"""Entry points of ``videomap pretrain``, ``finetune``, ``eval``, ``extract`` and ``predict``.

Each takes the arguments after the subcommand: an optional ``--config RECIPE.yaml`` and any number of dotted
overrides (``optim.lr=1e-4``), and returns an exit code (0 success, 1 a run that failed, 2 a bad command
line). ``--help`` lists every config key the command reads, with its type, default and meaning.

``predict`` also takes the videos (files or folders) and ``--topk K``.

For ``eval``, ``extract`` and ``predict`` the frames and image size default to the model folder's own
(``config.json``) unless the recipe or an override sets them, so ``videomap eval
model.checkpoint=runs/x/best data.test=test.txt`` needs nothing else.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys
import typing
from pathlib import Path
from typing import Callable, Sequence

from videomap.train.config import Config, ConfigError, apply_overrides, config_from_dict, load_yaml_recipe, parse_overrides

__all__ = ["pretrain_main", "finetune_main", "eval_main", "extract_main", "predict_main", "config_help"]

EXAMPLES = {
    "pretrain": """\
  videomap pretrain --config configs/pretrain/videomap_tiny_demo.yaml data.train=videos.txt optim.lr=1e-4
  videomap pretrain data.train=videos.txt model.name=videomap_tiny data.num_frames=8 data.img_size=64 \\
      train.max_steps=200 pretrain.recon_every=50 train.output_dir=runs/pretrain
  torchrun --nproc_per_node=2 -m videomap pretrain --config RECIPE.yaml""",
    "finetune": """\
  videomap finetune --config configs/finetune/k400_videomap_small.yaml model.checkpoint=runs/pretrain/encoder
  videomap finetune data.train=train.txt data.val=val.txt data.classes=classes.txt model.name=videomap_tiny \\
      data.num_frames=8 data.img_size=64 train.max_steps=300 train.output_dir=runs/ft
  torchrun --nproc_per_node=2 -m videomap finetune --config RECIPE.yaml""",
    "eval": """\
  videomap eval model.checkpoint=runs/ft/best data.test=test.txt
  videomap eval --config configs/finetune/ssv2_videomap_small.yaml model.checkpoint=runs/ssv2/best \\
      data.test_clips=2 data.test_crops=3 eval.output_dir=runs/ssv2/test""",
    "extract": """\
  videomap extract model.checkpoint=runs/pretrain/encoder data.test=videos.txt eval.pool=frame eval.layer=-2 \\
      eval.output_dir=features/""",
    "predict": """\
  videomap predict clip.mp4 videos/ model.checkpoint=runs/ft/best
  videomap predict videos/ model.checkpoint=converted/ --topk 3 data.test_clips=4 data.test_crops=3 \
      eval.output_dir=predictions/""",
}

# The usage line of commands that take more than a recipe and overrides.
USAGE = {"predict": "videomap predict VIDEO_OR_FOLDER... model.checkpoint=DIR [--topk K] [--config RECIPE.yaml] "
                    "[section.key=value ...]"}

DESCRIPTIONS = {
    "pretrain": "Frame-wise masked autoregressive pretraining; writes OUTPUT/encoder/, checkpoints/last.pt "
                "(train.resume=auto continues it) and, for pixel targets, reconstruction pictures.",
    "finetune": "Fine-tune a video classifier: layer-wise lr decay, drop path, Mixup/CutMix, label smoothing, "
                "EMA, validation and best-checkpoint selection into OUTPUT/best/.",
    "eval": "Multi-view evaluation: softmax averaged over clips x crops per video; writes results.json "
            "(top1, top5, mean_class_accuracy, num_videos, failed_videos), per-class CSV and a confusion matrix.",
    "extract": "Features per video (eval.pool cls|avg|frame at eval.layer) into safetensors shards with an "
               "index.csv (path, label, shard, key).",
    "predict": "Top-k classes of each video (files, or folders searched recursively), softmax averaged over "
               "data.test_clips x data.test_crops views; prints a table and writes predictions.json and "
               "predictions.csv. A video that cannot be decoded is reported and the others go on.",
}

# Sections each command reads (the others are accepted, so one recipe serves every command).
SECTIONS = {
    "pretrain": ("model", "data", "train", "optim", "pretrain"),
    "finetune": ("model", "data", "train", "optim", "finetune", "eval"),
    "eval": ("model", "data", "eval", "train"),
    "extract": ("model", "data", "eval", "train"),
    "predict": ("model", "data", "eval", "train"),
}


# ------------------------------------------------------------------------------------------------ help


def _field_comments(section_cls: type) -> dict[str, str]:
    """The ``#:`` comment above each field in the dataclass source (the config's own documentation)."""
    try:
        lines = inspect.getsource(section_cls).splitlines()
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in lines:
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
            continue
        m = re.match(r"(\w+)\s*:", text)
        if m and pending:
            docs[m.group(1)] = " ".join(pending)
        pending = []
    return docs


def _type_text(tp) -> str:
    # Generic aliases (int | None, dict[str, Any]) print their arguments; plain classes their name.
    if typing.get_origin(tp) is not None:
        return str(tp).replace("typing.", "").replace("NoneType", "None")
    return getattr(tp, "__name__", str(tp))


def config_help(sections: Sequence[str]) -> str:
    """Every key of ``sections`` as ``section.key  type = default  meaning``."""
    hints = typing.get_type_hints(Config)
    lines = []
    for name in sections:
        cls = hints[name]
        docs = _field_comments(cls)
        default = cls()
        field_hints = typing.get_type_hints(cls)
        lines.append(f"  {name}:")
        for f in dataclasses.fields(cls):
            value = getattr(default, f.name)
            head = f"    {name}.{f.name} ({_type_text(field_hints[f.name])}) = {value!r}"
            lines.append(head + (f"\n        {docs[f.name]}" if f.name in docs else ""))
    return "\n".join(lines)


def _help(command: str) -> str:
    usage = USAGE.get(command, f"videomap {command} [--config RECIPE.yaml] [section.key=value ...]")
    return (f"usage: {usage}\n\n"
            f"{DESCRIPTIONS[command]}\n\nexamples:\n{EXAMPLES[command]}\n\n"
            f"config keys (set them in the recipe or as section.key=value; the resolved config is saved with the "
            f"run):\n{config_help(SECTIONS[command])}\n")


# ------------------------------------------------------------------------------------------- parsing


def _parse(command: str, argv: Sequence[str]) -> tuple[Config | None, set[str], int]:
    """``(config, keys set by the recipe or overrides, exit code)``; the config is ``None`` when the command
    line was only ``--help`` or was wrong."""
    parser = argparse.ArgumentParser(prog=f"videomap {command}", add_help=False)
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("--config", "-c", default=None)
    parser.add_argument("overrides", nargs="*")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as e:  # argparse prints its own message
        return None, set(), int(e.code or 2)
    if args.help:
        print(_help(command))
        return None, set(), 0
    try:
        recipe = load_yaml_recipe(args.config) if args.config else {}
        cfg = config_from_dict(recipe)
        cfg = apply_overrides(cfg, args.overrides) if args.overrides else cfg
        given = parse_overrides(args.overrides)
    except ConfigError as e:
        print(f"videomap {command}: error: {e}", file=sys.stderr)
        return None, set(), 2
    explicit = {f"{s}.{k}" for part in (recipe, given) for s, keys in part.items() if isinstance(keys, dict) for k in keys}
    return cfg, explicit, 0


def _with_checkpoint_sizes(cfg: Config, explicit: set[str]) -> Config:
    """Frames and image size from the model folder's ``config.json`` unless the user set them."""
    ckpt = cfg.model.checkpoint
    path = Path(ckpt) / "config.json" if ckpt else None
    if path is None or not path.is_file():
        return cfg
    saved = json.loads(path.read_text())
    changes = {}
    if "data.num_frames" not in explicit and isinstance(saved.get("num_frames"), int):
        changes["num_frames"] = saved["num_frames"]
    if "data.img_size" not in explicit and isinstance(saved.get("img_size"), int):
        changes["img_size"] = saved["img_size"]
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **changes)) if changes else cfg


def _run(command: str, argv: Sequence[str], job: Callable[[Config, set[str]], object]) -> int:
    from videomap.data import AnnotationError
    from videomap.train.checkpoint import CheckpointError
    from videomap.train.loop import NonFiniteLossError

    cfg, explicit, code = _parse(command, argv)
    if cfg is None:
        return code
    try:
        job(cfg, explicit)
    except ConfigError as e:
        print(f"videomap {command}: error: {e}", file=sys.stderr)
        return 2
    except (AnnotationError, CheckpointError, NonFiniteLossError, FileNotFoundError, ValueError) as e:
        print(f"videomap {command}: error: {e}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------------ commands


def pretrain_main(argv: Sequence[str]) -> int:
    """``videomap pretrain [--config RECIPE] [overrides]``."""
    def job(cfg: Config, explicit: set[str]):
        from videomap.train.pretrain_run import run_pretrain

        result = run_pretrain(cfg)
        print(f"videomap pretrain: {result['step']} steps, encoder saved to {result['encoder']}"
              + (" (interrupted; resume with train.resume=auto)" if result["interrupted"] else ""))
        return result

    return _run("pretrain", argv, job)


def finetune_main(argv: Sequence[str]) -> int:
    """``videomap finetune [--config RECIPE] [overrides]``."""
    def job(cfg: Config, explicit: set[str]):
        from videomap.train.finetune import run_finetune

        return run_finetune(cfg)

    return _run("finetune", argv, job)


def eval_main(argv: Sequence[str]) -> int:
    """``videomap eval [--config RECIPE] model.checkpoint=DIR data.test=LIST [overrides]``."""
    def job(cfg: Config, explicit: set[str]):
        from videomap.train.evaluate import run_eval

        return run_eval(_with_checkpoint_sizes(cfg, explicit))

    return _run("eval", argv, job)


def extract_main(argv: Sequence[str]) -> int:
    """``videomap extract [--config RECIPE] model.checkpoint=DIR data.test=LIST [eval.pool=...] [eval.layer=...]``."""
    def job(cfg: Config, explicit: set[str]):
        from videomap.train.extract import run_extract

        return run_extract(_with_checkpoint_sizes(cfg, explicit))

    return _run("extract", argv, job)


def _split_predict_args(argv: Sequence[str]) -> tuple[list[str], list[str], int | None]:
    """``(videos, recipe/override arguments, k)``: an argument with ``=`` that is not an existing file is
    an override, anything else not an option is a video or a folder. ``k`` is ``None`` when ``--topk``
    was not a positive whole number."""
    videos: list[str] = []
    rest: list[str] = []
    k: int | None = 5
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-k", "--topk") or arg.startswith("--topk="):
            value = arg.split("=", 1)[1] if "=" in arg else (args.pop(0) if args else "")
            k = int(value) if value.isdigit() and int(value) > 0 else None
        elif arg in ("-c", "--config"):
            rest += [arg] + ([args.pop(0)] if args else [])
        elif arg.startswith("-") or ("=" in arg and not Path(arg).exists()):
            rest.append(arg)
        else:
            videos.append(arg)
    return videos, rest, k


def predict_main(argv: Sequence[str]) -> int:
    """``videomap predict VIDEO_OR_FOLDER... model.checkpoint=DIR [--topk K] [overrides]``."""
    videos, rest, k = _split_predict_args(argv)
    if "-h" in rest or "--help" in rest:
        print(_help("predict"))
        return 0
    if k is None:
        print("videomap predict: error: --topk takes a positive whole number", file=sys.stderr)
        return 2
    if not videos:
        print(f"videomap predict: error: name at least one video or folder\nusage: {USAGE['predict']}",
              file=sys.stderr)
        return 2
    outcome: dict[str, object] = {}

    def job(cfg: Config, explicit: set[str]):
        from videomap.train.prediction import format_table, run_predict

        result = run_predict(_with_checkpoint_sizes(cfg, explicit), videos, k=k)
        print(format_table(result["predictions"]))
        print(f"videomap predict: {result['num_videos'] - result['num_failed']} of {result['num_videos']} videos "
              f"predicted; predictions.json and predictions.csv in {result['output_dir']}")
        outcome.update(result)

    code = _run("predict", rest, job)
    # Every video failed: nothing was predicted, which a script should see.
    return 1 if code == 0 and outcome.get("num_failed") == outcome.get("num_videos") else code
