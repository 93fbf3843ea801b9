"""``videomap ablate``: the ablation study behind docs/ablations.md, run from one YAML file.

The study asks four questions of the design, at whatever scale the file sets: (1) does the 4:1
Mamba:attention hybrid beat pure Mamba, (2) does frame-wise masked autoregressive pretraining beat the
alternatives (a bidirectional-decoder masked autoencoder, no pretraining, other masks and targets), (3) does
pretraining help most with few labels, (4) does the encoder take longer videos. It runs every cell of a
one-factor-at-a-time grid (:mod:`.spec`), resumably (:mod:`.study`), and writes ``results.json``,
``results.md`` and plots (:mod:`.report`) in the output folder::

    videomap ablate configs/ablate/cpu.yaml [--quick] [--scale gpu] [--out runs/ablate] [--device auto] [--jobs N]

A rerun with the same arguments skips every finished cell whose settings the file still gives it; after
SIGTERM it continues where it stopped. ``--jobs N`` (or the file's ``jobs``) runs N cells at a time, each in
its own process (:mod:`.workers`).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from videomap.apps.ablate.spec import Cell, StudyError, build_cells, load_spec, resolve_spec
from videomap.apps.ablate.study import StudyInterrupted, run_cells, write_json_atomic

__all__ = ["Cell", "StudyError", "StudyInterrupted", "run_study", "report_study", "ablate_main", "machine_facts"]

log = logging.getLogger("videomap.apps.ablate")


def machine_facts() -> dict[str, Any]:
    """CPU model (as ``lscpu`` names it), core count, load average, torch version and threads."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _results(spec: Mapping[str, Any], spec_file: str, run: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    from videomap.apps.ablate.report import claim_verdicts, summarise

    tables = summarise(spec, run["cells"])
    total_cell_seconds = sum(c["seconds"] for c in run["cells"])
    return {"spec_file": spec_file, "scale": spec["scale_name"], "quick": spec["quick"], "seeds": spec["seeds"],
            "spec": spec, "cells_total": len(build_cells(spec)), "cells_finished": len(run["cells"]),
            "machine": machine_facts(), "widths": run["widths"], "tables": tables,
            "verdicts": claim_verdicts(tables, run["timing"]), "timing": run["timing"], "cells": run["cells"],
            "seconds": {"this_invocation": round(seconds, 1), "cells_run_now": run["cells_run_now"],
                        "sum_over_cells": round(total_cell_seconds, 1), "jobs": run["jobs"]}}


def write_report(out: Path, results: dict[str, Any]) -> dict[str, Any]:
    """``results.json``, ``results.md`` and the plots (atomically, so a reader never sees half a file)."""
    from videomap.apps.ablate.report import markdown_report, write_plots

    results["plots"] = write_plots(out, results["tables"], results["timing"])
    write_json_atomic(out / "results.json", results)
    text = markdown_report(results)
    tmp = out / ".results.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, out / "results.md")
    return results


def run_study(spec_file: str | Path, out: str | Path = "runs/ablate", quick: bool = False, scale: str | None = None,
              device: str = "auto",
              on_cell_done: Callable[[Cell, dict[str, Any]], None] | None = None,
              jobs: int | None = None) -> dict[str, Any]:
    """Run (or continue) the study of ``spec_file`` into ``out`` and write its report; returns ``results.json``.

    ``jobs``: cells run at a time (default: the file's ``jobs``, else 1).

    Raises :class:`StudyInterrupted` after SIGTERM (the finished cells stay on disk; rerun to continue).
    """
    from videomap.train.runtime import setup_logging

    setup_logging()
    spec = resolve_spec(load_spec(spec_file), scale=scale, quick=quick)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run = run_cells(out, spec, device=device, on_cell_done=on_cell_done, jobs=jobs)
    return write_report(out, _results(spec, str(spec_file), run, time.perf_counter() - started))


def report_study(spec_file: str | Path, out: str | Path = "runs/ablate", quick: bool = False,
                 scale: str | None = None) -> dict[str, Any]:
    """Write the report of whatever cells of the study in ``out`` are finished, running none; returns
    ``results.json``. For reading a study that is still running or was stopped."""
    from videomap.apps.ablate.study import finished_cells

    spec = resolve_spec(load_spec(spec_file), scale=scale, quick=quick)
    out = Path(out)
    if not (out / "cells").is_dir():
        raise StudyError(f"{out} holds no finished cell of a study (no {out / 'cells'} folder)")
    return write_report(out, _results(spec, str(spec_file), finished_cells(out, spec), 0.0))


def ablate_main(argv: Sequence[str] | None = None) -> int:
    """``videomap ablate CONFIG.yaml [--quick] [--scale NAME] [--out DIR] [--device D] [--jobs N]``; the exit code is 0
    when the study is complete, 2 when SIGTERM stopped it (rerun to continue), 1 when it cannot run."""
    parser = argparse.ArgumentParser(
        prog="videomap ablate",
        description="Run the ablation study a YAML file describes (schedules, objectives, masking, label "
                    "fractions, widths), resumably, and write results.json, results.md and plots.")
    parser.add_argument("config", help="the study file, e.g. configs/ablate/cpu.yaml")
    parser.add_argument("--quick", action="store_true", help="the same code path at toy sizes (under a minute)")
    parser.add_argument("--scale", default=None, help="a section of the file's 'scale:' (e.g. gpu) applied on top")
    parser.add_argument("--out", default="runs/ablate", help="output folder (default: runs/ablate)")
    parser.add_argument("--device", default=None, help="auto, cpu or cuda (default: the file's 'device')")
    parser.add_argument("--jobs", type=int, default=None,
                        help="cells run at a time, each in its own process (default: the file's 'jobs', else 1)")
    parser.add_argument("--report", action="store_true",
                        help="only write the report of the cells already finished in --out (runs nothing)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.report:
            results = report_study(args.config, args.out, quick=args.quick, scale=args.scale)
        else:
            device = args.device or str(load_spec(args.config).get("device", "auto"))
            results = run_study(args.config, args.out, quick=args.quick, scale=args.scale, device=device,
                                jobs=args.jobs)
    except StudyInterrupted as stopped:
        print(f"videomap ablate: {stopped}; finished cells are kept in {args.out}, rerun the same command to "
              f"continue", file=sys.stderr)
        return 2
    except (StudyError, FileNotFoundError) as error:
        print(f"videomap ablate: {error}", file=sys.stderr)
        return 1
    print(Path(args.out, "results.md").read_text())
    print(f"{results['cells_finished']} cells; results.json, results.md and plots in {args.out}")
    return 0
