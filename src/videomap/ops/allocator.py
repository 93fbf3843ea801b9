"""Keep freed CPU memory in the process instead of returning it to the kernel (glibc only).

glibc serves allocations above 128 KiB–32 MiB with fresh ``mmap`` pages and gives them back on free, so a
Mamba layer's (B, E, L) intermediates page-fault anew on every call; on the project's machines that cost
0.1–1.3 ms per MiB and made a Mamba layer ~20–50% slower. Raising glibc's thresholds keeps those pages for
reuse. It is a process-wide setting, so the library never applies it on import: the ``videomap`` command and
the benchmarks call :func:`tune_cpu_allocator`; set ``VIDEOMAP_MALLOC_TUNING=0`` to leave glibc's defaults
(or ``LD_PRELOAD`` a caching allocator such as tcmalloc instead).
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
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling on 64-bit
_applied: bool | None = None


def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap/trim thresholds once per process; ``False`` where that does not apply."""
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
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
                    and mallopt(_M_TRIM_THRESHOLD, 2**30) and mallopt(_M_TOP_PAD, 64 * 2**20))
    log.debug("glibc allocator thresholds raised: %s", _applied)
    return _applied


def release_free_memory() -> None:
    """Return glibc's retained free pages to the kernel (``malloc_trim``), e.g. before measuring a peak RSS."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
