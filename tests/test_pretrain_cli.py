"""`videomap pretrain` end to end on small PyAV-written clips: outputs, reconstruction pictures, exact resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_video
from videomap import create_model
from videomap.train.checkpoint import load_checkpoint
from videomap.train.config import load_config
from videomap.train.pretrain_run import run_pretrain

pytest.importorskip("av")

TINY = ["model.name=videomap_tiny", "model.kwargs={embed_dim: 32, schedule: MMA, num_heads: 2}",
        "data.num_frames=4", "data.img_size=32", "data.num_workers=0", "train.batch_size=2", "train.log_every=1",
        "pretrain.decoder_depth=1", "pretrain.decoder_dim=32", "pretrain.decoder_heads=2", "optim.warmup_steps=1"]


def moving_square_clips(folder: Path, count: int = 4) -> Path:
    """``count`` clips of a bright square moving over noise, and a ``path label`` list."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        frames = rng.integers(0, 60, size=(10, 48, 48, 3), dtype=np.uint8)
        for t in range(10):
            frames[t, 10:26, 3 * t + i: 3 * t + i + 16] = 230
        write_video(folder / f"clip{i}.mp4", frames=frames, width=48, height=48)
        lines.append(f"clip{i}.mp4 {i % 2}")
    (folder / "train.txt").write_text("\n".join(lines) + "\n")
    return folder / "train.txt"


def test_pretrain_command_writes_a_loadable_encoder_and_pictures(tmp_path):
    listing = moving_square_clips(tmp_path / "clips")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "videomap", "pretrain", *TINY, f"data.train={listing}", "train.max_steps=3",
           f"train.output_dir={out}", "pretrain.recon_every=2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "encoder saved" in done.stdout
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3]
    assert load_config(out / "config.yaml").train.max_steps == 3
    state = load_checkpoint(out / "checkpoints" / "last.pt")  # weights_only=True inside
    assert state["step"] == 3
    encoder = create_model("videomap_tiny", num_classes=0, num_frames=4, img_size=32,
                           embed_dim=32, schedule="MMA", num_heads=2, checkpoint_path=str(out / "encoder"))
    assert encoder.schedule == "MMA"
    pictures = sorted(p.name for p in (out / "reconstructions").glob("*.png"))
    assert pictures == ["step_000002.png", "step_000003.png"]


def test_resume_continues_exactly(tmp_path):
    listing = moving_square_clips(tmp_path / "clips")

    def run(output, steps):
        # A constant learning rate: a 2-step run's cosine schedule would differ from a 4-step run's.
        cfg = load_config(None, [*TINY, f"data.train={listing}", f"train.output_dir={output}",
                                 f"train.max_steps={steps}", "train.save_every=0", "optim.schedule=constant",
                                 "optim.warmup_steps=0", "pretrain.mask_ratio_random=true"])
        return run_pretrain(cfg)

    run(tmp_path / "straight", 4)
    run(tmp_path / "resumed", 2)
    run(tmp_path / "resumed", 4)  # train.resume=auto picks up checkpoints/last.pt
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_training_list_is_a_clear_error(tmp_path):
    cfg = load_config(None, [*TINY, f"train.output_dir={tmp_path}", "train.max_steps=1"])
    with pytest.raises(ValueError, match="data.train"):
        run_pretrain(cfg)


def test_undecodable_clips_are_counted_never_replaced(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    (folder / "train.txt").write_text("broken.mp4 0\nbroken.mp4 0\n")
    cfg = load_config(None, [*TINY, f"data.train={folder / 'train.txt'}", f"train.output_dir={tmp_path / 'run'}",
                             "train.max_steps=1"])
    result = run_pretrain(cfg)
    assert result["step"] == 1
    assert result["failed_videos"]["failed_loads"] == 2
    assert [f["path"] for f in result["failed_videos"]["failed_videos"]] == [str(folder / "broken.mp4")]
    assert result["failed_videos"]["failed_videos"][0]["reason"]
    assert not (tmp_path / "run" / "reconstructions").exists()  # nothing decodes, so no picture


def test_a_resumed_run_keeps_the_failure_count_of_the_steps_before_it(tmp_path):
    listing = moving_square_clips(tmp_path / "clips", count=3)
    (tmp_path / "clips" / "broken.mp4").write_bytes(b"not a video at all")
    with listing.open("a") as f:
        f.write("broken.mp4 0\n")  # 4 listed clips, batch 2: every epoch of 2 steps meets it once

    def run(output, steps):
        cfg = load_config(None, [*TINY, f"data.train={listing}", f"train.output_dir={output}",
                                 f"train.max_steps={steps}", "train.save_every=0"])
        return run_pretrain(cfg)["failed_videos"]

    straight = run(tmp_path / "straight", 4)
    first = run(tmp_path / "resumed", 2)
    resumed = run(tmp_path / "resumed", 4)
    assert first["failed_loads"] == 1
    assert straight["failed_loads"] == 2
    assert resumed == straight  # the count before the interruption is checkpointed, not lost
