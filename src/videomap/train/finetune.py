"""Supervised fine-tuning of a video classifier (``videomap finetune``).

:func:`run_finetune` puts the shared machinery together for classification:

* **model**: ``model.checkpoint`` (a pretraining run's ``encoder/`` folder, a fine-tuned ``best/`` folder, or
  any ``save_pretrained`` folder or weights file) rebuilt at ``data.num_frames`` × ``data.img_size`` (position
  embeddings resampled), with a fresh head for the data's classes and ``model.drop_path_rate``; without a
  checkpoint, ``model.name`` from scratch. ``model.num_classes`` defaults to the number of classes the
  training annotations name; the class names are saved beside every exported model (``classes.json``).
* **data**: ``data.train`` with clip-consistent augmentation (random resized crop, flip unless the dataset
  forbids it, ``finetune.rand_aug``, ``finetune.reprob``), ``finetune.repeated_aug`` differently augmented
  clips of each video in the same batch, and ``finetune.label_fraction`` of the videos kept per class
  (a seeded, class-stratified subset);
* **loss**: soft-target cross-entropy under Mixup/CutMix (``finetune.mixup``/``cutmix``) with label
  smoothing;
* **optimizer**: AdamW with layer-wise lr decay (``optim.layer_decay``) through
  :func:`~videomap.train.optim.param_groups`;
* **EMA** of the weights (``finetune.ema``), which is then what is validated and exported;
* **validation** on ``data.val`` (one centre clip per video) every ``train.eval_every`` steps or epoch;
  the best model by ``finetune.best_metric`` goes to ``OUTPUT/best/``. Without ``data.val``, ``best/`` holds
  the final weights. After training, ``data.test`` (when set) is evaluated with multi-view testing from
  ``best/`` into ``OUTPUT/eval/``.

Undecodable training videos are skipped and counted (never replaced by another sample). A step's gradient is
the mean over the clips that decoded, on every process together (:meth:`Runtime.loss_share
<videomap.train.runtime.Runtime.loss_share>`). Under DDP a process whose micro-batch lost every video still
runs a forward and backward pass (with a zero loss over every parameter), because DDP's gradient all-reduce
needs every process to take part in every step; its share of the mean is zero.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..data import (
    FailedVideo,
    Mixup,
    VideoClassificationDataset,
    VideoRecord,
    VideoTrainTransform,
    collate_videos,
    mix_seed,
    smooth_one_hot,
    soft_target_cross_entropy,
)
from ..models.weights import CLASSES_NAME, INFO_NAME, atomic_write, save_pretrained
from .batches import ResumableBatches
from .callbacks import Callback, ExportModel
from .config import Config
from .evaluate import (
    build_test_dataset,
    dataset_preset,
    read_split,
    run_eval,
    test_views,
    validate,
)
from .failures import FailureCounter, stand_in_clip
from .loop import Trainer
from .optim import unwrap_model
from .runtime import Runtime, runtime_scope

__all__ = [
    "BEST_METRICS",
    "stratified_subset",
    "RepeatedClips",
    "collate_repeated",
    "build_train_dataset",
    "build_model",
    "ModelEMA",
    "BestCheckpoint",
    "FinetuneStep",
    "run_finetune",
]

log = logging.getLogger("videomap.train")

#: Validation metrics ``finetune.best_metric`` may name; ``loss`` is the only one where lower is better.
BEST_METRICS = ("top1", "top5", "mean_class_accuracy", "loss")


# ---------------------------------------------------------------------------------------------- data


def stratified_subset(labels: Sequence[int], fraction: float, seed: int) -> list[int]:
    """Indices of a seeded, class-stratified ``fraction`` of a labelled set, in increasing order.

    Each class keeps ``round(fraction × its size)`` videos, at least one, so that no class disappears
    from a small labelled subset. The same ``(labels, fraction, seed)`` always gives the same subset.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"finetune.label_fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    if fraction == 1.0:
        return list(range(len(labels)))
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(members))))
        keep.extend(rng.permutation(members)[:k].tolist())
    return sorted(keep)


class RepeatedClips(Dataset):
    """``repeats`` differently augmented clips of each video, returned together (repeated augmentation).

    Key ``(index, seed)`` → a list of ``repeats`` samples, copy ``r`` augmented from ``mix_seed(seed, r)``;
    a video that fails to decode gives one :class:`~videomap.data.FailedVideo` (it is counted once). Batches
    then hold every copy of a video, and an epoch still visits each video once.
    """

    def __init__(self, dataset: VideoClassificationDataset, repeats: int):
        if repeats < 1:
            raise ValueError(f"finetune.repeated_aug must be >= 1, got {repeats}")
        self.dataset, self.repeats = dataset, int(repeats)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        copies = []
        for r in range(self.repeats):
            item = self.dataset[(index, mix_seed(seed, r))] if seed is not None else self.dataset[index]
            if isinstance(item, FailedVideo):
                return [item]  # decoding is deterministic: the other copies would fail the same way
            copies.append(item)
        return copies


def collate_repeated(items: Sequence[Sequence[Any]]) -> dict:
    """Flatten the copies of every video, then :func:`~videomap.data.collate_videos`."""
    return collate_videos([sample for copies in items for sample in copies])


def _train_flip(cfg: Config) -> bool:
    if cfg.finetune.flip is not None:
        return cfg.finetune.flip
    preset = dataset_preset(cfg)
    return preset.flip if preset is not None else True


def build_train_dataset(cfg: Config, records: Sequence[VideoRecord], classes: Sequence[str]) -> VideoClassificationDataset:
    """Training clips ``(C, T, S, S)``: random resized crop to ``data.img_size``, horizontal flip (unless
    ``finetune.flip`` or the dataset's preset says no), ``finetune.rand_aug``, normalisation,
    ``finetune.reprob`` random erasing."""
    transform = VideoTrainTransform(cfg.data.img_size, flip=_train_flip(cfg), rand_augment=cfg.finetune.rand_aug,
                                    reprob=cfg.finetune.reprob)
    return VideoClassificationDataset(
        list(records), list(classes), mode="train", num_frames=cfg.data.num_frames, sampling=cfg.data.sampling,
        stride=cfg.data.frame_stride, transform=transform, input_size=cfg.data.img_size, seed=cfg.train.seed,
    )


# --------------------------------------------------------------------------------------------- model


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The classifier to fine-tune: ``model.checkpoint`` (or ``model.name`` from scratch) with
    ``num_classes`` outputs at ``data.num_frames`` × ``data.img_size`` and ``model.drop_path_rate``.

    A head whose size does not match is replaced by a fresh one; position embeddings saved for other frames
    or sizes are resampled. A folder with ``config.json`` rebuilds its own architecture (``model.name`` is
    then only a label); ``model.kwargs`` are extra config fields either way.
    """
    from ..models import create_model, load_model

    fields = dict(cfg.model.kwargs, num_classes=num_classes, num_frames=cfg.data.num_frames,
                  img_size=cfg.data.img_size, drop_path_rate=cfg.model.drop_path_rate)
    checkpoint = cfg.model.checkpoint
    if not checkpoint:
        return create_model(cfg.model.name, pretrained=cfg.model.pretrained, **fields)
    model = load_model(checkpoint, cfg.model.name, **fields)
    if model.config.name and model.config.name != cfg.model.name:
        log.info("model.checkpoint holds a %s; model.name=%s is not used", model.config.name, cfg.model.name)
    return model


# ----------------------------------------------------------------------------------------- callbacks


class ModelEMA(Callback):
    """Exponential moving average of the model's weights, updated after every optimizer step.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that a short run's
    average is not dominated by the initial weights. Its state is checkpointed, so resuming continues it.

    The average starts from the weights training starts from (``on_train_start``), not from the module
    given here: under DDP each process built its own random initialisation, and only once the trainer has
    wrapped the model have rank 0's weights been broadcast to every process.
    """

    name = "ema"

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.updates = 0
        self._restored = False

    def on_train_start(self, trainer: Trainer) -> None:
        self.module.to(trainer.runtime.device)
        if not self._restored:
            # A resumed average is already right; a fresh one must start from the broadcast weights.
            self.module.load_state_dict(trainer.model.state_dict())

    @torch.no_grad()
    def on_step_end(self, trainer: Trainer, metrics: Mapping[str, Any]) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema, current in zip(self.module.state_dict().values(), trainer.model.state_dict().values()):
            if ema.dtype.is_floating_point:
                ema.lerp_(current.detach(), 1.0 - decay)
            else:
                ema.copy_(current)

    def state_dict(self) -> dict[str, Any]:
        return {"weights": {k: v.detach().cpu() for k, v in self.module.state_dict().items()}, "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.module.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
        self._restored = True


class BestCheckpoint(Callback):
    """Keep the model with the best validation ``metric`` in ``directory`` (a ``save_pretrained`` folder).

    ``select(trainer)`` gives the module to judge and save (the EMA when there is one). When no validation
    ever ran (no ``data.val``), the final model is saved at the end instead.
    """

    name = "best"

    def __init__(self, directory: Path, metric: str, classes: Sequence[str], select: Callable[[Trainer], nn.Module]):
        if metric not in BEST_METRICS:
            raise ValueError(f"finetune.best_metric must be one of {', '.join(BEST_METRICS)}, got {metric!r}")
        self.directory, self.metric, self.classes, self.select = Path(directory), metric, list(classes), select
        self.best: float | None = None
        self.best_step: int | None = None

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best if self.metric == "loss" else value > self.best

    def _export(self, trainer: Trainer, info: dict) -> None:
        if trainer.runtime.is_main:
            save_pretrained(unwrap_model(self.select(trainer)), self.directory,
                            files={CLASSES_NAME: self.classes, INFO_NAME: info})
        trainer.runtime.barrier()

    def on_eval_end(self, trainer: Trainer, metrics: Mapping[str, Any]) -> None:
        value = metrics.get(self.metric)
        if value is None or not np.isfinite(value) or not self._better(float(value)):
            return
        self.best, self.best_step = float(value), trainer.step
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None}
        self._export(trainer, {"step": trainer.step, "epoch": trainer.epoch, "metric": self.metric, "val": scalars})
        log.info("new best %s %.4g at step %d: saved to %s", self.metric, self.best, trainer.step, self.directory)

    def on_train_end(self, trainer: Trainer) -> None:
        if self.best_step is None:
            self._export(trainer, {"step": trainer.step, "epoch": trainer.epoch, "metric": None,
                                   "note": "no validation set: the final weights"})

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "step": self.best_step, "metric": self.metric}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("metric") == self.metric:
            self.best, self.best_step = state.get("best"), state.get("step")


# ------------------------------------------------------------------------------------------------ step


class FinetuneStep:
    """The ``step_fn``: Mixup/CutMix (or plain label smoothing), soft-target cross-entropy.

    Mixup draws ``lam`` and the box from a generator seeded by ``(seed, rank, epoch, micro-batch)``, read
    from the trainer, so a resumed run mixes exactly as the uninterrupted one did.

    The loss is scaled by :meth:`Runtime.loss_share <videomap.train.runtime.Runtime.loss_share>`, so that a
    step's gradient is the mean over the clips that decoded on all processes together; a process whose
    clips all failed adds nothing instead of diluting the others' gradient.
    """

    def __init__(self, cfg: Config, num_classes: int, failures: FailureCounter, runtime: Runtime | None = None):
        ft = cfg.finetune
        self.num_classes, self.smoothing, self.failures = num_classes, ft.label_smoothing, failures
        self.runtime = runtime or Runtime()
        self.seed, self.rank = cfg.train.seed, self.runtime.rank
        self.mixup = (Mixup(num_classes, mixup_alpha=ft.mixup, cutmix_alpha=ft.cutmix, label_smoothing=ft.label_smoothing,
                            seed=0) if ft.mixup > 0 or ft.cutmix > 0 else None)
        self.cfg = cfg
        self.trainer: Trainer | None = None

    def _targets(self, video: torch.Tensor, label: torch.Tensor):
        if self.mixup is None:
            return video, smooth_one_hot(label, self.num_classes, self.smoothing)
        t = self.trainer
        where = (t.epoch, t.position) if t is not None else (0, 0)
        self.mixup.rng = np.random.default_rng([self.seed, self.rank, *where])
        return self.mixup(video, label)

    def __call__(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        self.failures.record(batch["failed"])
        video = batch["video"]
        # Collective: taken on every process, before the branch, whether or not its clips decoded.
        share = self.runtime.loss_share(0 if video is None else video.shape[0])
        if video is None:
            stand_in = stand_in_clip(self.cfg, next(model.parameters()).device)
            return {"loss": model(stand_in).float().sum() * share}
        video, target = self._targets(video, batch["label"])
        return {"loss": soft_target_cross_entropy(model(video), target) * share}


# ------------------------------------------------------------------------------------------------ run


def _resolve_classes(cfg: Config, classes: Sequence[str]) -> list[str]:
    n = cfg.model.num_classes
    if n is None:
        return list(classes)
    if n < len(classes):
        raise ValueError(f"model.num_classes={n} but the training annotations name {len(classes)} classes")
    return list(classes) + [str(i) for i in range(len(classes), n)]


def _resolved_config(cfg: Config, num_classes: int) -> Config:
    # What the run really used, so OUTPUT/config.yaml repeats it exactly.
    clips, crops = test_views(cfg)
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, num_classes=num_classes),
        data=dataclasses.replace(cfg.data, test_clips=clips, test_crops=crops),
        finetune=dataclasses.replace(cfg.finetune, flip=_train_flip(cfg)),
    )


def _train_batches(cfg: Config, dataset: VideoClassificationDataset, runtime: Runtime) -> ResumableBatches:
    repeats = cfg.finetune.repeated_aug
    data = RepeatedClips(dataset, repeats) if repeats > 1 else dataset
    return ResumableBatches.for_run(data, cfg, runtime, collate_fn=collate_repeated if repeats > 1 else collate_videos)


def run_finetune(cfg: Config, *, runtime: Runtime | None = None, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Fine-tune as the module docstring describes; returns a summary (also written to
    ``OUTPUT/summary.json``): ``best`` (metric, value, step), ``failed_loads``/``failed_videos``, ``steps``,
    ``interrupted``, the last training metrics and, when ``data.test`` is set, the test ``results``.

    ``callbacks`` are added to the trainer's own (EMA, best checkpoint, failure count, final export)."""
    with runtime_scope(cfg, runtime) as rt:
        train_ann = read_split(cfg, "train")
        classes = _resolve_classes(cfg, train_ann.classes)
        cfg = _resolved_config(cfg, len(classes))
        labels = [r.label for r in train_ann.records]
        keep = stratified_subset(labels, cfg.finetune.label_fraction, cfg.train.seed)
        records = [train_ann.records[i] for i in keep]
        log.info("fine-tuning on %d of %d training videos (label_fraction %g), %d classes", len(records),
                 len(labels), cfg.finetune.label_fraction, len(classes))
        train_set = build_train_dataset(cfg, records, classes)
        val_set = (build_test_dataset(cfg, read_split(cfg, "val", classes=classes), classes=classes)
                   if cfg.data.val else None)

        rt.seed(cfg.train.seed)  # the new head (and a model from scratch) start the same in every run
        model = build_model(cfg, len(classes))
        failures = FailureCounter()
        step = FinetuneStep(cfg, len(classes), failures, runtime=rt)
        ema = ModelEMA(model, cfg.finetune.ema_decay) if cfg.finetune.ema else None
        judged = (lambda tr: ema.module) if ema is not None else (lambda tr: tr.model)
        out = Path(cfg.train.output_dir)
        best = BestCheckpoint(out / "best", cfg.finetune.best_metric, classes, judged)
        final = ExportModel(out / "final", files={CLASSES_NAME: classes})
        hooks: list[Callback] = [failures, *([ema] if ema else []), best, final, *callbacks]
        eval_fn = (lambda tr: validate(judged(tr), val_set, cfg, tr.runtime)) if val_set is not None else None

        trainer = Trainer(model, step, _train_batches(cfg, train_set, rt), cfg, runtime=rt, callbacks=hooks,
                          eval_fn=eval_fn)
        step.trainer = trainer
        result = trainer.fit()
        summary = {
            "output_dir": str(out), "steps": result.step, "epochs": result.epoch, "interrupted": result.interrupted,
            "num_classes": len(classes), "classes": classes, "train_videos": len(records),
            "best": {"metric": best.metric, "value": best.best, "step": best.best_step, "dir": str(out / "best")},
            "train_metrics": result.metrics, **failures.summary(), "test": None,
        }
        if failures.count:
            log.warning("%d undecodable training videos were skipped (%d loads); see summary.json",
                        len(failures.reasons), failures.count)
        if cfg.data.test and not result.interrupted:
            test_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=str(out / "best")))
            summary["test"] = run_eval(test_cfg, runtime=rt)
        if rt.is_main:
            text = json.dumps(summary, indent=2, allow_nan=False, default=str) + "\n"
            atomic_write(out / "summary.json", lambda f: f.write(text), mode="w")
        return summary
