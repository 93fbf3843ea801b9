"""The study's report: mean ± standard error over seeds per setting, paired differences to the reference of
each sweep, a verdict per claim, a markdown page and plots.

Noise rule (the demo's, over seeds): a difference counts only beyond two standard errors. With two or more
seeds the standard error is that of the paired per-seed differences (the two settings of a pair share the
seed's clips and initial draw); with one seed it falls back to the binomial standard error of two accuracies
over the test clips, which covers the test sampling only.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

from videomap.apps.ablate.spec import sweeps_of

__all__ = ["mean_se", "paired_delta", "summarise", "claim_verdicts", "markdown_report", "write_plots"]

#: The claims the study answers, in the words of docs/ablations.md.
CLAIMS = {
    1: "a 4:1 Mamba:attention hybrid beats pure Mamba",
    2: "frame-wise masked autoregressive pretraining beats the alternatives",
    3: "pretraining helps most with few labels (sample efficiency)",
    4: "as an encoder it takes longer videos",
}


def mean_se(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and standard error of the mean (``None`` for the error of fewer than two values)."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None)


def _binomial_se(a: float, b: float, n: int) -> float:
    p, q = a / 100.0, b / 100.0
    return 100.0 * math.sqrt((p * (1 - p) + q * (1 - q)) / max(1, n))


def paired_delta(cells_a: Mapping[int, Mapping[str, Any]], cells_b: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """``a − b`` in test top-1 over the seeds both have: mean, standard error, outcome (see the module doc)."""
    seeds = sorted(set(cells_a) & set(cells_b))
    if not seeds:
        return {"delta": None, "se": None, "seeds": 0, "outcome": "missing"}
    diffs = [cells_a[s]["test_top1"] - cells_b[s]["test_top1"] for s in seeds]
    delta, se = mean_se(diffs)
    if se is None:
        a, b = cells_a[seeds[0]], cells_b[seeds[0]]
        se = _binomial_se(a["test_top1"], b["test_top1"], a["test_videos"])
    outcome = "better" if delta > 2 * se else "worse" if delta < -2 * se else "within noise"
    return {"delta": round(delta, 2) + 0.0, "se": round(se, 2), "seeds": len(seeds), "outcome": outcome}


def _by_setting(cells: Sequence[Mapping[str, Any]]) -> dict[tuple, dict[int, Mapping[str, Any]]]:
    table: dict[tuple, dict[int, Mapping[str, Any]]] = {}
    for c in cells:
        key = (c["task"], c["schedule"], c["objective"], c["masking"], c["width"], float(c["label_fraction"]))
        table.setdefault(key, {})[int(c["seed"])] = c
    return table


def _key(setting: Mapping[str, Any]) -> tuple:
    return (setting["task"], setting["schedule"], setting["objective"], setting["masking"], setting["width"],
            float(setting["label_fraction"]))


def _reference(spec: Mapping[str, Any], sweep: Mapping[str, Any], setting: Mapping[str, Any]) -> dict[str, Any]:
    """The setting a row is compared with: the same row with the varied factor at its base level; in the
    label sweep, the same fraction from scratch (pretraining's gain at that fraction)."""
    if sweep["vary"] == "label_fraction":
        return dict(setting, objective="none", masking="-")
    ref = dict(setting, **{sweep["vary"]: spec["base"][sweep["vary"]]})
    if ref["objective"] == "none":
        ref["masking"] = "-"
    elif ref["masking"] == "-":
        ref["masking"] = spec["base"]["masking"]
    return ref


def _row(spec, sweep, setting, table) -> dict[str, Any]:
    runs = table.get(_key(setting), {})
    mean, se = mean_se([c["test_top1"] for c in runs.values()])
    first = next(iter(runs.values()), {})
    ref = _reference(spec, sweep, setting)
    delta = paired_delta(runs, table.get(_key(ref), {})) if _key(ref) != _key(setting) else None
    return {**setting, "level": setting[sweep["vary"]], "seeds": len(runs), "top1": _r(mean), "top1_se": _r(se),
            "params": first.get("params"), "embed_dim": first.get("embed_dim"), "layers": first.get("layers"),
            "labelled_videos": first.get("labelled_videos"), "vs_reference": delta,
            "seconds": _r(statistics.fmean([c["seconds"] for c in runs.values()])) if runs else None}


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def summarise(spec: Mapping[str, Any], cells: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One table per sweep: its rows (one per setting) with mean ± standard error and the paired difference
    to the sweep's reference level."""
    table = _by_setting(cells)
    return [{"name": s.get("name", s["vary"]), "title": s.get("title", s["vary"]), "claim": s.get("claim"),
             "vary": s["vary"], "reference": spec["base"][s["vary"]],
             "rows": [_row(spec, s, setting, table) for setting in s["settings"]]} for s in sweeps_of(spec)]


# ------------------------------------------------------------------------------------------ verdicts


def _find(rows: Sequence[Mapping[str, Any]], **match: Any) -> Mapping[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _vote(outcomes: Sequence[str]) -> str:
    """``holds`` if some comparison favours the claim and none goes against it; ``does not hold`` in the
    opposite case; ``within noise`` otherwise (nothing beyond the noise, or both ways)."""
    good, bad = "better" in outcomes, "worse" in outcomes
    if good and not bad:
        return "holds"
    if bad and not good:
        return "does not hold"
    return "within noise" if not (good and bad) else "mixed"


def _text(name: str, delta: Mapping[str, Any] | None) -> str:
    if not delta or delta.get("delta") is None:
        return f"{name}: not run"
    return f"{name}: {delta['delta']:+.2f} ± {delta['se']:.2f} points ({delta['outcome']}, {delta['seeds']} seeds)"


def _flip(delta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The same comparison read the other way round (``b − a``)."""
    if not delta or delta.get("delta") is None:
        return delta
    outcome = {"better": "worse", "worse": "better"}.get(delta["outcome"], delta["outcome"])
    return {**delta, "delta": 0.0 - delta["delta"], "outcome": outcome}


def _claim_schedule(tables) -> dict[str, Any]:
    evidence, outcomes = [], []
    for t in (t for t in tables if t["vary"] == "schedule"):
        row = _find(t["rows"], level="pure_mamba")
        if row is not None and row["vs_reference"]:
            hybrid_minus_mamba = _flip(row["vs_reference"])
            outcomes.append(hybrid_minus_mamba["outcome"])
            evidence.append(_text(f"{t['name']}: 4:1 − pure Mamba", hybrid_minus_mamba))
    return {"verdict": _vote(outcomes) if outcomes else "not run", "evidence": evidence}


def _claim_objective(tables) -> dict[str, Any]:
    evidence, outcomes = [], []
    for t in (t for t in tables if t["vary"] in ("objective", "masking")):
        for row in t["rows"]:
            if row["vs_reference"]:
                base_minus_other = _flip(row["vs_reference"])
                if t["vary"] == "objective" and row["level"] in ("mae", "none"):
                    outcomes.append(base_minus_other["outcome"])
                evidence.append(_text(f"{t['name']}: {t['reference']} − {row['level']}", base_minus_other))
    return {"verdict": _vote(outcomes) if outcomes else "not run", "evidence": evidence,
            "rule": "the base objective against the non-autoregressive control (mae) and no pretraining (none); "
                    "mar_same and whole-frame masking are reported as variants of the objective"}


def _claim_labels(tables) -> dict[str, Any]:
    t = next((t for t in tables if t["vary"] == "label_fraction"), None)
    if t is None:
        return {"verdict": "not run", "evidence": []}
    pretrained = sorted((r for r in t["rows"] if r["objective"] != "none"), key=lambda r: r["label_fraction"])
    evidence, comparisons = [], []
    for row in pretrained:
        comparisons.append((row["label_fraction"], row["vs_reference"]))
        evidence.append(_text(f"{100 * row['label_fraction']:g}% labels: pretrained − scratch", row["vs_reference"]))
    if not comparisons or comparisons[0][1] is None or comparisons[0][1].get("delta") is None:
        return {"verdict": "not run", "evidence": evidence}
    fewest, most = comparisons[0][1], comparisons[-1][1]
    if fewest["outcome"] == "better" and (most.get("delta") is None or fewest["delta"] > most["delta"]):
        verdict = "holds"
    elif fewest["outcome"] == "worse" or (fewest["outcome"] == "better" and fewest["delta"] <= most["delta"]):
        verdict = "does not hold"
    else:
        verdict = "within noise"
    return {"verdict": verdict, "evidence": evidence,
            "rule": "holds when pretraining beats scratch beyond the noise at the fewest labels and by more than "
                    "at the most labels"}


def _claim_encoder(timing: Mapping[str, Any] | None) -> dict[str, Any]:
    rows = (timing or {}).get("rows") or []
    schedules = list(dict.fromkeys(r["schedule"] for r in rows))
    if len(schedules) < 2:
        return {"verdict": "see docs/benchmarks.md", "evidence": []}
    hybrid, other = schedules[0], schedules[1]
    ratios = []
    for frames in sorted({r["frames"] for r in rows}):
        a = _find(rows, schedule=hybrid, frames=frames)
        b = _find(rows, schedule=other, frames=frames)
        if a and b:
            ratios.append((frames, a["ms"] / b["ms"]))
    evidence = [f"{frames} frames: {hybrid} / {other} forward time = {ratio:.2f}" for frames, ratio in ratios]
    falling = all(r2 <= r1 * 1.05 for (_, r1), (_, r2) in zip(ratios, ratios[1:]))
    verdict = "holds (time)" if ratios and ratios[-1][1] < 1 and falling else "does not hold at this size"
    return {"verdict": verdict, "evidence": evidence,
            "rule": f"forward time of the matched {hybrid} encoder over the {other} one falls below 1 as frames grow"}


def claim_verdicts(tables, timing) -> dict[int, dict[str, Any]]:
    """A verdict per claim with the comparisons it rests on (rules in each entry's ``rule``)."""
    verdicts = {1: _claim_schedule(tables), 2: _claim_objective(tables), 3: _claim_labels(tables),
                4: _claim_encoder(timing)}
    for number, entry in verdicts.items():
        entry["claim"] = CLAIMS[number]
    return verdicts


# ------------------------------------------------------------------------------------------ markdown


def _fmt(mean: float | None, se: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f} ± {se:.2f}" if se is not None else f"{mean:.2f}"


def _fmt_delta(delta: Mapping[str, Any] | None) -> str:
    if not delta or delta.get("delta") is None:
        return "(reference)" if delta is None else "–"
    return f"{delta['delta']:+.2f} ± {delta['se']:.2f} ({delta['outcome']})"


def _table_md(t: Mapping[str, Any]) -> list[str]:
    label_sweep = t["vary"] == "label_fraction"
    head = ["level", "objective", "labelled clips", "seeds", "test top-1 (%)", "Δ vs reference"] if label_sweep else \
        ["level", "layers", "width", "params", "seeds", "test top-1 (%)", f"Δ vs {t['reference']}", "s / cell"]
    lines = [f"**{t['title']}** (reference level: `{t['reference']}`)", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for r in t["rows"]:
        if label_sweep:
            delta = r["vs_reference"]
            cells = [f"{100 * r['label_fraction']:g}%", r["objective"], str(r["labelled_videos"] or "–"),
                     str(r["seeds"]), _fmt(r["top1"], r["top1_se"]),
                     _fmt_delta(delta) + (" vs scratch" if delta else "")]
        else:
            cells = [f"`{r['level']}`", f"`{r['layers']}`" if r["layers"] else "–", str(r["embed_dim"] or "–"),
                     f"{r['params']:,}" if r["params"] else "–", str(r["seeds"]), _fmt(r["top1"], r["top1_se"]),
                     _fmt_delta(r["vs_reference"]), f"{r['seconds']:.0f}" if r["seconds"] else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _timing_md(timing: Mapping[str, Any] | None) -> list[str]:
    rows = (timing or {}).get("rows") or []
    if not rows:
        return []
    lines = [f"**Encoder forward time** (batch 1, no gradient, {timing['img_size']}², width `{timing['width']}`, "
             f"median of {timing['repeats']}, {timing['threads']} thread(s))", "",
             "| schedule | width | frames | tokens | ms |", "|---|---|---|---|---|"]
    lines += [f"| `{r['schedule']}` | {r['embed_dim']} | {r['frames']} | {r['tokens']} | {r['ms']:.1f} |" for r in rows]
    return lines + [""]


def markdown_report(results: Mapping[str, Any]) -> str:
    """The results as markdown: the verdicts, one table per sweep, the encoder timing, the run's facts."""
    lines = [f"Study `{results['spec_file']}` (scale `{results['scale']}`{', quick' if results['quick'] else ''}): "
             f"{results['cells_finished']} of {results['cells_total']} cells finished, seeds "
             f"{', '.join(map(str, results['seeds']))}; machine: {results['machine']['cpu']}, "
             f"torch {results['machine']['torch']}, "
             f"{results['spec'].get('threads') or results['machine']['threads']} torch thread(s) per run, "
             f"{results['seconds'].get('jobs') or 1} run(s) at a time.", "",
             "| claim | verdict | evidence |", "|---|---|---|"]
    for number, v in sorted(results["verdicts"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| ({number}) {v['claim']} | **{v['verdict']}** | {'; '.join(v['evidence']) or '–'} |")
    lines.append("")
    for t in results["tables"]:
        lines += _table_md(t)
    lines += _timing_md(results.get("timing"))
    lines.append("Δ: paired difference over seeds in test top-1 points, ± its standard error; *better*/*worse* only "
                 "beyond two standard errors.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- plots


def _figure(width: float, height: float):
    from videomap.apps.demo.report import _figure as demo_figure  # the demo's Agg figure: no pyplot state is touched

    return demo_figure(width, height)


def plot_sweeps(tables, path: Path) -> Path:
    """One bar chart per sweep (except the label sweep): test top-1 mean ± standard error per level."""
    shown = [t for t in tables if t["vary"] != "label_fraction"]
    fig = _figure(4.2 * len(shown), 3.8)
    for i, t in enumerate(shown):
        ax = fig.add_subplot(1, len(shown), i + 1)
        names = [str(r["level"]) for r in t["rows"]]
        means = [r["top1"] or 0.0 for r in t["rows"]]
        errors = [r["top1_se"] or 0.0 for r in t["rows"]]
        colours = ["C1" if r["level"] == t["reference"] else "C0" for r in t["rows"]]
        ax.bar(range(len(names)), means, yerr=errors, capsize=3, color=colours)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set(title=t["name"], ylabel="test top-1 (%)", ylim=(0, 100))
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    return path


def plot_labels(tables, path: Path) -> Path | None:
    """Test top-1 against the labelled fraction, one line per objective (bars: ± one standard error)."""
    t = next((t for t in tables if t["vary"] == "label_fraction"), None)
    if t is None:
        return None
    fig = _figure(6, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for objective in dict.fromkeys(r["objective"] for r in t["rows"]):
        rows = sorted((r for r in t["rows"] if r["objective"] == objective and r["top1"] is not None),
                      key=lambda r: r["label_fraction"])
        ax.errorbar([100 * r["label_fraction"] for r in rows], [r["top1"] for r in rows],
                    yerr=[r["top1_se"] or 0.0 for r in rows], fmt="-o" if objective != "none" else "--s", capsize=3,
                    label="from scratch" if objective == "none" else f"pretrained ({objective})")
    ax.set_xscale("log")
    ax.minorticks_off()
    ticks = sorted({100 * r["label_fraction"] for r in t["rows"]})
    ax.set_xticks(ticks, [f"{v:g}%" for v in ticks])
    ax.set(xlabel="labelled fraction", ylabel="test top-1 (%)", ylim=(0, 100), title=t["title"])
    ax.legend()
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    return path


def plot_timing(timing: Mapping[str, Any] | None, path: Path) -> Path | None:
    """Encoder forward time against frames, one line per schedule (log-log)."""
    rows = (timing or {}).get("rows") or []
    if not rows:
        return None
    fig = _figure(6, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for schedule in dict.fromkeys(r["schedule"] for r in rows):
        mine = [r for r in rows if r["schedule"] == schedule]
        ax.plot([r["frames"] for r in mine], [r["ms"] for r in mine], "-o", label=schedule)
    ax.set(xscale="log", yscale="log", xlabel="frames", ylabel="forward ms (batch 1)",
           title=f"matched encoders, {timing['img_size']}²")
    ax.legend()
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    return path


def write_plots(out: Path, tables, timing) -> dict[str, str]:
    """The PNGs of the report; none (with a hint) when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        import logging

        logging.getLogger("videomap.apps.ablate").warning(
            "plots not written: matplotlib is not installed (pip install matplotlib); results.json has every number")
        return {}
    plots = {"sweeps": plot_sweeps(tables, out / "ablation_sweeps.png"),
             "label_fractions": plot_labels(tables, out / "ablation_labels.png"),
             "encoder_time": plot_timing(timing, out / "ablation_encoder_time.png")}
    return {k: str(v) for k, v in plots.items() if v is not None}
