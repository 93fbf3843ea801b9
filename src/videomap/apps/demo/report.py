"""The demo's report: reconstruction pictures, the comparison table with its verdict, and plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from videomap.data import decode_video
from videomap.train.config import Config


# ------------------------------------------------------------------------------------ reconstructions


@torch.no_grad()
def save_reconstructions(cfg: Config, clips: Sequence[Path], path: Path, seed: int) -> Path:
    """Original / masked / predicted frames of ``clips`` by the pretrained objective, one block per clip.

    The objective (encoder and decoder) is rebuilt from the pretraining run's last checkpoint; each clip is
    centre-cropped, and its mask is drawn from ``seed`` so the picture is the same on every run.
    """
    from videomap.data.transforms import VideoTestTransform
    from videomap.pretrain import reconstruction_grid, save_png
    from videomap.train.checkpoint import checkpoint_path, load_checkpoint
    from videomap.train.pretrain_run import build_pretrainer

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
