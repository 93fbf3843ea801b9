"""Keep freed CPU memory in the process instead of returning it to the kernel (glibc only).

glibc serves large allocations with fresh ``mmap`` pages and gives them back on free, so every (B, E, L)
intermediate of a Mamba layer page-faults anew on every call. Raising the mmap threshold only helps up to
glibc's 32 MiB ceiling, which a 64-frame sequence's (1, 768, 12545) float32 tensors (38 MiB) already
exceed, so large allocations are taken from the heap instead (``M_MMAP_MAX = 0``) and freed memory is kept
for reuse (a high trim threshold). What that saves is measured in docs/ops.md ("Dense products and the
allocator").

It is a process-wide setting, so it is never applied on import. It is applied when it starts to matter: the
first time a model runs on CPU tensors (:meth:`videomap.models.VideoMAP.forward_tokens` calls
:func:`tune_cpu_allocator`), so a script that does ``model(x)`` runs as fast as the ``videomap`` command,
which applies it at start-up. ``VIDEOMAP_MALLOC_TUNING=0`` leaves glibc's defaults everywhere (e.g. to
``LD_PRELOAD`` a caching allocator such as tcmalloc instead, or in a host process that manages memory
itself). :func:`release_free_memory` hands the retained pages back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger("videomap.ops")

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling on 64-bit
_applied: bool | None = None


def tune_cpu_allocator() -> bool:
    """Serve large allocations from glibc's heap and keep freed pages, once per process; ``False`` where that
    does not apply."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("VIDEOMAP_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and mallopt(_M_MMAP_MAX, 0)
                    and mallopt(_M_TRIM_THRESHOLD, 2**30) and mallopt(_M_TOP_PAD, 64 * 2**20))
    log.debug("glibc allocator thresholds raised: %s", _applied)
    return _applied


def cpu_allocator_tuned() -> bool:
    """Whether :func:`tune_cpu_allocator` has changed glibc's thresholds in this process."""
    return bool(_applied)


def release_free_memory() -> None:
    """Return glibc's retained free pages to the kernel (``malloc_trim``), e.g. before measuring a peak RSS."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
