"""Timing, peak-memory and table helpers shared by the benchmarks.

The project's machines are shared and noisy, so every number is a median over repeats, and comparisons are
taken side by side in one run and reported as ratios.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from videomap.ops.allocator import release_free_memory


@dataclass
class Measurement:
    """Median wall time (ms) and peak memory increase (MiB) of one callable."""

    median_ms: float
    peak_mib: float
    repeats: int


def _rss_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    # Writing 5 to clear_refs resets VmHWM (the peak RSS) on Linux >= 4.0.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_peak_memory(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory increase in MiB while ``fn`` runs once: CUDA allocator peak, or peak RSS on Linux CPU."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    # Freed pages kept by the allocator would be reused without raising the RSS: hand them back first so
    # the peak counts every page the run touches.
    release_free_memory()
    base = _rss_status("VmRSS")
    if base is None or not _reset_peak_rss():
        return float("nan")
    fn()
    peak = _rss_status("VmHWM")
    return max(0, peak - base) / 2**20 if peak is not None else float("nan")


def measure(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1,
            max_seconds: float | None = None) -> Measurement:
    """Median time of ``fn`` over ``repeats`` runs after ``warmup`` runs, and its peak memory.

    ``max_seconds`` stops repeating early once that much time was spent (slow reference paths).
    """

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    peak = measure_peak_memory(fn, device)
    times = []
    started = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            break
    return Measurement(statistics.median(times), peak, len(times))


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub-flavoured markdown table."""

    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_summary() -> str:
    """One line naming torch, threads and the CPU (or GPU) the numbers were taken on."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs ({cpu}){gpu}"


def run_worker(config_json: str, measure_configuration: Callable[..., dict]) -> int:
    """Body of a benchmark's hidden ``--worker`` mode: measure one configuration given as JSON (optionally
    with ``threads``) and print the result as the last JSON line on stdout, for the parent to read."""
    import json

    config = json.loads(config_json)
    threads = config.pop("threads", None)
    if threads:
        torch.set_num_threads(threads)
    print(json.dumps(measure_configuration(**config)))
    return 0
