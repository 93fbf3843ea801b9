"""Class predictions for videos on disk (``videomap predict``).

The same multi-view scoring as ``videomap eval`` (softmax averaged over ``clips × crops`` views), on videos
named on the command line instead of an annotation list: files, or folders searched recursively for video
files. Each video gets its top-k class names and probabilities. A video that cannot be decoded is reported
with the reason and never stops the others; it is never replaced by another.

Writes ``predictions.json`` (every video in the order given, with ``topk`` or ``error``) and
``predictions.csv`` (one row per decoded video) to ``eval.output_dir`` (default
``train.output_dir/predict``), and prints a table.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data import VIDEO_EXTENSIONS, Annotations, VideoRecord
from .checkpoint import atomic_write
from .config import Config, save_config
from .evaluate import build_test_dataset, classifier_outputs, load_model, model_classes, predict, test_views
from .runtime import Runtime, setup_logging

__all__ = ["find_videos", "top_k", "run_predict", "format_table"]

log = logging.getLogger("videomap.train")


def find_videos(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Video files named by ``inputs``, in the order given; a folder contributes its video files (by
    extension, searched recursively, sorted). A name that does not exist raises ``FileNotFoundError``."""
    found: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
            if not inside:
                log.warning("%s: no video files (%s) inside", path, ", ".join(VIDEO_EXTENSIONS))
            found += [str(p) for p in inside]
        elif path.is_file() or path.is_symlink():
            found.append(str(path))  # any extension: the decoder decides, and reports it if it cannot
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    if not found:
        raise FileNotFoundError("no video to predict: name video files or folders that hold some")
    return found


def top_k(probs: torch.Tensor, classes: Sequence[str], k: int) -> list[list[dict[str, Any]]]:
    """``probs (N, K)`` → for each row, its ``min(k, K)`` most probable classes as
    ``{"class", "index", "prob"}``, most probable first."""
    values, indices = probs.float().topk(min(k, probs.shape[-1]), dim=-1)
    return [[{"class": classes[i], "index": i, "prob": float(v)} for v, i in zip(vs.tolist(), ix.tolist())]
            for vs, ix in zip(values, indices)]


def format_table(rows: Sequence[dict[str, Any]], width: int = 60) -> str:
    """The terminal table: one line per video, its top-k as ``name (p%)`` or its error."""
    name_width = min(width, max([len(r["path"]) for r in rows] + [5]))
    lines = [f"{'video':<{name_width}}  prediction"]
    for r in rows:
        path = r["path"] if len(r["path"]) <= name_width else "…" + r["path"][-(name_width - 1):]
        if "error" in r:
            text = f"error: {r['error']}"
        else:
            text = ", ".join(f"{p['class']} ({100 * p['prob']:.1f}%)" for p in r["topk"])
        lines.append(f"{path:<{name_width}}  {text}")
    return "\n".join(lines)


def _write_outputs(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "predictions.json", lambda f: f.write(json.dumps(rows, indent=1) + "\n"), mode="w")
    k = max((len(r["topk"]) for r in rows if "topk" in r), default=0)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path"] + [f"{field}{j + 1}" for j in range(k) for field in ("class", "prob")])
    for r in rows:
        if "topk" in r:
            writer.writerow([r["path"]] + [x for p in r["topk"] for x in (p["class"], f"{p['prob']:.6f}")])
    atomic_write(out_dir / "predictions.csv", lambda f: f.write(buffer.getvalue()), mode="w")


def run_predict(cfg: Config, inputs: Sequence[str | os.PathLike], k: int = 5) -> dict[str, Any]:
    """Predict the classes of the videos named by ``inputs`` with ``model.checkpoint``.

    Returns ``{"predictions": rows, "num_videos", "num_failed", "output_dir"}`` where each row is
    ``{"path", "topk": [{"class", "index", "prob"}, ...]}`` or ``{"path", "error"}``, in input order.
    """
    if k < 1:
        raise ValueError(f"top-k must be at least 1, got {k}")
    paths = find_videos(inputs)
    runtime = Runtime.from_env(cfg.train.device, cfg.train.precision)
    setup_logging(runtime.rank)
    try:
        model = load_model(cfg).to(runtime.device)
        num_classes = classifier_outputs(model, cfg.model.checkpoint)
        names = model_classes(cfg, num_classes)
        classes = list(names) if names is not None else [str(i) for i in range(num_classes)]
        clips, crops = test_views(cfg)
        # Labels are unknown; 0 is a placeholder the dataset needs and nothing reads.
        annotations = Annotations([VideoRecord(p, 0) for p in paths], classes)
        dataset = build_test_dataset(cfg, annotations, clips, crops, classes=classes)
        log.info("predicting %d videos with %s, %d clips x %d crops per video", len(paths), cfg.model.checkpoint,
                 clips, crops)
        preds = predict(model, dataset, clips_per_forward=cfg.eval.batch_size, runtime=runtime,
                        num_workers=cfg.data.num_workers, progress=True, desc="predict")
        ranked = dict(zip(preds.index.tolist(), top_k(preds.probs, classes, k))) if preds.probs.numel() else {}
        rows = []
        for i, path in enumerate(paths):
            if i in ranked:
                rows.append({"path": path, "topk": ranked[i]})
            else:
                rows.append({"path": path, "error": preds.failures.reasons.get(path, "could not be decoded")})
        out_dir = Path(cfg.eval.output_dir) if cfg.eval.output_dir else Path(cfg.train.output_dir) / "predict"
        if runtime.is_main:
            _write_outputs(out_dir, rows)
            save_config(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, test_clips=clips,
                                                                          test_crops=crops)),
                        out_dir / "config.yaml")
        runtime.barrier()
        failed = sum("error" in r for r in rows)
        return {"predictions": rows, "num_videos": len(rows), "num_failed": failed, "output_dir": str(out_dir)}
    finally:
        runtime.close()
