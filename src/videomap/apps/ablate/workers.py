"""Cells side by side: ``jobs`` worker processes, each running one unit of the study at a time.

A study's runs are small (one torch thread each, by the CPU file's choice), so a 2-core machine finishes
about twice as many of them in the same time when two run at once. The work is cut so that no two processes
ever write the same files:

1. **data units**, one per (task, seed) whose clips are not written yet, with the pretraining list when any
   cell of that task and seed pretrains;
2. **cell units**, the cells sharing one pretraining run (every label fraction of it) together, in grid
   order, since the first of them pretrains and the others reuse it; a cell without pretraining is a unit
   of its own.

Each unit runs in a fresh (spawned) process that writes its cells' result files itself, exactly as the
in-process study does, so a study can be continued with any number of jobs. On SIGTERM the parent stops
starting units and passes the signal on; a worker inside a training run saves and stops (the Trainer's own
handling), one between cells stops before the next. A unit that fails lets the running ones finish, then
the study stops with the unit's error and the path of its full traceback.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from videomap.apps.ablate.spec import Cell, StudyError, cell_id, pretrain_key
from videomap.apps.ablate.study import (StudyInterrupted, cell_file, cell_plan, prepare_task, read_json,
                                        run_and_save, stop_on_sigterm)

__all__ = ["Unit", "plan_units", "run_in_workers"]

log = logging.getLogger("videomap.apps.ablate")

#: A worker's exit status when SIGTERM stopped it before its unit was done.
_STOPPED = 3


@dataclass(frozen=True)
class Unit:
    """Work for one process: write the data of ``cells[0]``'s task and seed (``kind == "data"``), or run
    ``cells`` one after another (``kind == "cells"``)."""

    kind: str
    name: str
    cells: tuple[Cell, ...]


def plan_units(cells: list[Cell]) -> tuple[list[Unit], list[Unit]]:
    """``(data units, cell units)`` for the unfinished ``cells`` (in grid order)."""
    data: dict[tuple[str, int], list[Cell]] = {}
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        data.setdefault((cell.task, cell.seed), []).append(cell)
        groups.setdefault(pretrain_key(cell) if cell.pretrained else cell_id(cell), []).append(cell)
    # A pretrained cell first, so that the data unit writes the pretraining list whenever one is needed.
    data_units = [Unit("data", f"data {task} seed {seed}", tuple(sorted(group, key=lambda c: not c.pretrained)))
                  for (task, seed), group in data.items()]
    cell_units = [Unit("cells", key, tuple(group)) for key, group in groups.items()]
    return data_units, cell_units


def _work(out: Path, spec: Mapping[str, Any], unit: Unit, widths: Mapping[str, Any], device: str) -> None:
    """A worker's body (module level, so a spawned process can import it)."""
    import torch

    from videomap.train.runtime import setup_logging

    setup_logging()
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    with stop_on_sigterm() as stop:
        try:
            if unit.kind == "data":
                cell = unit.cells[0]
                prepare_task(out, spec, cell, cell_plan(spec, cell, widths), with_pretrain=cell.pretrained)
                return
            for cell in unit.cells:
                if stop.is_set():
                    sys.exit(_STOPPED)
                log.info("[%s] starting", cell_id(cell))
                run_and_save(out, spec, cell, widths, device)
        except StudyInterrupted:
            sys.exit(_STOPPED)
        except Exception:
            error = _error_file(out, unit)
            error.parent.mkdir(parents=True, exist_ok=True)
            error.write_text(traceback.format_exc())
            raise
    if stop.is_set():
        sys.exit(_STOPPED)


def _error_file(out: Path, unit: Unit) -> Path:
    return out / "errors" / (unit.name.replace("/", "_").replace(" ", "_") + ".txt")


def _run_phase(out: Path, spec: Mapping[str, Any], units: list[Unit], widths: Mapping[str, Any], device: str,
               jobs: int, stop: threading.Event) -> Iterator[Unit]:
    """Run ``units`` on ``jobs`` processes; yields each unit when its process has ended well (also while
    others still run). Raises :class:`StudyInterrupted` after SIGTERM and :class:`StudyError` after a failed
    unit, in both cases once every started process has ended."""
    context = multiprocessing.get_context("spawn")  # a fork would copy the parent's torch threads and locks
    pending, running = list(units), {}
    signalled: set[int] = set()
    failed: list[str] = []
    stopped = False
    try:
        while pending or running:
            while pending and len(running) < jobs and not stop.is_set() and not failed:
                unit = pending.pop(0)
                process = context.Process(target=_work, args=(out, spec, unit, widths, device), name=unit.name)
                process.start()
                running[process.sentinel] = (process, unit)
            if not running:
                break
            ended = multiprocessing.connection.wait(list(running), timeout=1.0)
            if stop.is_set():
                for process, _ in running.values():
                    if process.pid not in signalled:
                        signalled.add(process.pid)
                        process.terminate()  # SIGTERM: the worker saves and stops (see the module docstring)
            for sentinel in ended:
                process, unit = running.pop(sentinel)
                process.join()
                if process.exitcode == 0:
                    yield unit
                elif process.exitcode == _STOPPED or process.pid in signalled:
                    stopped = True
                else:
                    error = _error_file(out, unit)
                    last = error.read_text().strip().splitlines()[-1] if error.is_file() else "no traceback written"
                    failed.append(f"{unit.name} failed (exit code {process.exitcode}): {last}; "
                                  f"full traceback in {error}")
    finally:
        for process, _ in running.values():  # only left on an exception here (e.g. Ctrl-C)
            process.terminate()
            process.join()
    if failed:
        raise StudyError("; ".join(failed))
    if stopped or stop.is_set():
        raise StudyInterrupted("stopped by SIGTERM; the cells finished until then are kept, rerun to continue")


def run_in_workers(out: Path, spec: Mapping[str, Any], cells: list[Cell], widths: Mapping[str, Any], device: str,
                   jobs: int, stop: threading.Event,
                   on_cell_done: Callable[[Cell, dict[str, Any]], None] | None = None
                   ) -> Iterator[tuple[Cell, dict[str, Any]]]:
    """Run the unfinished ``cells`` on ``jobs`` worker processes; yields ``(cell, result)`` as cells finish.

    ``on_cell_done`` is called here, in the calling process, for each newly finished cell, when the unit
    that ran it has ended.
    """
    data_units, cell_units = plan_units(cells)
    started = time.perf_counter()
    list(_run_phase(out, spec, data_units, widths, device, jobs, stop))
    log.info("%d cells in %d units on %d processes", len(cells), len(cell_units), jobs)
    reported: set[Cell] = set()

    def newly_finished(candidates) -> Iterator[tuple[Cell, dict[str, Any]]]:
        for cell in candidates:
            if cell not in reported and (result := read_json(cell_file(out, cell))) is not None:
                reported.add(cell)
                log.info("[%d/%d cells, %.0f s] %s: test top-1 %s", len(reported), len(cells),
                         time.perf_counter() - started, cell_id(cell), result["test_top1"])
                if on_cell_done is not None:
                    on_cell_done(cell, result)
                yield cell, result

    for unit in _run_phase(out, spec, cell_units, widths, device, jobs, stop):
        yield from newly_finished(unit.cells)
    missing = [cell_id(c) for c in cells if c not in reported]
    if missing:  # every unit ended well, so each of its cells must have written its result
        raise StudyError(f"workers ended without the results of {missing}")
