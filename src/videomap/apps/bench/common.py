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


# ------------------------------------------------------------------------------ the frame-sweep harnesses
# The backbone and encoder benchmarks share their command line, their isolated runs and their plot axes.


def add_sweep_arguments(parser, *, models, frames, modes, device: str, timeout_s: float | None) -> None:
    """The flags both frame-sweep benchmarks take (models, frames, modes, sizes, repeats, device, ratios,
    isolation, output), plus the hidden ``--worker`` mode of :func:`run_worker`."""
    import argparse

    parser.add_argument("--models", nargs="+", default=list(models), help="registered model names")
    parser.add_argument("--frames", nargs="+", type=int, default=list(frames), help="frame counts")
    parser.add_argument("--modes", nargs="+", choices=modes, default=list(modes))
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default=device, help="cpu, cuda or auto (cuda when available)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--baseline", default="videovit_small", help="model the ratios are taken against ('' = none)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=timeout_s, help="seconds per configuration")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop repeating after this long")
    parser.add_argument("--in-process", action="store_true", help="no subprocess per configuration")
    parser.add_argument("--out", default=None, help="directory for results.json, table.md and the PNG plot")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def sweep_preamble(args, measure_configuration: Callable[..., dict]) -> int | None:
    """What both benchmarks' ``main`` does first: tune the allocator as the ``videomap`` command does (so the
    numbers match it), run the hidden worker mode, and refuse unknown models. Returns an exit status to
    stop with, or ``None`` to go on with the sweep."""
    import sys

    from videomap.models import list_models
    from videomap.ops.allocator import tune_cpu_allocator

    tune_cpu_allocator()
    if args.worker is not None:  # one isolated configuration
        return run_worker(args.worker, measure_configuration)
    unknown = [m for m in args.models if m not in list_models()]
    if unknown:
        print(f"unknown model(s) {unknown}", file=sys.stderr)
        return 2
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return None


def run_isolated(module: str, config: dict, identity: dict, timeout_s: float | None, env: dict) -> dict:
    """``python -m module --worker CONFIG`` in a fresh interpreter, so that one configuration's memory peak
    and allocator state never colour the next. Returns the worker's JSON result, or ``identity`` plus an
    ``"error"`` (a time-out, a crash's last line, or a kill that looks like running out of memory)."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", module, "--worker", json.dumps(config)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {**identity, "error": f"timed out after {timeout_s:g} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        text = (proc.stderr or proc.stdout).strip().splitlines()
        reason = text[-1] if text else f"exit status {proc.returncode}"
        if proc.returncode in (-9, 137):
            reason = "killed (out of memory?)"
        return {**identity, "error": reason[:300]}
    return json.loads(lines[-1])


def pyplot_or_none(script: str):
    """``matplotlib.pyplot`` on the Agg backend, or ``None`` (with a hint on stderr) when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        import sys

        print(f"{script}: matplotlib is not installed (pip install 'videomap[plot]'); no plot written", file=sys.stderr)
        return None
    return plt


def frames_axis(ax, frames, ylabel: str, xlabel: str = "frames") -> None:
    """Log-log axes with the measured frame counts as the x ticks, and a light grid."""
    import matplotlib.ticker

    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(frames, [str(f) for f in frames])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def save_figure(fig, plt, path, title: str = "") -> str:
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def write_report(out_dir, report: dict):
    """``OUT/results.json`` (everything but the table) and ``OUT/table.md`` (the machine, then the table).
    Returns the folder, for the plot to go beside them."""
    import json
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({k: v for k, v in report.items() if k != "table"}, indent=2))
    (out / "table.md").write_text(f"{report['machine']}\n\n{report['table']}\n")
    return out
