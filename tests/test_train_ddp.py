"""Two gloo processes on CPU: what DDP fine-tuning and pretraining start from, and what a step's gradient is
when one process's whole micro-batch failed to decode.

Each scenario runs once (a module fixture) and several tests read what the processes saved: every rank's EMA
and model weights when training starts, and its gradients just before the first optimizer update. The
reference gradient is computed here, in this process, from rank 0's starting weights and rank 0's clips.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run_two_processes, write_video

from videomap.train import Callback, load_config
from videomap.train.batches import epoch_permutation, sample_seed

pytest.importorskip("av", reason="PyAV (pip install av) is needed to write fixture videos")

SEED = 0
#: Global batch 4 over 2 processes, one step: rank 0 takes order[0:2], rank 1 order[2:4] (all broken).
NUM_CLIPS, BATCH = 4, 4
TINY_FT = ["model.name=videomap_tiny", "model.kwargs={embed_dim: 32, schedule: MA, num_heads: 2}",
           "data.num_frames=4", "data.img_size=32", "data.num_workers=0", "train.device=cpu",
           "train.progress=log", "train.log_every=1", "train.save_every=0", f"train.seed={SEED}",
           f"train.batch_size={BATCH}", "train.max_steps=1", "optim.warmup_steps=0"]
TINY_PT = TINY_FT[:1] + ["model.kwargs={embed_dim: 32, schedule: MMA, num_heads: 2}"] + TINY_FT[2:] + [
    "pretrain.decoder_depth=1", "pretrain.decoder_dim=32", "pretrain.decoder_heads=2",
    "pretrain.mask_ratio_random=true"]


# -------------------------------------------------------------------------------------------- fixtures


def write_half_broken_list(folder: Path) -> tuple[Path, list[int], dict[int, int]]:
    """``folder/train.txt`` of 4 clips where rank 1's share of the first global batch is zero-byte files.

    Returns the list, rank 0's clip indices and the label of every clip (dark 0, bright 1)."""
    order = epoch_permutation(NUM_CLIPS, SEED, 0)
    rank0, rank1 = order[: BATCH // 2], order[BATCH // 2: BATCH]
    rng = np.random.default_rng(0)
    labels = {i: k % 2 for k, i in enumerate(order)}      # rank 0 gets one dark and one bright clip
    lines = []
    for i in range(NUM_CLIPS):
        rel = f"clip_{i}.mp4"
        if i in rank1:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(b"")
        else:
            level = 50 if labels[i] == 0 else 200
            frames = np.clip(level + rng.normal(0, 25, (8, 32, 32, 3)), 0, 255).astype(np.uint8)
            write_video(folder / rel, frames=frames)
        lines.append(f"{rel} {labels[i]}")
    (folder / "train.txt").write_text("\n".join(lines) + "\n")
    return folder / "train.txt", rank0, labels


class SaveStart(Callback):
    """Saves, per rank, the weights (model and EMA) and generator states training starts from, and the
    gradients the first optimizer update is about to apply."""

    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_train_start(self, trainer):
        rank = trainer.runtime.rank
        state = {"model": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
                 "generators": {k: g.get_state() for k, g in trainer.generators.items()}}
        ema = next((cb for cb in trainer.callbacks if cb.key == "ema"), None)
        if ema is not None:
            state["ema"] = {k: v.detach().clone() for k, v in ema.module.state_dict().items()}
        torch.save(state, self.folder / f"start_rank{rank}.pt")
        params = dict(trainer.model.named_parameters())

        def save_grads(optimizer, args, kwargs):
            path = self.folder / f"grads_rank{rank}.pt"
            if not path.exists():
                torch.save({k: p.grad.detach().clone() for k, p in params.items() if p.grad is not None}, path)

        trainer.optimizer.register_step_pre_hook(save_grads)


def _worker(rank: int, world_size: int, port: int, command: str, overrides: list, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = load_config(None, overrides)
    if command == "finetune":
        from videomap.train.finetune import run_finetune

        run_finetune(cfg, callbacks=[SaveStart(folder)])
    else:
        from videomap.train.pretrain_run import run_pretrain

        run_pretrain(cfg, callbacks=[SaveStart(folder)])


def run_command_on_two_processes(command: str, overrides: list, folder: Path) -> None:
    run_two_processes(_worker, (command, overrides, str(folder)), 180,
                      f"two-process {command} did not finish within 180 s")


def load_rank(folder: Path, name: str, rank: int) -> dict:
    return torch.load(folder / f"{name}_rank{rank}.pt", weights_only=True)


def assert_same_gradients(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-5, atol=1e-7, msg=lambda m: f"{k}: {m}")


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory):
    """One DDP fine-tuning step with EMA on, rank 1's two clips undecodable."""
    folder = tmp_path_factory.mktemp("ddp_finetune")
    listing, rank0, labels = write_half_broken_list(folder)
    overrides = TINY_FT + [f"data.train={listing}", f"train.output_dir={folder / 'run'}", "finetune.ema=true",
                           "finetune.ema_decay=0.9"]
    run_command_on_two_processes("finetune", overrides, folder)
    return folder, overrides, rank0, labels


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory):
    """One DDP pretraining step (random mask ratio), rank 1's two clips undecodable."""
    folder = tmp_path_factory.mktemp("ddp_pretrain")
    listing, rank0, _ = write_half_broken_list(folder)
    overrides = TINY_PT + [f"data.train={listing}", f"train.output_dir={folder / 'run'}"]
    run_command_on_two_processes("pretrain", overrides, folder)
    return folder, overrides, rank0


# ------------------------------------------------------------------------------------------ fine-tuning


def test_every_rank_starts_its_ema_from_rank_0s_weights(finetune_run):
    folder = finetune_run[0]
    start0, start1 = load_rank(folder, "start", 0), load_rank(folder, "start", 1)
    for k, v in start0["model"].items():                   # DDP broadcast rank 0's weights
        assert torch.equal(start1["model"][k], v), k
    for k, v in start0["ema"].items():
        assert torch.equal(start1["ema"][k], v), k
        assert torch.equal(v, start0["model"][k]), k


def test_gradient_is_the_mean_over_the_clips_that_decoded_on_any_rank(finetune_run):
    from videomap.data import read_annotations
    from videomap.models import create_model
    from videomap.train.finetune import build_train_dataset

    folder, overrides, rank0, labels = finetune_run
    cfg = load_config(None, overrides)
    torch.set_num_threads(1)
    model = create_model("videomap_tiny", num_classes=2, num_frames=4, img_size=32, embed_dim=32, schedule="MA",
                         num_heads=2)
    model.load_state_dict(load_rank(folder, "start", 0)["model"])
    model.train()
    ann = read_annotations(folder / "train.txt")
    dataset = build_train_dataset(cfg, ann.records, ann.classes)
    video = torch.stack([dataset[(i, sample_seed(SEED, 0, i))]["video"] for i in rank0])
    target = torch.tensor([labels[i] for i in rank0])
    F.cross_entropy(model(video), target, label_smoothing=cfg.finetune.label_smoothing).backward()
    expected = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}

    for rank in (0, 1):
        assert_same_gradients(load_rank(folder, "grads", rank), expected)


# ------------------------------------------------------------------------------------------ pretraining


def test_pretraining_gradient_is_the_mean_over_the_clips_that_decoded(pretrain_run):
    from videomap.train.pretrain_run import build_pretrain_dataset, build_pretrainer

    folder, overrides, rank0 = pretrain_run
    cfg = load_config(None, overrides)
    torch.set_num_threads(1)
    start = load_rank(folder, "start", 0)
    pretrainer = build_pretrainer(cfg)
    pretrainer.load_state_dict(start["model"])
    pretrainer.train()
    generator = torch.Generator()
    generator.set_state(start["generators"]["mask_generator"])
    dataset = build_pretrain_dataset(cfg, pretrainer.encoder.config.mean, pretrainer.encoder.config.std)
    video = torch.stack([dataset[(i, sample_seed(SEED, 0, i))]["video"] for i in rank0])
    pretrainer(video, generator=generator)["loss"].backward()
    expected = {k: p.grad for k, p in pretrainer.named_parameters() if p.grad is not None}

    for rank in (0, 1):
        assert_same_gradients(load_rank(folder, "grads", rank), expected)
