"""Loader workers survive a SIGTERM sent to the process group, even one that lands while they start.

PyTorch installs a SIGTERM handler that kills the worker before it runs ``worker_init_fn``. These tests
deliver the signal in exactly that window (by wrapping PyTorch's installer) instead of hoping a timed
``killpg`` hits it, so they fail every time on a loader that only ignores SIGTERM in ``worker_init_fn``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import pytest
import torch
from torch.utils.data._utils import signal_handling

from videomap.train.batches import ResumableBatches
from videomap.train.workers import WorkerLoader, sigterm_blocked

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGTERM are POSIX")


class Squares(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.tensor([float(i * i)])


@pytest.fixture
def sigterm_as_workers_start(monkeypatch):
    """Every new worker gets SIGTERM right after PyTorch installs its worker signal handlers."""
    install = signal_handling._set_worker_signal_handlers

    def install_then_sigterm(*args):
        install(*args)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(signal_handling, "_set_worker_signal_handlers", install_then_sigterm)


def test_training_batches_load_when_sigterm_hits_workers_as_they_start(sigterm_as_workers_start):
    batches = ResumableBatches(Squares(), batch_size=4, seed=0, shuffle=False, num_workers=2)
    got = [b for epoch in range(2) for b in batches(epoch, 0)]
    assert len(got) == 4
    assert torch.equal(torch.cat(got[:2]).flatten(), torch.arange(8.0) ** 2)


def test_worker_loader_runs_the_given_init_fn_after_ignoring_sigterm(sigterm_as_workers_start, tmp_path):
    def mark(worker_id):
        (tmp_path / f"worker{worker_id}").write_text(str(signal.getsignal(signal.SIGTERM) == signal.SIG_IGN))

    loader = WorkerLoader(Squares(), batch_size=2, num_workers=2, worker_init_fn=mark)
    assert torch.equal(torch.cat(list(loader)).flatten(), torch.arange(8.0) ** 2)
    assert sorted(p.read_text() for p in tmp_path.iterdir()) == ["True", "True"]


def test_the_parent_gets_a_sigterm_held_back_while_workers_start():
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    # Another thread (left by an earlier test) may take a process-wide kill; the mask is per thread, so the
    # signal goes to this thread itself. What the block must guarantee is that it is held back here, where
    # the workers are forked (they inherit this thread's mask).
    idle = threading.Event()
    bystander = threading.Thread(target=idle.wait, daemon=True)
    bystander.start()
    try:
        with sigterm_blocked():
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
            assert received == []                      # held back, not lost ...
        assert received == [signal.SIGTERM]            # ... and delivered once the block ends
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
        list(WorkerLoader(Squares(), batch_size=4, num_workers=1))
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # the mask is restored
    finally:
        idle.set()
        signal.signal(signal.SIGTERM, previous)
