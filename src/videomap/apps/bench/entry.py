"""``videomap bench entry``: a plain script against the ``videomap`` command, on the same forward.

The command tunes glibc's allocator at start-up (:mod:`videomap.ops.allocator`); a script that only does
``import videomap; model(x)`` gets the same tuning from the model's first CPU forward. This benchmark runs
the same forward in three fresh processes, side by side:

* ``script`` — ``import videomap``, build, ``model(x)``: nothing else;
* ``command`` — as the ``videomap`` command starts: the allocator tuned before anything else runs;
* ``untuned`` — ``VIDEOMAP_MALLOC_TUNING=0``: glibc's defaults, what a script got before the model tuned it.

and prints each one's median time and its ratio to ``command`` (≈ 1.0 for ``script`` means a script is as
fast as the command).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from videomap.apps.bench.common import machine_summary, markdown_table

ENTRIES = ("script", "command", "untuned")

_WORKER = r"""
import json, statistics, sys, time
entry, name, frames, img, repeats, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
if entry == "command":
    from videomap.ops.allocator import tune_cpu_allocator
    tune_cpu_allocator()
import torch
import videomap
from videomap.ops.allocator import cpu_allocator_tuned
if threads:
    torch.set_num_threads(threads)
torch.manual_seed(0)
model = videomap.create_model(name, num_classes=400, num_frames=frames, img_size=img).eval()
x = torch.randn(1, 3, frames, img, img)
times = []
with torch.no_grad():
    model(x)  # warm-up: first-use costs (kernel loading, oneDNN primitives)
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - t0) * 1e3)
print(json.dumps({"median_ms": statistics.median(times), "tuned": cpu_allocator_tuned(), "repeats": repeats}))
"""


def run_entry(entry: str, model: str, frames: int, img_size: int, repeats: int, threads: int = 0) -> dict:
    """One fresh process for ``entry`` (one of :data:`ENTRIES`); returns ``{"median_ms", "tuned", ...}``."""
    if entry not in ENTRIES:
        raise ValueError(f"unknown entry {entry!r}; choose one of {ENTRIES}")
    env = dict(os.environ)
    env.pop("VIDEOMAP_MALLOC_TUNING", None)
    if entry == "untuned":
        env["VIDEOMAP_MALLOC_TUNING"] = "0"
    args = [sys.executable, "-c", _WORKER, entry, model, str(frames), str(img_size), str(repeats), str(threads)]
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {entry} run failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="videomap bench entry", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="videomap_small")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="alternate the three entries this many times")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    results: dict[str, list[dict]] = {e: [] for e in ENTRIES}
    # Alternating the entries spreads the machine's background load over all three.
    for _ in range(args.rounds):
        for entry in ENTRIES:
            results[entry].append(run_entry(entry, args.model, args.frames, args.img_size, args.repeats,
                                            args.threads))
    best = {e: min(r["median_ms"] for r in runs) for e, runs in results.items()}
    rows = [[e, best[e], best[e] / best["command"], results[e][0]["tuned"]] for e in ENTRIES]
    print(f"{args.model}, {args.frames} frames of {args.img_size}², batch 1, forward, fp32 — {machine_summary()}")
    print(markdown_table(["entry", "ms (best of rounds' medians)", "÷ command", "allocator tuned"], rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "results": results, "machine": machine_summary()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
