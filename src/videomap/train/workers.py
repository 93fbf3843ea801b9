"""Data loader worker processes that leave SIGTERM to the process that owns them.

A batch scheduler stops a job by sending SIGTERM to its whole process group, loader workers included.
The training process answers by finishing its step and saving a checkpoint (``Trainer``); a worker that
died of the signal first would make the loader raise in the middle of that step instead. So workers
ignore SIGTERM, and they are shut down by their parent when it lets go of the loader (or notice that it
is gone).

Ignoring the signal inside ``worker_init_fn`` alone leaves a window: PyTorch installs its own SIGTERM
handler in each new worker (one that re-raises the default action, i.e. dies) before it calls
``worker_init_fn``. A signal landing in between kills the worker. Workers are started at every epoch
boundary, which is also when a pre-empted job is most likely to be caught mid-step, so the window is hit
in practice. :class:`WorkerLoader` closes it by blocking SIGTERM in the parent while it forks the workers:
the new workers start with the signal blocked, ignore it, then unblock it (a pending SIGTERM is dropped),
and the parent unblocks it again once its workers exist (a pending SIGTERM is delivered to its handler
then, not lost).
"""

from __future__ import annotations

import contextlib
import signal
from typing import Callable, Iterator

from torch.utils.data import DataLoader

#: ``signal.pthread_sigmask`` is POSIX-only; elsewhere workers are spawned and there is no process group.
_CAN_BLOCK = hasattr(signal, "pthread_sigmask")


class _IgnoreSigtermThen:
    """``worker_init_fn``: ignore SIGTERM, unblock it, then run ``then(worker_id)`` if given.

    A class rather than a closure so that it pickles for the ``spawn`` start method.
    """

    def __init__(self, then: Callable[[int], None] | None = None):
        self.then = then

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if _CAN_BLOCK:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        if self.then is not None:
            self.then(worker_id)


@contextlib.contextmanager
def sigterm_blocked() -> Iterator[None]:
    """Hold back SIGTERM in this thread for the block; one sent to it meanwhile is delivered after it.

    The mask is per thread: a process-wide SIGTERM may still be taken by another thread (Python then runs
    the handler in the main thread as usual). What matters here is that processes forked inside the block
    start with SIGTERM blocked, since they inherit the forking thread's mask.
    """
    if not _CAN_BLOCK:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class WorkerLoader(DataLoader):
    """A ``DataLoader`` whose worker processes never die of SIGTERM (see the module docstring).

    Takes exactly ``DataLoader``'s arguments; a ``worker_init_fn`` given runs in each worker after
    SIGTERM is ignored there. With ``num_workers=0`` it is a plain ``DataLoader``.
    """

    def __init__(self, *args, worker_init_fn: Callable[[int], None] | None = None, **kwargs):
        super().__init__(*args, worker_init_fn=_IgnoreSigtermThen(worker_init_fn), **kwargs)

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        # Workers are forked while the iterator is created (and, with persistent workers, only the first time).
        with sigterm_blocked():
            return super().__iter__()
