"""Checkpoints: atomic writes, weights_only loading, clear errors for damaged files, RNG round trip."""

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from videomap.train import checkpoint as ckpt
from videomap.train.checkpoint import (
    CheckpointError,
    capture_rng_state,
    check_plain,
    find_generators,
    load_checkpoint,
    resolve_resume,
    restore_rng_state,
    save_checkpoint,
)


def _state():
    m = nn.Linear(3, 2)
    opt = torch.optim.AdamW(m.parameters())
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {"model": m.state_dict(), "optimizer": opt.state_dict(), "step": 3, "epoch": 1, "position": 2,
            "rng": [capture_rng_state()]}


def test_checkpoint_loads_with_weights_only(tmp_path):
    path = save_checkpoint(_state(), tmp_path / "checkpoints" / "last.pt")
    state = torch.load(path, weights_only=True)   # the contract: no pickled code in a checkpoint
    assert state["step"] == 3 and state["format"] == ckpt.CHECKPOINT_FORMAT
    assert list(tmp_path.joinpath("checkpoints").iterdir()) == [path]   # no temporary files left behind


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(_state(), tmp_path / "last.pt")
    before = path.read_bytes()

    def dies_half_way(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"step": 4}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_gives_a_clear_error(tmp_path, damage):
    path = save_checkpoint(_state(), tmp_path / "last.pt")
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00not a checkpoint" * 10,
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert str(path) in msg and "corrupt" in msg and "train.resume" in msg


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": _Custom()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True loading"):
        load_checkpoint(path)


class _Custom:
    pass


def test_check_plain_names_the_offending_value():
    check_plain({"a": [torch.zeros(1), 1, 2.0, "x", None, {"b": (True,)}]})
    with pytest.raises(TypeError, match=r"\['metrics'\]\['acc'\].*numpy"):
        check_plain({"metrics": {"acc": np.float32(0.5)}})
    with pytest.raises(TypeError):
        save_checkpoint({"x": object()}, "/nonexistent/never/written.pt")


def test_resolve_resume(tmp_path):
    assert resolve_resume(tmp_path, "auto") is None
    assert resolve_resume(tmp_path, "none") is None
    path = save_checkpoint({"step": 1}, tmp_path / "checkpoints" / "last.pt")
    assert resolve_resume(tmp_path, "auto") == path
    assert resolve_resume(tmp_path, "none") is None
    assert resolve_resume(tmp_path / "x", str(path)) == path
    assert resolve_resume(tmp_path / "x", str(tmp_path)) == path
    with pytest.raises(CheckpointError, match="no checkpoint"):
        resolve_resume(tmp_path, str(tmp_path / "missing.pt"))


def test_rng_states_round_trip(tmp_path):
    class WithGen(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Module()
            self.inner.gen = torch.Generator().manual_seed(5)

    m = WithGen()
    gens = find_generators(m)
    assert list(gens) == ["inner.gen"]
    torch.randn(3), np.random.rand(), random.random(), torch.randn(2, generator=gens["inner.gen"])
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    path = save_checkpoint({"rng": capture_rng_state(gens)}, tmp_path / "rng.pt")
    expected = (torch.randn(3), np.random.rand(), random.random(), random.gauss(0, 1),
                torch.randn(2, generator=gens["inner.gen"]))
    torch.randn(10), np.random.rand(7), random.random(), torch.randn(9, generator=gens["inner.gen"])
    restore_rng_state(load_checkpoint(path)["rng"], gens)
    got = (torch.randn(3), np.random.rand(), random.random(), random.gauss(0, 1),
           torch.randn(2, generator=gens["inner.gen"]))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[4], expected[4])
    assert got[1:4] == expected[1:4]
