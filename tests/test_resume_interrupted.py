"""A real interruption: ``videomap pretrain`` / ``videomap finetune`` run as subprocesses, stopped with SIGTERM
part-way through, then rerun with ``train.resume=auto``, end with exactly the weights (and EMA) of the same
command run without interruption.

The runs use what a real recipe uses and the in-process resume tests leave out: the default warm-up + cosine
schedule (a function of the step and the run length), a random mask ratio, EMA, Mixup, and data loader
worker processes. SIGTERM goes to the command's whole process group, workers included, as a batch
scheduler sends it at pre-emption.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_finetune import TINY as FINETUNE_TINY
from test_finetune import write_brightness_split
from test_pretrain_cli import TINY as PRETRAIN_TINY
from test_pretrain_cli import moving_square_clips

from videomap.train.checkpoint import load_checkpoint

pytest.importorskip("av", reason="PyAV (pip install av) is needed to write fixture videos")

MAX_STEPS = 10
#: Stop once this many steps are logged: well before the end, after the first epoch boundary.
STOP_AFTER = 3
COMMON = [f"train.max_steps={MAX_STEPS}", "train.log_every=1", "train.device=cpu", "train.progress=log",
          "optim.schedule=cosine", "optim.warmup_steps=3", "data.num_workers=2"]


def logged_steps(output: Path) -> int:
    path = output / "metrics.jsonl"
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.endswith("}") and '"loss"' in line)


def run_command(args: list[str], output: Path, stop_after: int | None = None, timeout: float = 120) -> str:
    """Run ``python -m videomap ARGS train.output_dir=OUTPUT``; with ``stop_after``, send SIGTERM to its process
    group once that many steps are logged. Returns the command's output; fails the test on a non-zero exit."""
    cmd = [sys.executable, "-m", "videomap", *args, f"train.output_dir={output}"]
    log_file = output.parent / f"{output.name}.{'stopped' if stop_after else 'run'}.log"
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
        deadline = time.time() + timeout
        try:
            while proc.poll() is None:
                if time.time() > deadline:
                    pytest.fail(f"{' '.join(args[:1])} did not finish within {timeout} s:\n{log_file.read_text()[-3000:]}")
                if stop_after is not None and logged_steps(output) >= stop_after:
                    os.killpg(proc.pid, signal.SIGTERM)
                    stop_after = None
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = log_file.read_text()
    assert proc.returncode == 0, text[-3000:]
    return text


def interrupted_then_resumed(args: list[str], tmp_path: Path) -> tuple[dict, dict, int]:
    """The final checkpoints of an uninterrupted run and of a stopped-then-resumed one, and the step at which
    the stopped run saved."""
    run_command(args, tmp_path / "full")
    run_command(args, tmp_path / "split", stop_after=STOP_AFTER)
    stopped_at = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["step"]
    assert STOP_AFTER <= stopped_at < MAX_STEPS, f"the first run was not stopped part-way (step {stopped_at})"
    run_command([*args, "train.resume=auto"], tmp_path / "split")
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    split = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert full["step"] == split["step"] == MAX_STEPS
    return full, split, stopped_at


def assert_equal_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs after resuming"


def test_pretrain_resumes_bit_exactly_after_sigterm(tmp_path):
    listing = moving_square_clips(tmp_path / "clips")
    args = ["pretrain", *PRETRAIN_TINY, *COMMON, f"data.train={listing}", "pretrain.mask_ratio_random=true"]
    full, split, _ = interrupted_then_resumed(args, tmp_path)
    assert_equal_tensors(full["model"], split["model"], "weights")
    assert_equal_tensors(full["rng"][0]["generators"], split["rng"][0]["generators"], "mask generator")
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, MAX_STEPS + 1))


def test_finetune_resumes_bit_exactly_after_sigterm(tmp_path):
    root = tmp_path / "data"
    write_brightness_split(root, "train", [0, 1] * 6, seed=0, corrupt=1)
    args = ["finetune", *FINETUNE_TINY, *COMMON, f"data.train={root / 'train.txt'}",
            f"data.classes={root / 'classes.txt'}", "train.batch_size=4", "finetune.ema=true",
            "finetune.ema_decay=0.9", "finetune.mixup=0.8", "optim.lr=2e-3"]
    full, split, _ = interrupted_then_resumed(args, tmp_path)
    assert_equal_tensors(full["model"], split["model"], "weights")
    assert_equal_tensors(full["callbacks"]["ema"]["weights"], split["callbacks"]["ema"]["weights"], "EMA weights")
    assert full["callbacks"]["ema"]["updates"] == split["callbacks"]["ema"]["updates"] == MAX_STEPS
    assert full["callbacks"]["failures"] == split["callbacks"]["failures"]
