"""The study's specification: one YAML file names the grid and the budget; this module turns it into cells.

A *cell* is one fine-tuning run and its test score: a task, a layer schedule, a pretraining objective, a
masking, a width, a labelled fraction and a seed. Cells that need pretraining share one pretraining run per
``(task, schedule, width, objective, masking, seed)``.

The grid is one factor at a time around a base cell: every *sweep* takes the base cell, fixes the keys it
names (a list crosses its values) and runs every level of the factor it varies. Identical cells from
different sweeps are run once.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = ["StudyError", "Cell", "OBJECTIVES", "MASKINGS", "FACTORS", "load_spec", "resolve_spec", "build_cells",
           "pretrain_key", "cell_id", "deep_merge", "sweep_settings", "sweeps_of", "expand_schedule"]

#: Pretraining objectives: ``mar_*`` = frame-wise masked autoregressive (frame-causal decoder), ``mae`` = the
#: same masking and pixel targets with a bidirectional decoder, ``none`` = no pretraining (from scratch).
OBJECTIVES = ("mar_next", "mar_same", "mae", "none")
#: ``tokens``: the same number of random tokens hidden in every frame; ``frames``: whole frames hidden.
MASKINGS = ("tokens", "frames")
#: Factors a sweep may vary, and the top-level key listing each one's levels.
FACTORS = {"schedule": "schedules", "objective": "objectives", "masking": "maskings", "width": "widths",
           "label_fraction": "label_fractions", "task": "tasks"}


class StudyError(ValueError):
    """A study specification that cannot run as written."""


@dataclass(frozen=True)
class Cell:
    """One fine-tuning run of the grid (see the module docstring)."""

    task: str
    schedule: str
    objective: str
    masking: str
    width: str
    label_fraction: float
    seed: int

    @property
    def pretrained(self) -> bool:
        return self.objective != "none"

    def setting(self) -> tuple:
        """Everything but the seed: the cells averaged over seeds."""
        return (self.task, self.schedule, self.objective, self.masking, self.width, self.label_fraction)

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "schedule": self.schedule, "objective": self.objective, "masking": self.masking,
                "width": self.width, "label_fraction": self.label_fraction, "seed": self.seed}


#: Mappings that list a factor's levels: an override replaces them whole (a quick run with fewer schedules
#: must not inherit the others).
_LEVEL_MAPS = ("schedules", "widths")


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``top`` on top, mapping by mapping; anything else (lists, level maps) is replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and key not in _LEVEL_MAPS:
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_spec(path: str | Path) -> dict[str, Any]:
    """The YAML file as a mapping (its ``quick`` and ``scale`` sections still inside)."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, Mapping):
        raise StudyError(f"{path}: a study file must be a mapping")
    return dict(data)


def resolve_spec(raw: Mapping[str, Any], scale: str | None = None, quick: bool = False) -> dict[str, Any]:
    """The spec to run: the file's top level, then ``scale: {NAME: ...}`` for ``scale``, then ``quick``.

    ``quick`` comes last, so ``--quick --scale gpu`` is a toy run of the GPU grid's code path on any machine.
    """
    spec = {k: v for k, v in raw.items() if k not in ("quick", "scale")}
    if scale:
        scales = raw.get("scale") or {}
        if scale not in scales:
            raise StudyError(f"no scale {scale!r} in the study file (it has: {', '.join(scales) or 'none'})")
        spec = deep_merge(spec, scales[scale])
    if quick:
        spec = deep_merge(spec, raw.get("quick") or {})
    spec["scale_name"], spec["quick"] = scale or "cpu", quick
    _check_spec(spec)
    return spec


def _check_spec(spec: Mapping[str, Any]) -> None:
    for key in ("seeds", "tasks", "schedules", "widths", "objectives", "maskings", "label_fractions", "base",
                "sweeps", "budget", "model"):
        if key not in spec:
            raise StudyError(f"the study file has no '{key}'")
    unknown = [o for o in spec["objectives"] if o not in OBJECTIVES]
    unknown += [m for m in spec["maskings"] if m not in MASKINGS]
    if unknown:
        raise StudyError(f"unknown objectives/maskings {unknown}; objectives: {OBJECTIVES}, maskings: {MASKINGS}")
    for name, task in spec["tasks"].items():
        if task.get("kind") not in ("direction", "order"):
            raise StudyError(f"task kind must be 'direction' or 'order', got {task.get('kind')!r}")
        extra = sorted(set(task.get("budget") or {}) - set(spec["budget"]))
        if extra:
            raise StudyError(f"tasks.{name}.budget has keys the study budget does not: {extra} "
                             f"(budget keys: {sorted(spec['budget'])})")
    if any(not 0.0 < float(f) <= 1.0 for f in spec["label_fractions"]):
        raise StudyError("label fractions must be in (0, 1]")
    for sweep in spec["sweeps"]:
        if sweep.get("vary") not in FACTORS:
            raise StudyError(f"a sweep must vary one of {sorted(FACTORS)}, got {sweep.get('vary')!r}")


def _levels(spec: Mapping[str, Any], factor: str) -> list[Any]:
    levels = spec[FACTORS[factor]]
    return list(levels) if not isinstance(levels, Mapping) else list(levels)


def _normalise(cell: dict[str, Any]) -> dict[str, Any]:
    # Without pretraining there is no masking: one scratch cell, whatever the sweep asked for.
    if cell["objective"] == "none":
        cell["masking"] = "-"
    cell["label_fraction"] = float(cell["label_fraction"])
    return cell


def sweep_settings(spec: Mapping[str, Any], sweep: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The seedless settings of one sweep: the base cell, the sweep's fixed keys, every level of its factor."""
    fixed = {k: v for k, v in sweep.items() if k in FACTORS}
    choices: dict[str, list[Any]] = {}
    for key in FACTORS:
        if key == sweep["vary"]:
            choices[key] = _levels(spec, key)
        elif key in fixed:
            choices[key] = list(fixed[key]) if isinstance(fixed[key], list) else [fixed[key]]
        else:
            choices[key] = [spec["base"][key]]
    settings = []
    for values in itertools.product(*choices.values()):
        setting = _normalise(dict(zip(choices, values)))
        if setting not in settings:
            settings.append(setting)
    return settings


def build_cells(spec: Mapping[str, Any]) -> list[Cell]:
    """Every cell of every sweep, seed by seed (all of seed 0 first, so a stopped study has whole seeds),
    duplicates removed."""
    settings: list[dict[str, Any]] = []
    for sweep in spec["sweeps"]:
        for setting in sweep_settings(spec, sweep):
            if setting not in settings:
                settings.append(setting)
    for s in settings:
        for factor, key in (("schedule", "schedules"), ("width", "widths"), ("task", "tasks")):
            if s[factor] not in spec[key]:
                raise StudyError(f"{factor} {s[factor]!r} is not among the study's {key}")
    return [Cell(seed=int(seed), **s) for seed in spec["seeds"] for s in settings]


def _slug(text: str) -> str:
    """A file-name-safe form of a level name (``4:1`` → ``4to1``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.replace(":", "to"))


def pretrain_key(cell: Cell) -> str:
    """The folder of the pretraining run a cell fine-tunes from (shared by every fraction)."""
    return f"{cell.task}/{_slug(cell.schedule)}-{cell.width}-{cell.objective}-{cell.masking}/seed{cell.seed}"


def cell_id(cell: Cell) -> str:
    """A unique, readable name for a cell's folder and result file."""
    return (f"{cell.task}-{_slug(cell.schedule)}-{cell.width}-{cell.objective}-{_slug(cell.masking)}"
            f"-f{cell.label_fraction:g}-s{cell.seed}")


def sweeps_of(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The sweeps with their settings, for the report."""
    return [{**sweep, "settings": sweep_settings(spec, sweep)} for sweep in spec["sweeps"]]


def expand_schedule(pattern: str, spec: Mapping[str, Any]) -> str:
    """The layer string of a schedule level (``schedules`` maps level names to ``M``/``A`` strings)."""
    return str(spec["schedules"][pattern])
