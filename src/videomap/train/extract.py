"""Feature extraction (``videomap extract``): one feature per video, in safetensors shards with an index.

For every video of ``data.test`` the model runs up to layer ``eval.layer`` (negative counts from the end;
``-1`` is the last), the final norm is applied to that layer's tokens (so ``-1`` gives exactly
``forward_features``), and ``eval.pool`` reduces them:

* ``cls``: the class token, ``(D,)``;
* ``avg``: the mean of the patch tokens, ``(D,)``;
* ``frame``: the mean of each frame's patch tokens, ``(T', D)``.

With several test views (``data.test_clips`` × ``data.test_crops``, default 1 × 1: one centre clip) the
features are averaged over them. Output, in ``eval.output_dir`` (default ``train.output_dir/features``)::

    features-00000.safetensors   one tensor per video, under its key
    index.csv                    path,label,shard,key  (one row per video that decoded)
    features.json                pool, layer, shape, model, class names, failed videos with reasons
    config.yaml                  the resolved config

Undecodable videos are left out of the shards and listed, with the reason, in ``features.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from ..data import FailureLog, collate_videos, failed_video_records, seed_worker, skip_failed
from .checkpoint import atomic_write
from .config import Config, save_config
from .evaluate import build_test_dataset, load_class_names, load_model, progress_iter, read_split
from .runtime import Runtime, runtime_scope
from .workers import WorkerLoader

__all__ = ["POOLS", "SHARD_SIZE", "pool_tokens", "video_features", "FeatureShardWriter", "run_extract"]

log = logging.getLogger("videomap.train")

POOLS = ("cls", "avg", "frame")
#: Videos per safetensors shard.
SHARD_SIZE = 1024


def pool_tokens(patches: torch.Tensor, cls: torch.Tensor, pool: str) -> torch.Tensor:
    """patches ``(B, T', N, D)``, cls ``(B, 1, D)`` → ``(B, D)`` (``cls``, ``avg``) or ``(B, T', D)`` (``frame``)."""
    if pool == "cls":
        return cls[:, 0]
    if pool == "avg":
        return patches.mean(dim=(1, 2))
    if pool == "frame":
        return patches.mean(dim=2)
    raise ValueError(f"eval.pool must be one of {', '.join(POOLS)}, got {pool!r}")


def video_features(model: nn.Module, clips: torch.Tensor, pool: str, layer: int) -> torch.Tensor:
    """Features of clips ``(M, C, T, H, W)`` at ``layer`` after the final norm → ``(M, D)`` or ``(M, T', D)``."""
    (patches, cls), = model.forward_intermediates(clips, indices=[layer], norm=True, output_fmt="NTLC",
                                                  intermediates_only=True, return_prefix_tokens=True)
    return pool_tokens(patches.float(), cls.float(), pool)


class FeatureShardWriter:
    """Collects ``{key: tensor}`` and writes a safetensors shard every ``shard_size`` videos."""

    def __init__(self, out_dir: Path, prefix: str = "features", shard_size: int = SHARD_SIZE):
        self.out_dir, self.prefix, self.shard_size = out_dir, prefix, int(shard_size)
        self.buffer: dict[str, torch.Tensor] = {}
        self.rows: list[dict[str, Any]] = []
        self.shards: list[str] = []

    @property
    def current_shard(self) -> str:
        return f"{self.prefix}-{len(self.shards):05d}.safetensors"

    def add(self, key: str, feature: torch.Tensor, path: str, label: int) -> None:
        self.buffer[key] = feature.detach().cpu().contiguous()
        self.rows.append({"path": path, "label": int(label), "shard": self.current_shard, "key": key})
        if len(self.buffer) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        from safetensors.torch import save

        blob = save(self.buffer, metadata={"format": "pt"})
        atomic_write(self.out_dir / self.current_shard, lambda f: f.write(blob))
        self.shards.append(self.current_shard)
        self.buffer = {}


def _write_index(path: Path, rows: list[dict[str, Any]]) -> None:
    def write(f):
        w = csv.DictWriter(f, fieldnames=["path", "label", "shard", "key"])
        w.writeheader()
        w.writerows(rows)

    atomic_write(path, write, mode="w")


def extract_output_dir(cfg: Config) -> Path:
    """``eval.output_dir``, else ``train.output_dir/features``."""
    return Path(cfg.eval.output_dir) if cfg.eval.output_dir else Path(cfg.train.output_dir) / "features"


@torch.no_grad()
def _extract_shard(model: nn.Module, dataset, indices: list[int], cfg: Config, runtime: Runtime,
                   writer: FeatureShardWriter) -> FailureLog:
    views = dataset.num_views
    loader = WorkerLoader(Subset(dataset, indices), batch_size=max(1, cfg.eval.batch_size // views),
                        num_workers=cfg.data.num_workers, collate_fn=collate_videos, worker_init_fn=seed_worker)
    failures = FailureLog(log, context="extraction")
    for batch in progress_iter(skip_failed(loader, failures), len(loader), runtime.is_main, "extract"):
        video = batch["video"]  # (B, V, C, T, H, W)
        clips = video.flatten(0, 1).to(runtime.device)
        with runtime.autocast():
            feats = torch.cat([video_features(model, clips[i:i + cfg.eval.batch_size], cfg.eval.pool, cfg.eval.layer)
                               for i in range(0, clips.shape[0], max(1, cfg.eval.batch_size))])
        feats = feats.view(video.shape[0], video.shape[1], *feats.shape[1:]).mean(dim=1)
        for f, index, path, label in zip(feats, batch["index"].tolist(), batch["path"], batch["label"].tolist()):
            writer.add(f"{index:08d}", f, path, label)
    writer.flush()
    return failures


def run_extract(cfg: Config, *, runtime: Runtime | None = None, shard_size: int = SHARD_SIZE) -> dict[str, Any]:
    """Extract features of ``data.test`` with ``model.checkpoint``; see the module docstring.

    Returns ``{"output_dir", "num_videos", "num_failed", "failed_videos", "shards", "shape", "pool", "layer"}``.
    Under DDP each process writes its own shards (``features-r<rank>-*``) and rank 0 the index.
    """
    if cfg.eval.pool not in POOLS:
        raise ValueError(f"eval.pool must be one of {', '.join(POOLS)}, got {cfg.eval.pool!r}")
    with runtime_scope(cfg, runtime) as runtime:
        model = load_model(cfg).to(runtime.device).eval()
        names = load_class_names(cfg.model.checkpoint)
        annotations = read_split(cfg, "test", classes=names)
        clips, crops = cfg.data.test_clips or 1, cfg.data.test_crops or 1
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, test_clips=clips, test_crops=crops))
        dataset = build_test_dataset(cfg, annotations, clips, crops, classes=names)
        out = extract_output_dir(cfg)
        out.mkdir(parents=True, exist_ok=True)
        prefix = f"features-r{runtime.rank}" if runtime.distributed else "features"
        writer = FeatureShardWriter(out, prefix, shard_size)
        log.info("extracting %s features of layer %d from %d videos (%d x %d views) into %s", cfg.eval.pool,
                 cfg.eval.layer, len(dataset), clips, crops, out)
        shard = list(range(runtime.rank, len(dataset), runtime.world_size))
        failures = _extract_shard(model, dataset, shard, cfg, runtime, writer)

        parts = runtime.all_gather_object({"rows": writer.rows, "shards": writer.shards,
                                           "failed": dict(failures.reasons)})
        rows = sorted((r for p in parts for r in p["rows"]), key=lambda r: r["key"])
        failed = {path: reason for p in parts for path, reason in p["failed"].items()}
        grid = model.grid_size((cfg.data.num_frames, cfg.data.img_size, cfg.data.img_size))
        shape = [grid[0], model.embed_dim] if cfg.eval.pool == "frame" else [model.embed_dim]
        meta = {
            "pool": cfg.eval.pool, "layer": cfg.eval.layer, "shape": shape, "dtype": "float32",
            "num_videos": len(rows), "num_listed": len(dataset), "num_failed": len(failed),
            "failed_videos": failed_video_records(failed),
            "shards": sorted(s for p in parts for s in p["shards"]), "test_clips": clips, "test_crops": crops,
            "checkpoint": cfg.model.checkpoint, "test": cfg.data.test, "classes": dataset.classes,
            "model": model.config.to_dict() if hasattr(model, "config") else None,
        }
        if runtime.is_main:
            _write_index(out / "index.csv", rows)
            text = json.dumps(meta, indent=2) + "\n"
            atomic_write(out / "features.json", lambda f: f.write(text), mode="w")
            save_config(cfg, out / "config.yaml")
            log.info("%d videos -> %d shards in %s%s", len(rows), len(meta["shards"]), out,
                     f"; {len(failed)} could not be decoded (listed in features.json)" if failed else "")
        runtime.barrier()
        return {"output_dir": str(out), **{k: meta[k] for k in ("num_videos", "num_failed", "failed_videos", "shards",
                                                               "shape", "pool", "layer")}}
