"""`videomap finetune` on small PyAV-written trees: learning, best/ export, exact resume, corrupt videos,
layer-wise lr decay on the real model, label fractions, and DDP with a process whose videos all failed.

The helpers at the top (tiny settings, an easy brightness task, a saved tiny model) are shared with the
other ``test_finetune_*`` modules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_two_processes, write_video

from videomap.train import Callback, load_checkpoint, load_config
from videomap.train.batches import epoch_permutation
from videomap.train.finetune import RepeatedClips, run_finetune, stratified_subset
from videomap.train.optim import param_groups

pytest.importorskip("av", reason="PyAV (pip install av) is needed to write fixture videos")

# ------------------------------------------------------------------------------------------ shared helpers

# A model small enough for a CPU test: one Mamba and one attention layer, 4 tokens per frame.
TINY_MODEL = ["model.name=videomap_tiny", "model.kwargs={embed_dim: 32, schedule: MA, num_heads: 2}"]
TINY_DATA = ["data.num_frames=4", "data.img_size=32", "data.num_workers=0"]
QUIET_TRAIN = ["train.device=cpu", "train.progress=log", "train.log_every=1", "train.save_every=0"]
TINY = TINY_MODEL + TINY_DATA + QUIET_TRAIN

CLASSES = ("dark", "bright")


def brightness_frames(label: int, rng: np.random.Generator, num_frames: int = 8, size: int = 32) -> np.ndarray:
    """``uint8 (T, size, size, 3)`` noisy frames, dark for label 0 and bright for label 1: an easy task, so a
    few steps show the loss falling."""
    level = 50 if label == 0 else 200
    return np.clip(level + rng.normal(0, 25, (num_frames, size, size, 3)), 0, 255).astype(np.uint8)


def write_brightness_split(folder: Path, name: str, labels, seed: int, corrupt: int = 0) -> Path:
    """``folder/<name>.txt``: one clip per entry of ``labels``, then ``corrupt`` zero-byte files (label 0);
    also ``folder/classes.txt``."""
    rng = np.random.default_rng(seed)
    lines = []
    for i, label in enumerate(labels):
        rel = f"{name}/clip_{i:03d}.mp4"
        write_video(folder / rel, frames=brightness_frames(int(label), rng))
        lines.append(f"{rel} {int(label)}")
    for j in range(corrupt):
        rel = f"{name}/broken_{j}.mp4"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"")
        lines.append(f"{rel} 0")
    path = folder / f"{name}.txt"
    path.write_text("\n".join(lines) + "\n")
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return path


def save_tiny_model(directory: Path, num_classes: int = 2, classes=CLASSES, **overrides) -> Path:
    """A randomly initialised tiny classifier saved as a model folder (with class names when given)."""
    from videomap.models import create_model
    from videomap.train.evaluate import save_class_names

    kwargs = dict(num_classes=num_classes, num_frames=4, img_size=32, embed_dim=32, schedule="MA", num_heads=2)
    kwargs.update(overrides)
    model = create_model("videomap_tiny", **kwargs)
    model.save_pretrained(directory)
    if classes is not None:
        save_class_names(directory, classes)
    return Path(directory)


def read_jsonl(path: Path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """12 training clips (+1 corrupt), 6 validation clips (+1 corrupt), classes.txt."""
    root = tmp_path_factory.mktemp("brightness")
    write_brightness_split(root, "train", [0, 1] * 6, seed=0, corrupt=1)
    write_brightness_split(root, "val", [0, 1] * 3, seed=1, corrupt=1)
    return root


def data_keys(root: Path):
    return [f"data.train={root / 'train.txt'}", f"data.val={root / 'val.txt'}", f"data.classes={root / 'classes.txt'}"]


# ---------------------------------------------------------------------------------------------- pure parts


def test_stratified_subset_is_seeded_and_keeps_every_class():
    labels = [0] * 10 + [1] * 10 + [2] * 2
    a = stratified_subset(labels, 0.3, seed=0)
    assert a == stratified_subset(labels, 0.3, seed=0) and a != stratified_subset(labels, 0.3, seed=1)
    counts = np.bincount(np.asarray(labels)[a], minlength=3)
    assert counts.tolist() == [3, 3, 1]          # round(0.3 * n) per class, never zero
    assert a == sorted(a) and stratified_subset(labels, 1.0, 0) == list(range(22))
    with pytest.raises(ValueError, match="label_fraction"):
        stratified_subset(labels, 0.0, 0)


def test_layer_decay_groups_on_the_real_model():
    from videomap.models import create_model

    model = create_model("videomap_tiny", num_classes=5, num_frames=4, img_size=32, embed_dim=32,
                         schedule="MMA", num_heads=2)
    L, decay = model.num_layers, 0.75
    groups = param_groups(model, weight_decay=0.05, layer_decay=decay)
    where = {name: g for g in groups for name in g["param_names"]}
    assert set(where) == {n for n, p in model.named_parameters() if p.requires_grad}

    def expected_id(name):
        if name.startswith(("patch_embed", "cls_token", "pos_embed", "temporal_pos_embedding")):
            return 0
        if name.startswith("layers."):
            return int(name.split(".")[1]) + 1
        assert name.startswith(("norm_f", "head")), name
        return L + 1

    for name, g in where.items():
        assert g["layer_id"] == expected_id(name), name
        assert g["lr_scale"] == pytest.approx(decay ** (L + 1 - g["layer_id"])), name
    assert where["head.weight"]["lr_scale"] == 1.0 and where["head.weight"]["weight_decay"] == 0.05
    assert where["pos_embed"]["lr_scale"] == pytest.approx(decay ** (L + 1)) and where["pos_embed"]["weight_decay"] == 0
    assert where["layers.1.norm.weight"]["weight_decay"] == 0.0      # 1-D parameters are never decayed
    assert {g["layer_id"] for g in groups} == set(range(L + 2))


def test_repeated_clips_are_augmented_differently_and_failures_count_once(tree):
    from videomap.data import FailedVideo, read_annotations
    from videomap.train.finetune import build_train_dataset, collate_repeated

    cfg = load_config(None, TINY + data_keys(tree) + ["finetune.repeated_aug=3"])
    ann = read_annotations(tree / "train.txt", classes=tree / "classes.txt")
    data = RepeatedClips(build_train_dataset(cfg, ann.records, ann.classes), 3)
    copies = data[(0, 123)]
    assert len(copies) == 3 and not torch.equal(copies[0]["video"], copies[1]["video"])
    assert torch.equal(data[(0, 123)][2]["video"], copies[2]["video"])     # a function of the key
    broken = data[(12, 5)]
    assert len(broken) == 1 and isinstance(broken[0], FailedVideo)
    batch = collate_repeated([copies, broken])
    assert batch["video"].shape == (3, 3, 4, 32, 32) and len(batch["failed"]) == 1


# ------------------------------------------------------------------------------------------ end to end


def test_finetune_learns_exports_best_and_skips_corrupt_videos(tree, tmp_path):
    from videomap.models import VideoMAP

    out = tmp_path / "run"
    cfg = load_config(None, TINY + data_keys(tree) + [
        f"train.output_dir={out}", "train.batch_size=4", "train.max_steps=12", "train.eval_every=6",
        "optim.lr=3e-3", "optim.warmup_steps=1", "optim.layer_decay=0.9", "model.drop_path_rate=0.1",
        "finetune.ema=true", "finetune.ema_decay=0.9"])
    summary = run_finetune(cfg)

    losses = [r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])
    evals = [r for r in read_jsonl(out / "metrics.jsonl") if "val/top1" in r]
    assert [r["step"] for r in evals] == [6, 12] and all(r["val/num_failed"] == 1 for r in evals)

    broken = str(tree / "train" / "broken_0.mp4")
    assert summary["num_failed"] == 1 and summary["failed_loads"] >= 1
    assert summary["failed_videos"] == [{"path": broken, "reason": summary["failed_videos"][0]["reason"]}]
    assert summary["best"]["step"] in (6, 12) and summary["num_classes"] == 2

    best = VideoMAP.from_pretrained(out / "best")
    assert best.num_classes == 2 and best.config.num_frames == 4 and best.config.img_size == 32
    assert json.loads((out / "best" / "classes.json").read_text()) == list(CLASSES)
    info = json.loads((out / "best" / "info.json").read_text())
    assert info["step"] == summary["best"]["step"] and info["metric"] == "top1"
    assert (out / "final" / "model.safetensors").is_file()
    saved = load_config(out / "config.yaml")
    assert saved.model.num_classes == 2 and saved.data.test_clips == 1   # the resolved config
    assert json.loads((out / "summary.json").read_text())["num_failed"] == 1


class StopAt(Callback):
    """Ask the trainer to stop (as SIGTERM does) after a given step."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, metrics):
        if trainer.step == self.step:
            trainer.request_stop()


def test_resume_matches_an_uninterrupted_run_with_mixup_ema_and_repeats(tree, tmp_path):
    extra = TINY + data_keys(tree) + [
        "train.batch_size=4", "train.max_steps=5", "train.eval_every=0", "optim.lr=2e-3", "optim.warmup_steps=1",
        "model.drop_path_rate=0.2", "finetune.mixup=0.8", "finetune.cutmix=1.0", "finetune.repeated_aug=2",
        "finetune.ema=true", "finetune.ema_decay=0.99", "data.val=null"]
    full = run_finetune(load_config(None, extra + [f"train.output_dir={tmp_path / 'full'}"]))
    split_cfg = load_config(None, extra + [f"train.output_dir={tmp_path / 'split'}"])
    first = run_finetune(split_cfg, callbacks=[StopAt(2)])
    assert first["interrupted"] and first["steps"] == 2
    second = run_finetune(split_cfg)
    assert second["steps"] == 5 and not second["interrupted"] and full["steps"] == 5

    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["callbacks"]["ema"]["weights"]:
        assert torch.equal(a["callbacks"]["ema"]["weights"][key], b["callbacks"]["ema"]["weights"][key]), key
    assert a["callbacks"]["failures"] == b["callbacks"]["failures"]
    assert (tmp_path / "split" / "best" / "model.safetensors").is_file()   # no val set: the final EMA weights


def test_init_from_an_encoder_folder_resamples_and_gets_a_new_head(tree, tmp_path):
    from videomap.models import VideoMAP
    from videomap.train.finetune import build_model

    encoder = save_tiny_model(tmp_path / "encoder", num_classes=0, classes=None, num_frames=8, img_size=64)
    cfg = load_config(None, TINY + [f"model.checkpoint={encoder}", "model.drop_path_rate=0.1"])
    model = build_model(cfg, num_classes=3)
    source = VideoMAP.from_pretrained(encoder)
    assert model.num_classes == 3 and model.config.num_frames == 4 and model.config.img_size == 32
    assert model.config.drop_path_rate == 0.1
    assert model.temporal_pos_embedding.shape[1] == 4 and model.pos_embed.shape[1] == 1 + 4
    assert torch.equal(model.layers[0].mixer.in_proj.weight, source.layers[0].mixer.in_proj.weight)
    assert model(torch.zeros(1, 3, 4, 32, 32)).shape == (1, 3)


def test_label_fraction_and_inferred_classes(tree, tmp_path):
    out = tmp_path / "few"
    cfg = load_config(None, TINY + [f"data.train={tree / 'train.txt'}", f"train.output_dir={out}",
                                    "train.batch_size=2", "train.max_steps=1", "finetune.label_fraction=0.34"])
    summary = run_finetune(cfg)
    assert summary["train_videos"] == 4        # round(0.34 * 7) dark (incl. the broken one) + round(0.34 * 6) bright
    assert summary["classes"] == ["0", "1"]   # no data.classes: the list's own label names
    assert json.loads((out / "best" / "classes.json").read_text()) == ["0", "1"]


# ------------------------------------------------------------------------------------------------- DDP


def _ddp_worker(rank, world_size, port, overrides):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    run_finetune(load_config(None, overrides))


def test_ddp_step_where_one_process_lost_every_video(tmp_path):
    """Global batch 2 over 2 processes: rank 1's only video of the first step is corrupt. It must still take
    part in the gradient all-reduce, or the other process would wait forever."""
    seed, n = 0, 4
    order = epoch_permutation(n, seed, 0)           # step 0 gives order[0] to rank 0 and order[1] to rank 1
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        rel = f"clip_{i}.mp4"
        if i == order[1]:
            (tmp_path / rel).write_bytes(b"")
        else:
            write_video(tmp_path / rel, frames=brightness_frames(i % 2, rng))
        lines.append(f"{rel} {i % 2}")
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "ddp"
    overrides = TINY + [f"data.train={tmp_path / 'train.txt'}", f"train.output_dir={out}", "train.batch_size=2",
                        "train.max_steps=3", f"train.seed={seed}", "optim.warmup_steps=1"]

    run_two_processes(_ddp_worker, (overrides,), 240,
                      "DDP fine-tuning hung: a process with no decodable video skipped its backward pass")
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["step"] == 3 and state["world_size"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    failures = state["callbacks"]["failures"]
    assert failures["count"] >= 1 and list(failures["reasons"]) == [str(tmp_path / f"clip_{order[1]}.mp4")]
