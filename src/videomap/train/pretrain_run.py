"""``videomap pretrain``: frame-wise masked autoregressive pretraining (DESIGN §4) from a video list.

Writes into ``train.output_dir``: ``config.yaml``, ``metrics.jsonl``, ``checkpoints/last.pt`` (resumable),
``encoder/`` (``config.json`` + ``model.safetensors``, loadable with ``videomap.create_model``) and, for
pixel targets, ``reconstructions/step_XXXXXX.png`` (original / masked / predicted frames).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from ..data import VideoClassificationDataset, VideoTrainTransform, collate_videos, read_annotations
from ..models import create_model
from ..pretrain import MAPPretrainer, reconstruction_grid, save_png
from .batches import ResumableBatches
from .callbacks import Callback, Every, ExportModel
from .config import Config
from .failures import FailureCounter, stand_in_clip
from .loop import Trainer
from .runtime import Runtime, runtime_scope, seed_everything

log = logging.getLogger("videomap.pretrain")


def build_pretrainer(cfg: Config) -> MAPPretrainer:
    """The encoder named by ``model.*`` (no classifier) wrapped in the pretraining objective."""
    encoder = create_model(cfg.model.name, num_classes=0, num_frames=cfg.data.num_frames,
                           img_size=cfg.data.img_size, drop_path_rate=cfg.model.drop_path_rate,
                           checkpoint_path=cfg.model.checkpoint, **cfg.model.kwargs)
    p = cfg.pretrain
    return MAPPretrainer(
        encoder, target=p.target, predict=p.predict,
        mask_ratio="random" if p.mask_ratio_random else p.mask_ratio, whole_frames=p.mask_whole_frames,
        decoder_depth=p.decoder_depth, decoder_dim=p.decoder_dim, decoder_heads=p.decoder_heads,
        norm_pix_loss=p.norm_pix_loss, clip_model=p.clip_teacher, decoder_causal=p.decoder_causal,
    )


def build_pretrain_dataset(cfg: Config, mean, std) -> VideoClassificationDataset:
    """Clips from ``data.train`` with MAE-style augmentation (multi-scale crop and flip only)."""
    if not cfg.data.train:
        raise ValueError("pretraining needs data.train: a video list (path label per line) or a folder tree")
    annotations = read_annotations(cfg.data.train, fmt=cfg.data.format, root=cfg.data.root or None)
    if not annotations.records:
        raise ValueError(f"no videos listed in {cfg.data.train}")
    transform = VideoTrainTransform(cfg.data.img_size, crop="multi_scale", rand_augment=None, reprob=0.0,
                                    mean=mean, std=std)
    return VideoClassificationDataset(annotations, mode="train", num_frames=cfg.data.num_frames,
                                      sampling=cfg.data.sampling, stride=cfg.data.frame_stride,
                                      transform=transform, seed=cfg.train.seed)


class ReconstructionPictures:
    """Saves one fixed clip's reconstruction; deterministic, and draws from no global RNG (resume stays exact)."""

    def __init__(self, dataset: VideoClassificationDataset, output_dir: Path, seed: int):
        self.dataset, self.directory, self.seed = dataset, Path(output_dir) / "reconstructions", seed

    def _first_decodable_clip(self) -> torch.Tensor | None:
        for index in range(len(self.dataset)):
            item = self.dataset[(index, self.seed)]
            if isinstance(item, dict):  # undecodable videos come back as FailedVideo markers
                return item["video"]
        return None

    def __call__(self, trainer: Trainer) -> Path | None:
        if not trainer.runtime.is_main:
            return None
        model: MAPPretrainer = trainer.model
        video = self._first_decodable_clip()
        if video is None:
            log.warning("no clip of the training list decodes: no reconstruction picture")
            return None
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model(video[None].to(trainer.runtime.device), generator=torch.Generator().manual_seed(self.seed))
        finally:
            model.train(was_training)
        encoder = model.encoder
        image = reconstruction_grid(video, out["pred"][0], out["mask"][0], encoder.tubelet_size, encoder.patch_size,
                                    mean=self.dataset.transform.mean, std=self.dataset.transform.std,
                                    norm_pix=model.target.norm_pix)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"step_{trainer.step:06d}.png"
        save_png(image, path, scale=max(1, 256 // image.shape[0]))
        return path


def run_pretrain(cfg: Config, *, runtime: Runtime | None = None, callbacks: Sequence[Callback] = ()) -> dict:
    """Pretrain ``model.name`` on ``data.train``; returns the final metrics and the output paths.

    ``failed_videos`` is the count of undecodable clips over every process and every resumed invocation
    (:class:`~videomap.train.failures.FailureCounter`). ``callbacks`` are added after the trainer's own
    (encoder export, reconstruction pictures, failure count)."""
    with runtime_scope(cfg, runtime) as rt:
        seed_everything(cfg.train.seed)  # the same initial weights for the same seed, on every rank
        pretrainer = build_pretrainer(cfg)
        encoder = pretrainer.encoder
        dataset = build_pretrain_dataset(cfg, encoder.config.mean, encoder.config.std)
        # Masks come from a generator owned by the objective, so the Trainer checkpoints its state with the run.
        pretrainer.mask_generator = torch.Generator().manual_seed(cfg.train.seed * 1000 + rt.rank)
        failures = FailureCounter(context="pretraining")
        batches = ResumableBatches.for_run(dataset, cfg, rt, collate_fn=collate_videos)

        def step(model, batch):
            failures.record(batch["failed"])
            video = batch["video"]
            # The gradient is the mean over the clips that decoded on every process together (see
            # Runtime.loss_share); collective, so it is taken before the branch on every process.
            share = rt.loss_share(0 if video is None else video.shape[0])
            if video is None:
                video = stand_in_clip(cfg, rt.device)  # its loss is scaled by a share of exactly zero
            out = model(video, generator=pretrainer.mask_generator)
            # The same metric names on every process: the loop averages them over processes in one
            # all-reduce. The failure count is the synced one (up to the previous step), equal on every process.
            return {"loss": out["loss"] * share, "mask_ratio": out["mask"].float().mean(),
                    "failed_videos": float(failures.count)}

        output = Path(cfg.train.output_dir)
        hooks: list[Callback] = [failures, ExportModel(output / "encoder", select=lambda m: m.encoder)]
        if cfg.pretrain.target == "pixel":
            hooks.append(Every(cfg.pretrain.recon_every, ReconstructionPictures(dataset, output, cfg.train.seed)))
        trainer = Trainer(pretrainer, step, batches, cfg, runtime=rt, callbacks=[*hooks, *callbacks])
        result = trainer.fit()
        if failures.count:
            log.warning("pretraining skipped %d undecodable clip(s) from %d file(s)", failures.count,
                        len(failures.reasons))
        return {"step": result.step, "interrupted": result.interrupted, "metrics": result.metrics,
                "encoder": str(output / "encoder"), "checkpoint": str(result.checkpoint),
                "failed_videos": failures.summary()}
