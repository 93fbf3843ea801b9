"""Multi-view evaluation of a video classifier (``videomap eval``), also fine-tuning's validation function.

Every test video is cut into ``data.test_clips`` temporal clips × ``data.test_crops`` spatial crops
(defaults from the dataset's preset: K400 4×3, SSv2 2×3, Breakfast 4×3, COIN 10×3, otherwise 1×1). The
model scores each view; the softmax probabilities are averaged over the views of a video, and that average
is the video's prediction. From the predictions of all videos:

* ``top1``, ``top5`` and ``mean_class_accuracy``, in percent;
* ``per_class_accuracy.csv``, ``confusion_matrix.csv``, ``confusion_matrix.png`` and ``predictions.csv``;
* ``results.json``, which also lists every video that could not be decoded, with the reason. Those videos
  are left out of the denominator (DESIGN §5), and ``num_failed`` says how many.

Helpers shared with fine-tuning and feature extraction live here too: reading a split of the annotations
with the right class order, building the test-mode dataset, loading a model folder and its class names.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from ..data import (
    Annotations,
    FailureLog,
    VideoClassificationDataset,
    VideoTestTransform,
    collate_videos,
    detect_format,
    failed_video_records,
    get_preset,
    read_annotations,
    read_class_names,
    seed_worker,
    skip_failed,
)
from ..data.presets import DatasetPreset
from ..models.weights import CLASSES_NAME, CONFIG_NAME, atomic_write
from .config import Config, save_config
from .metrics import confusion_matrix, mean_class_accuracy, per_class_accuracy, to_float, topk_accuracy
from .runtime import Runtime, runtime_scope
from .workers import WorkerLoader

__all__ = [
    "CLASSES_FILE",
    "Predictions",
    "save_class_names",
    "load_class_names",
    "data_format",
    "dataset_preset",
    "test_views",
    "read_split",
    "build_test_dataset",
    "load_model",
    "average_views",
    "progress_iter",
    "predict",
    "classification_metrics",
    "validate",
    "classifier_outputs",
    "run_eval",
]

log = logging.getLogger("videomap.train")

#: Class names saved beside ``config.json`` in a model folder (a JSON list, index = label).
CLASSES_FILE = CLASSES_NAME  # written into every fine-tuned model folder

# Annotation formats that identify a dataset, and so its preset (test views, flip).
_FORMAT_PRESETS = {"kinetics_csv": "k400", "ssv2": "ssv2", "breakfast": "breakfast", "coin": "coin"}


# ------------------------------------------------------------------------------------------ class names


def save_class_names(directory: str | os.PathLike, classes: Sequence[str]) -> Path:
    """Write ``directory/classes.json`` so that predictions of the model saved there can be named."""
    text = json.dumps([str(c) for c in classes], indent=1, ensure_ascii=False) + "\n"
    return atomic_write(Path(directory) / CLASSES_FILE, lambda f: f.write(text), mode="w")


def load_class_names(directory: str | os.PathLike | None) -> list[str] | None:
    """The names saved by :func:`save_class_names`, or ``None`` when the folder has none."""
    if directory is None:
        return None
    path = Path(directory) / CLASSES_FILE
    return read_class_names(path) if path.is_file() else None


# ---------------------------------------------------------------------------------------------- data


def data_format(cfg: Config, path: str | None = None) -> str:
    """``data.format``, or the format detected from ``path`` (default: the first list set) when ``auto``."""
    if cfg.data.format != "auto":
        return cfg.data.format
    path = path or cfg.data.train or cfg.data.val or cfg.data.test
    return detect_format(path) if path else "auto"


def dataset_preset(cfg: Config) -> DatasetPreset | None:
    """The preset of the dataset whose format the annotations are in (``None`` for plain lists/folders)."""
    name = _FORMAT_PRESETS.get(data_format(cfg))
    return get_preset(name) if name else None


def test_views(cfg: Config) -> tuple[int, int]:
    """``(clips, crops)``: ``data.test_clips``/``test_crops``, else the dataset preset's, else ``(1, 1)``."""
    preset = dataset_preset(cfg)
    clips = cfg.data.test_clips or (preset.test_clips if preset else 1)
    crops = cfg.data.test_crops or (preset.test_crops if preset else 1)
    return int(clips), int(crops)


def read_split(cfg: Config, split: str, classes: Sequence[str] | None = None) -> Annotations:
    """Read ``data.<split>`` (``train``, ``val`` or ``test``) with the configured format and root.

    ``classes`` (default ``data.classes``) fixes the class order, so that string-labelled formats (Kinetics
    CSV, folders) number their labels as the model does. COIN reads its ``training`` or ``testing`` subset.
    """
    path = getattr(cfg.data, split)
    if not path:
        raise ValueError(f"data.{split} is not set: give the annotation file of the {split} split")
    names = classes if classes is not None else cfg.data.classes
    subset = "training" if split == "train" else "testing"
    return read_annotations(path, cfg.data.format, cfg.data.root or None, classes=names, split=subset)


def build_test_dataset(cfg: Config, annotations: Annotations, clips: int = 1, crops: int = 1,
                       classes: Sequence[str] | None = None) -> VideoClassificationDataset:
    """Test-mode dataset: every item holds ``clips × crops`` views ``(V, C, T, S, S)`` of one video.

    Short side resized to ``data.img_size``, then ``crops`` crops of that side along the long side.
    """
    size = cfg.data.img_size
    return VideoClassificationDataset(
        annotations, classes, mode="test", num_frames=cfg.data.num_frames, sampling=cfg.data.sampling,
        stride=cfg.data.frame_stride, test_clips=clips, test_crops=crops,
        transform=VideoTestTransform(size, short_side=size, num_crops=crops), input_size=size,
        seed=cfg.train.seed,
    )


# --------------------------------------------------------------------------------------------- model


def load_model(cfg: Config, **overrides: Any) -> nn.Module:
    """The model in ``model.checkpoint`` at ``data.num_frames`` × ``data.img_size``, through
    :func:`videomap.models.load_model`.

    A folder with ``config.json`` rebuilds exactly the saved architecture; a bare weights file is loaded
    into ``model.name``. Position embeddings are resampled when the data's frames or size differ from the
    checkpoint's. ``model.kwargs`` and ``overrides`` change further config fields.
    """
    from ..models import load_model as load_saved_model

    checkpoint = cfg.model.checkpoint
    if not checkpoint:
        raise ValueError("model.checkpoint is not set: give a model folder (config.json + model.safetensors), "
                         "e.g. a fine-tuning run's best/ folder")
    fields = dict(cfg.model.kwargs, num_frames=cfg.data.num_frames, img_size=cfg.data.img_size, **overrides)
    saved_config = Path(checkpoint) / CONFIG_NAME
    if saved_config.is_file():
        saved = json.loads(saved_config.read_text())
        if (saved.get("num_frames"), saved.get("img_size")) != (fields["num_frames"], fields["img_size"]):
            log.warning("%s was saved for %s frames of %s px; evaluating at %d frames of %d px resamples its "
                        "position embeddings (set data.num_frames / data.img_size to keep them)", checkpoint,
                        saved.get("num_frames"), saved.get("img_size"), fields["num_frames"], fields["img_size"])
    return load_saved_model(checkpoint, cfg.model.name, **fields)


# ----------------------------------------------------------------------------------------- inference


@dataclasses.dataclass
class Predictions:
    """View-averaged predictions of the videos that decoded, ordered by dataset index.

    ``index``, ``label``: ``int64 (N,)``; ``probs``: ``float32 (N, K)`` (rows sum to 1); ``paths``: ``N``
    strings; ``failures``: the videos that could not be decoded (not in the tensors).
    """

    index: torch.Tensor
    label: torch.Tensor
    probs: torch.Tensor
    paths: list[str]
    failures: FailureLog


def average_views(logits: torch.Tensor, num_views: int) -> torch.Tensor:
    """Softmax per view, then the mean over each video's views.

    logits: ``(B·V, K)`` with the ``V`` views of a video adjacent → ``(B, K)`` probabilities.
    """
    probs = F.softmax(logits.float(), dim=-1)
    return probs.view(-1, num_views, probs.shape[-1]).mean(dim=1)


def _forward_in_chunks(model: Callable[[torch.Tensor], torch.Tensor], clips: torch.Tensor,
                       chunk: int) -> torch.Tensor:
    """``model`` over ``clips (M, C, T, H, W)`` at most ``chunk`` clips at a time → ``(M, K)``."""
    return torch.cat([model(clips[i:i + chunk]) for i in range(0, clips.shape[0], chunk)])


def progress_iter(iterable, total: int, enabled: bool, desc: str):
    """A tqdm bar over ``iterable`` when ``enabled`` and stderr is a terminal; ``iterable`` itself otherwise."""
    if not enabled or not sys.stderr.isatty():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", dynamic_ncols=True, leave=False, file=sys.stderr)


@torch.no_grad()
def predict(model: Callable[[torch.Tensor], torch.Tensor], dataset, *, clips_per_forward: int = 8,
            runtime: Runtime | None = None, num_workers: int = 0, progress: bool = False,
            desc: str = "eval") -> Predictions:
    """Score every video of ``dataset`` and average its views.

    Args:
        model: maps clips ``(M, C, T, H, W)`` to logits ``(M, K)``; an ``nn.Module`` is put in eval mode for
            the call and returned to its previous mode.
        dataset: items ``{"video": (V, C, T, H, W) or (C, T, H, W), "label", "index", "path"}`` or
            ``FailedVideo`` markers (:class:`~videomap.data.VideoClassificationDataset`).
        clips_per_forward: clips per forward pass (the memory knob); a loader batch holds as many videos as
            fit.
        runtime: under DDP every rank scores ``index % world_size == rank`` and the results are gathered, so
            every rank returns all predictions.
        num_workers: DataLoader workers.
    """
    runtime = runtime or Runtime()
    views = max(1, getattr(dataset, "num_views", 1))
    shard = list(range(runtime.rank, len(dataset), runtime.world_size))
    loader = WorkerLoader(Subset(dataset, shard), batch_size=max(1, clips_per_forward // views), shuffle=False,
                        num_workers=num_workers, collate_fn=collate_videos, worker_init_fn=seed_worker)
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    failures = FailureLog(log, context="evaluation")
    out: dict[str, list] = {"index": [], "label": [], "probs": [], "paths": []}
    try:
        batches = progress_iter(skip_failed(loader, failures), len(loader), progress and runtime.is_main, desc)
        for batch in batches:
            video = batch["video"]
            if video.ndim == 5:  # one view per item (train-mode datasets)
                video = video.unsqueeze(1)
            v = video.shape[1]
            clips = video.flatten(0, 1).to(runtime.device, non_blocking=True)
            with runtime.autocast():
                logits = _forward_in_chunks(model, clips, max(1, clips_per_forward))
            out["probs"].append(average_views(logits, v).cpu())
            out["index"].append(batch["index"])
            out["label"].append(batch["label"])
            out["paths"].extend(batch["path"])
    finally:
        if was_training:
            model.train()
    return _gather_predictions(out, failures, runtime)


def _gather_predictions(local: dict[str, list], failures: FailureLog, runtime: Runtime) -> Predictions:
    """Concatenate this rank's batches, gather every rank's, and order them by dataset index."""
    part = {
        "index": torch.cat(local["index"]) if local["index"] else torch.zeros(0, dtype=torch.long),
        "label": torch.cat(local["label"]) if local["label"] else torch.zeros(0, dtype=torch.long),
        "probs": torch.cat(local["probs"]) if local["probs"] else None,
        "paths": local["paths"],
        "failed": (failures.count, dict(failures.reasons)),
    }
    parts = runtime.all_gather_object(part)
    merged = FailureLog(log, context="evaluation")
    for p in parts:
        merged.count += p["failed"][0]
        for path, reason in p["failed"][1].items():
            merged.reasons.setdefault(path, reason)
    probs = [p["probs"] for p in parts if p["probs"] is not None]
    index = torch.cat([p["index"] for p in parts])
    order = torch.argsort(index)
    paths = [path for p in parts for path in p["paths"]]
    return Predictions(
        index=index[order],
        label=torch.cat([p["label"] for p in parts])[order],
        probs=torch.cat(probs)[order] if probs else torch.zeros(0, 0),
        paths=[paths[i] for i in order.tolist()],
        failures=merged,
    )


# ------------------------------------------------------------------------------------------- metrics


def _percent(x: float) -> float | None:
    return to_float(100.0 * x) if not math.isnan(x) else None


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Top-1/top-5/mean-class accuracy (percent), mean NLL and the confusion matrix.

    probs: ``(N, K)`` video probabilities; labels: ``(N,)``. With ``N = 0`` the accuracies are ``None``.
    """
    if probs.shape[0] == 0:
        conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
        return {"top1": None, "top5": None, "mean_class_accuracy": None, "loss": None, "confusion": conf}
    top = topk_accuracy(probs, labels, ks=(1, 5))
    conf = confusion_matrix(probs, labels, num_classes)
    nll = -torch.log(probs.gather(1, labels.view(-1, 1)).clamp_min(1e-12)).mean().item()
    return {"top1": _percent(top[1]), "top5": _percent(top[5]), "mean_class_accuracy": _percent(mean_class_accuracy(conf)),
            "loss": to_float(nll), "confusion": conf}


def validate(model: nn.Module, dataset, cfg: Config, runtime: Runtime | None = None) -> dict[str, Any]:
    """Fine-tuning's validation pass: ``{"top1", "top5", "mean_class_accuracy", "loss", "num_videos",
    "num_failed"}`` over ``dataset`` (single view unless the dataset holds more)."""
    preds = predict(model, dataset, clips_per_forward=cfg.eval.batch_size, runtime=runtime,
                    num_workers=cfg.data.num_workers, desc="val")
    metrics = classification_metrics(preds.probs, preds.label, len(dataset.classes))
    metrics.pop("confusion")
    metrics.update(num_videos=int(preds.label.numel()), num_failed=preds.failures.num_videos)
    return metrics


# ------------------------------------------------------------------------------------------- reports


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    def write(f):
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)

    atomic_write(path, write, mode="w")


def write_per_class_csv(path: Path, confusion: torch.Tensor, classes: Sequence[str]) -> None:
    """``class_index, class_name, videos, correct, accuracy`` (percent; empty for a class with no video)."""
    acc = per_class_accuracy(confusion)
    rows = []
    for i, name in enumerate(classes):
        videos, correct = int(confusion[i].sum()), int(confusion[i, i])
        rows.append([i, name, videos, correct, "" if videos == 0 else f"{100.0 * acc[i].item():.4f}"])
    _write_csv(path, ["class_index", "class_name", "videos", "correct", "accuracy"], rows)


def write_confusion_png(path: Path, confusion: torch.Tensor, classes: Sequence[str], title: str) -> bool:
    """Row-normalised confusion matrix as a picture; ``False`` (with a hint) when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("confusion_matrix.png not written: matplotlib is not installed (pip install matplotlib, or "
                    "pip install 'videomap[plot]'); confusion_matrix.csv has the numbers")
        return False
    k = confusion.shape[0]
    rows = confusion.double() / confusion.sum(dim=1, keepdim=True).clamp_min(1)
    side = min(4 + 0.3 * k, 30)
    fig = Figure(figsize=(side, side))
    FigureCanvasAgg(fig)  # Figure + Agg canvas: no pyplot, so the caller's plotting state is untouched
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(rows.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= 60:  # beyond that, names are unreadable anyway
        ax.set_xticks(range(k), [str(c) for c in classes], rotation=90, fontsize=7)
        ax.set_yticks(range(k), [str(c) for c in classes], fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    return True


def write_reports(out_dir: Path, results: dict[str, Any], preds: Predictions, confusion: torch.Tensor,
                  classes: Sequence[str]) -> None:
    """``results.json``, per-class and confusion CSVs, the confusion PNG and ``predictions.csv``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, allow_nan=False) + "\n"
    atomic_write(out_dir / "results.json", lambda f: f.write(text), mode="w")
    write_per_class_csv(out_dir / "per_class_accuracy.csv", confusion, classes)
    _write_csv(out_dir / "confusion_matrix.csv", ["true \\ predicted", *classes],
               [[name, *confusion[i].tolist()] for i, name in enumerate(classes)])
    top1 = results["top1"]
    title = f"top-1 {top1:.2f}% on {results['num_videos']} videos" if top1 is not None else "no video decoded"
    write_confusion_png(out_dir / "confusion_matrix.png", confusion, classes, title)
    pred = preds.probs.argmax(dim=1).tolist() if preds.probs.numel() else []
    conf = preds.probs.max(dim=1).values.tolist() if preds.probs.numel() else []
    _write_csv(out_dir / "predictions.csv", ["path", "label", "prediction", "probability"],
               [[p, int(y), int(k), f"{c:.6f}"] for p, y, k, c in zip(preds.paths, preds.label.tolist(), pred, conf)])


# ----------------------------------------------------------------------------------------------- run


def eval_output_dir(cfg: Config) -> Path:
    """``eval.output_dir``, else ``train.output_dir/eval``."""
    return Path(cfg.eval.output_dir) if cfg.eval.output_dir else Path(cfg.train.output_dir) / "eval"


def classifier_outputs(model: nn.Module, checkpoint: str | None) -> int:
    """The number of classes ``model`` predicts; raises ``ValueError`` for a model without a head."""
    num_classes = int(getattr(model, "num_classes", 0))
    if num_classes <= 0:
        raise ValueError(f"{checkpoint} has no classifier head (num_classes=0): fine-tune it first, "
                         "or use `videomap extract` for its features")
    return num_classes


def model_classes(cfg: Config, num_classes: int) -> list[str] | None:
    """Class names to number the test labels with: the model folder's, else ``data.classes``."""
    names = load_class_names(cfg.model.checkpoint) if cfg.model.checkpoint else None
    if names is None and cfg.data.classes:
        names = read_class_names(cfg.data.classes)
    if names is not None and len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a model with {num_classes} outputs")
    return names


def _fit_classes(names: list[str], num_classes: int) -> list[str]:
    # A test list may not reach the model's last classes; their names are then just their indices.
    if len(names) > num_classes:
        raise ValueError(f"the test annotations have {len(names)} classes but the model predicts {num_classes}")
    return list(names) + [str(i) for i in range(len(names), num_classes)]


def run_eval(cfg: Config, *, model: nn.Module | None = None, runtime: Runtime | None = None) -> dict[str, Any]:
    """Evaluate ``model.checkpoint`` (or ``model``) on ``data.test`` with multi-view testing; see the module
    docstring. Writes the reports and the resolved config to :func:`eval_output_dir`; returns the results."""
    with runtime_scope(cfg, runtime) as runtime:
        model = (model if model is not None else load_model(cfg)).to(runtime.device)
        num_classes = classifier_outputs(model, cfg.model.checkpoint)
        names = model_classes(cfg, num_classes)
        annotations = read_split(cfg, "test", classes=names)
        classes = _fit_classes(names or annotations.classes, num_classes)
        clips, crops = test_views(cfg)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, test_clips=clips, test_crops=crops))
        dataset = build_test_dataset(cfg, annotations, clips, crops, classes=classes)
        log.info("evaluating %s on %d videos of %s, %d clips x %d crops per video", cfg.model.checkpoint or "the model",
                 len(dataset), cfg.data.test, clips, crops)
        preds = predict(model, dataset, clips_per_forward=cfg.eval.batch_size, runtime=runtime,
                        num_workers=cfg.data.num_workers, progress=True)
        metrics = classification_metrics(preds.probs, preds.label, num_classes)
        confusion = metrics.pop("confusion")
        failed = preds.failures
        results = {
            "top1": metrics["top1"], "top5": metrics["top5"], "mean_class_accuracy": metrics["mean_class_accuracy"],
            "loss": metrics["loss"], "num_videos": int(preds.label.numel()), "num_listed": len(dataset),
            "num_failed": failed.num_videos,
            "failed_videos": failed_video_records(failed.reasons),
            "note": (f"{failed.num_videos} of {len(dataset)} listed videos could not be decoded and are excluded "
                     f"from the denominator; accuracies are over the {preds.label.numel()} that decoded"),
            "test_clips": clips, "test_crops": crops, "num_classes": num_classes,
            "checkpoint": cfg.model.checkpoint, "test": cfg.data.test,
        }
        out_dir = eval_output_dir(cfg)
        if runtime.is_main:
            write_reports(out_dir, results, preds, confusion, classes)
            save_config(cfg, out_dir / "config.yaml")
            _log_results(results, out_dir)
        runtime.barrier()
        return results


def _log_results(results: dict[str, Any], out_dir: Path) -> None:
    def fmt(v):
        return "n/a" if v is None else f"{v:.2f}%"

    log.info("top-1 %s | top-5 %s | mean class accuracy %s | %d videos | %d failed | reports in %s",
             fmt(results["top1"]), fmt(results["top5"]), fmt(results["mean_class_accuracy"]), results["num_videos"],
             results["num_failed"], out_dir)
    if results["num_failed"]:
        log.warning(results["note"])
