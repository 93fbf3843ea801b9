"""Roofline benchmark: each layer's measured time against the time this machine's own rates allow for its
work (``videomap bench roofline``; ``python benchmarks/roofline.py``).

In one run it measures the machine's rates (dense products in fp32 and bf16 through the layers' own product
route, ``exp``, copy bandwidth), counts each layer's work analytically (product FLOPs, ``exp`` evaluations,
memory traffic), times one Mamba and one attention layer of ``videomap_small`` and the whole
``videomap_small`` / ``videovit_small`` forward, and prints ``measured / bound`` per item. From the layer
times at several lengths it estimates the frame count where the hybrid overtakes the all-attention model.

The bound of an item is ``max(compute, memory)`` with
``compute = product FLOPs / product rate + exps / exp rate`` and
``memory = bytes of the unfused op sequence / copy bandwidth`` (see docs/benchmarks.md for why).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from videomap.apps.bench.common import markdown_table

#: CPU flags that decide which product kernels oneDNN can use.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
HYBRID, BASELINE = "videomap_small", "videovit_small"
QUICK_HYBRID, QUICK_BASELINE = "videomap_tiny", "videovit_tiny"


# ---------------------------------------------------------------------------------------------- the machine


def cpu_info() -> dict:
    """``{"model_name", "flags": {flag: bool}}`` from ``lscpu`` (``/proc/cpuinfo`` where lscpu is missing)."""
    name, flags = "unknown CPU", set()
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            name = value.strip()
        elif key.strip() == "Flags":
            flags = set(value.split())
    if not flags:
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key.strip() == "model name" and name == "unknown CPU":
                        name = value.strip()
                    elif key.strip() == "flags":
                        flags = set(value.split())
                        break
        except OSError:
            pass
    return {"model_name": name, "flags": {flag: flag in flags for flag in CPU_FLAGS}}


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in ms over ``repeats`` calls after ``warmup`` untimed ones.

    No peak-memory pass (unlike :func:`videomap.apps.bench.common.measure`): handing freed pages back to the
    kernel there would make the first timed call page-fault, which is not the steady state measured here.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------- rates


@dataclass
class Rates:
    """This machine's rates, measured in the run that uses them.

    ``product_gflops[dtype]`` is the best of ``product_shapes[dtype]`` (a bound takes the fastest route).
    """

    product_gflops: dict[str, float]
    product_shapes: dict[str, dict[str, float]]
    exp_gps: float
    copy_gbps: float


def _rand(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape).to(dtype)


def product_rates(length: int, width: int, dtype: torch.dtype, repeats: int) -> dict[str, float]:
    """GFLOP/s of the two product shapes the layers run, through :mod:`videomap.ops.matmul`.

    ``linear``: ``(L, D) x (D, 4D)`` (the MLP's ``fc1``); ``channels_first``: ``(2E, D) @ (1, D, L)`` with
    ``E = 2D`` (the Mamba ``in_proj``). bf16 runs under CPU autocast with operands already in bf16, so the
    time is the product itself, not the casts (those are counted where the layers do them).
    """
    from videomap.ops.matmul import channels_first_matmul, linear

    x, w = _rand(length, width, dtype=dtype), _rand(4 * width, width, dtype=dtype)
    h, w_in = _rand(1, width, length, dtype=dtype), _rand(4 * width, width, dtype=dtype)
    flops = 2.0 * length * width * 4 * width  # both shapes: L·D inputs into 4D outputs
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    rates = {}
    with torch.no_grad(), autocast:
        for name, fn in (("linear", lambda: linear(x, w)), ("channels_first", lambda: channels_first_matmul(w_in, h))):
            rates[name] = flops / (median_ms(fn, repeats, warmup=2) * 1e-3) / 1e9
    return rates


def exp_rate(numel: int, repeats: int, inner: int = 1) -> float:
    """G ``exp``/s of ``torch.exp`` in fp32 into a preallocated output of ``numel`` elements, ``inner`` calls
    per timed sample (so that a cache-sized call is not lost in the timer)."""
    x = torch.rand(numel) * 4 - 8  # the range exp(delta·A) sees: small negative arguments
    out = torch.empty_like(x)

    def run():
        for _ in range(inner):
            torch.exp(x, out=out)

    return numel * inner / (median_ms(run, repeats, warmup=2) * 1e-3) / 1e9


def copy_bandwidth(numel: int, repeats: int) -> float:
    """GB/s of ``dst.copy_(src)`` for fp32 tensors of ``numel`` elements, counting bytes read plus written."""
    src, dst = torch.rand(numel), torch.empty(numel)
    return 2 * 4 * numel / (median_ms(lambda: dst.copy_(src), repeats, warmup=2) * 1e-3) / 1e9


#: Elements of the cache-resident ``exp`` measurement: 2 × 512 KiB, inside a core's L2 on the machines here.
EXP_CACHE_NUMEL = 2**17


def measure_rates(length: int, width: int, exp_numel: int, copy_numel: int, repeats: int) -> Rates:
    """All rates at the given sizes (product shapes as in :func:`product_rates`).

    The exp rate is the better of a cache-resident tensor (the scan kernel evaluates its exps on values in
    registers, so streaming from memory would understate what it can reach) and one of ``exp_numel``
    elements (an ``(E, L)``-sized activation).
    """
    shapes = {name: product_rates(length, width, dtype, repeats) for name, dtype in DTYPES.items()}
    cache = min(EXP_CACHE_NUMEL, exp_numel)
    return Rates(
        product_gflops={name: max(rates.values()) for name, rates in shapes.items()},
        product_shapes=shapes,
        exp_gps=max(exp_rate(cache, repeats, inner=max(1, exp_numel // cache)), exp_rate(exp_numel, repeats)),
        copy_gbps=copy_bandwidth(copy_numel, repeats),
    )


def best_rates(passes: list[Rates]) -> Rates:
    """Per rate, the best of several passes. Other jobs on a shared machine only ever slow a pass down, so the
    best pass is the closest to what the machine can do."""
    shapes = {dtype: {name: max(p.product_shapes[dtype][name] for p in passes) for name in passes[0].product_shapes[dtype]}
              for dtype in passes[0].product_shapes}
    return Rates(
        product_gflops={dtype: max(r.values()) for dtype, r in shapes.items()},
        product_shapes=shapes,
        exp_gps=max(p.exp_gps for p in passes),
        copy_gbps=max(p.copy_gbps for p in passes),
    )


# ---------------------------------------------------------------------------------------------- analytic work


@dataclass
class Work:
    """What one item must do: dense-product FLOPs, ``exp`` evaluations, and memory traffic in bytes."""

    flops: float
    exps: float
    bytes: float

    def __add__(self, other: Work) -> Work:
        return Work(self.flops + other.flops, self.exps + other.exps, self.bytes + other.bytes)

    def scaled(self, k: float) -> Work:
        return Work(self.flops * k, self.exps * k, self.bytes * k)


def mamba_layer_work(dim: int, length: int, d_state: int = 16, expand: int = 2, dt_rank: int | None = None,
                     act_bytes: int = 4) -> Work:
    """Work of one Mamba layer (RMSNorm + BiMamba, DESIGN §2.6) on ``(1, L, D)``.

    FLOPs (``2·M·N·K`` per product): ``in_proj`` ``2·L·D·2E``, ``x_proj`` ``2·2·L·E·(R+2N)`` and ``dt_proj``
    ``2·2·L·R·E`` (both directions), ``out_proj`` ``2·L·E·D``; the depthwise conv (``2·K·E·L`` per direction,
    < 1%) is left out. exps: ``exp(delta·A)`` per ``(E, N, L)`` per direction, the softplus of delta and the
    SiLU after the conv per ``(E, L)`` per direction, and the gate ``silu(z)`` once per ``(E, L)`` (both
    directions gate with the same ``z``). Bytes: each tensor the unfused layer materialises, written once and
    read once per consumer, at ``act_bytes`` per element, plus the product weights.
    """
    E, N, L, D = expand * dim, d_state, length, dim
    R = dt_rank if dt_rank is not None else math.ceil(dim / 16)
    flops = 2 * L * D * 2 * E + 2 * (2 * L * E * (R + 2 * N)) + 2 * (2 * L * R * E) + 2 * L * E * D
    exps = 2 * E * N * L + 2 * E * L + 2 * E * L + E * L
    per_direction = (
        2 * E * L  # conv: read x, write its output
        + E * L + (R + 2 * N) * L  # x_proj: read, write dt/B/C
        + R * L + E * L  # dt_proj
        + 3 * E * L + 2 * N * L + E * L  # scan: read u, delta, z, B, C; write y
    )
    elements = (
        2 * L * D  # RMSNorm
        + L * D + 2 * E * L  # in_proj
        + 2 * per_direction
        + 3 * E * L + 2 * E * L  # merge: y + y_b, then the mean's scale
        + E * L + L * D  # out_proj
        + 3 * L * D  # residual add
        + D * 2 * E + 2 * E * (R + 2 * N) + 2 * R * E + E * D  # weights
    )
    return Work(float(flops), float(exps), float(elements * act_bytes))


def attention_layer_work(dim: int, length: int, num_heads: int, mlp_ratio: float = 4.0,
                         act_bytes: int = 4) -> Work:
    """Work of one Transformer layer (DESIGN §2.7) on ``(1, L, D)``.

    FLOPs: ``qkv`` ``6·L·D²``, scores and weighted sum ``4·L²·D``, ``proj`` ``2·L·D²``, MLP ``2·2·L·D·H``
    (``16·L·D²`` at ratio 4). exps: the softmax's ``heads·L²`` and GELU's ``erf`` per ``(L, H)``, each counted
    as one exp. Bytes: as in :func:`mamba_layer_work` (a flash-style attention's re-reads of K and V are not
    counted, so this is the floor).
    """
    L, D = length, dim
    hidden = int(dim * mlp_ratio)
    flops = 2 * L * D * 3 * D + 4 * L * L * D + 2 * L * D * D + 2 * 2 * L * D * hidden
    exps = num_heads * L * L + L * hidden
    elements = (
        2 * L * D + L * D + 3 * L * D  # norm1, qkv
        + 3 * L * D + L * D  # attention: read q, k, v; write out
        + 2 * L * D + 3 * L * D  # proj, residual
        + 2 * L * D + L * D + L * hidden  # norm2, fc1
        + 2 * L * hidden + L * hidden + L * D  # GELU, fc2
        + 3 * L * D  # residual
        + 3 * D * D + D * D + 2 * D * hidden  # weights
    )
    return Work(float(flops), float(exps), float(elements * act_bytes))


def stem_work(dim: int, frames: int, tokens_per_frame: int, patch: int = 16, tubelet: int = 1,
              act_bytes: int = 4) -> Work:
    """Patch embedding (a strided Conv3d, i.e. one ``(T'·N, 3·t·p²) x (3·t·p², D)`` product) and positions."""
    tokens = frames // tubelet * tokens_per_frame
    k = 3 * tubelet * patch * patch
    return Work(2.0 * tokens * k * dim, 0.0, float((tokens * k + 3 * tokens * dim) * act_bytes))


def model_work(model, frames: int, img_size: int, act_bytes: int) -> Work:
    """Work of a whole forward: the stem plus every layer of ``model``'s schedule (head and final norm are
    below 0.1% and left out)."""
    cfg = model.config
    t, gh, gw = model.grid_size((frames, img_size, img_size))
    length = 1 + t * gh * gw
    mamba = mamba_layer_work(cfg.embed_dim, length, cfg.d_state, cfg.expand,
                             None if cfg.dt_rank == "auto" else int(cfg.dt_rank), act_bytes)
    attention = attention_layer_work(cfg.embed_dim, length, cfg.num_heads, cfg.mlp_ratio, act_bytes)
    total = stem_work(cfg.embed_dim, frames, gh * gw, cfg.patch_size, cfg.tubelet_size, act_bytes)
    for kind in cfg.schedule:
        total = total + (mamba if kind == "M" else attention)
    return total


def bound(work: Work, rates: Rates, dtype: str) -> dict[str, float]:
    """``{"compute_ms", "memory_ms", "bound_ms"}``: products at the ``dtype`` product rate plus exps at the
    fp32 exp rate (the scan and the activations compute in fp32 whatever the product dtype), and the
    traffic at the copy bandwidth; the bound is the larger of the two."""
    compute = work.flops / (rates.product_gflops[dtype] * 1e9) + work.exps / (rates.exp_gps * 1e9)
    memory = work.bytes / (rates.copy_gbps * 1e9)
    return {"compute_ms": compute * 1e3, "memory_ms": memory * 1e3, "bound_ms": max(compute, memory) * 1e3}


# ---------------------------------------------------------------------------------------------- measurements


def _autocast(dtype: str):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")


def time_layer(layer: torch.nn.Module, length: int, dtype: str, repeats: int) -> float:
    """Median ms of ``layer`` on a fp32 residual stream ``(1, L, D)`` (as the backbone keeps it), no grad."""
    x = torch.randn(1, length, layer.norm.weight.shape[0] if hasattr(layer, "norm") else layer.norm1.weight.shape[0])
    with torch.no_grad(), _autocast(dtype):
        return median_ms(lambda: layer(x), repeats, warmup=1)


#: Profiler categories of a Mamba layer's top-level ops, matched in this order by substring of the op name.
CATEGORIES = (
    ("products", ("linear_pointwise", "aten::mm", "aten::matmul", "aten::bmm", "aten::addmm", "aten::linear")),
    ("scan", ("scan", "Scan")),
    ("conv + SiLU", ("conv1d_channels_last",)),  # the inference layer's conv applies its SiLU itself
    ("conv", ("conv", "Conv")),
    ("silu/exp outside kernels", ("aten::silu", "aten::exp", "aten::softplus", "aten::sigmoid")),
    ("casts/copies", ("aten::to", "aten::copy_", "aten::contiguous", "aten::clone", "_to_copy")),
)


def categorise(name: str) -> str:
    """The :data:`CATEGORIES` entry of a profiler op name; ``"norm/add/mul"`` for everything else."""
    for category, keys in CATEGORIES:
        if any(key in name for key in keys):
            return category
    return "norm/add/mul"


def profile_layer(layer: torch.nn.Module, length: int, dtype: str) -> dict[str, float]:
    """Wall ms per :func:`categorise` category of one profiled call, from the top-level ops' total times.

    The profiler adds a little per op, so the categories sum to somewhat more than :func:`time_layer`.
    """
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(1, length, layer.norm.weight.shape[0])
    with torch.no_grad(), _autocast(dtype):
        layer(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            layer(x)
    totals: dict[str, float] = {}
    for event in prof.events():
        if event.cpu_parent is None:
            key = categorise(event.name)
            totals[key] = totals.get(key, 0.0) + event.cpu_time_total / 1e3
    return totals


def mamba_part_bounds(dim: int, length: int, rates: Rates, dtype: str, d_state: int = 16,
                      expand: int = 2) -> dict[str, float]:
    """Bound (ms) of each :func:`categorise` category of a Mamba layer whose work is counted, from the same
    counts as :func:`mamba_layer_work`: the products (FLOPs at the product rate), the two scans (their
    ``exp(delta·A)``, softplus and gate exps at the exp rate, or their traffic if larger), the two convs (traffic:
    read and write ``(E, L)``), the SiLU after each conv (exps or traffic), both in one pass for the inference
    layer's conv + SiLU kernel, and the RMSNorm, merge and residual (traffic). These kernels read and write fp32
    under autocast too, so traffic is at 4 bytes an element.
    """
    E, N, L, D = expand * dim, d_state, length, dim
    exp_s, bw = rates.exp_gps * 1e9, rates.copy_gbps * 1e9
    scan_exps, scan_bytes = 2 * E * N * L + 2 * E * L + E * L, 2 * (4 * E * L + 2 * N * L) * 4
    return {
        "products": mamba_layer_work(dim, length, d_state, expand).flops / (rates.product_gflops[dtype] * 1e9) * 1e3,
        "scan": max(scan_exps / exp_s, scan_bytes / bw) * 1e3,
        "conv": 2 * 2 * E * L * 4 / bw * 1e3,
        "silu/exp outside kernels": max(2 * E * L / exp_s, 2 * 2 * E * L * 4 / bw) * 1e3,
        "conv + SiLU": max(2 * E * L / exp_s, 2 * 2 * E * L * 4 / bw) * 1e3,
        "norm/add/mul": (2 * L * D + 5 * E * L + 3 * L * D) * 4 / bw * 1e3,
    }


def time_model(name: str, frames: int, img_size: int, dtype: str, repeats: int, warmup: int = 1) -> float:
    """Median ms of a whole forward of the registered model ``name`` at ``(1, 3, frames, img, img)``."""
    from videomap.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_frames=frames, img_size=img_size, num_classes=400).eval()
    x = torch.randn(1, 3, frames, img_size, img_size)
    with torch.no_grad(), _autocast(dtype):
        return median_ms(lambda: model(x), repeats, warmup=warmup)


# ---------------------------------------------------------------------------------------------- crossover


def fit_polynomial(lengths: list[int], times: list[float], degree: int) -> list[float]:
    """Least-squares coefficients ``[a, b, c, ...]`` of ``a + b·L + c·L² ...``, the degree capped by the
    number of points minus one (two points fit a line exactly)."""
    import numpy as np

    degree = min(degree, len(lengths) - 1)
    coeffs = np.polyfit(np.asarray(lengths, float), np.asarray(times, float), degree)[::-1]
    return [float(c) for c in coeffs]


def evaluate(coeffs: list[float], length: float) -> float:
    return sum(c * length**i for i, c in enumerate(coeffs))


def crossover_tokens(mamba: list[float], attention: list[float], n_mamba: int, n_attn_hybrid: int,
                     n_attn_baseline: int, max_length: float = 1e7) -> float | None:
    """Smallest ``L`` past which ``n_mamba·tM + n_attn_hybrid·tA < n_attn_baseline·tA`` holds, from the fitted
    per-layer times; ``None`` when the hybrid is never faster below ``max_length``.

    Solved as the last sign change of ``g(L) = n_mamba·tM(L) − (n_attn_baseline − n_attn_hybrid)·tA(L)``:
    the root of a polynomial of degree ≤ 2, checked numerically.
    """
    import numpy as np

    extra = n_attn_baseline - n_attn_hybrid
    size = max(len(mamba), len(attention))
    g = [n_mamba * (mamba[i] if i < len(mamba) else 0.0) - extra * (attention[i] if i < len(attention) else 0.0)
         for i in range(size)]
    if evaluate(g, max_length) >= 0:
        return None
    roots = [r.real for r in np.roots(g[::-1]) if abs(r.imag) < 1e-9 * max(1.0, abs(r.real)) and r.real > 0]
    past = [r for r in roots if r < max_length]
    return max(past) if past else 1.0  # g < 0 everywhere positive: faster from the first token


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class Settings:
    """What a run measures; :meth:`quick` is the seconds-long test configuration."""

    hybrid: str = HYBRID
    baseline: str = BASELINE
    img_size: int = 224
    layer_frames: tuple[int, ...] = (8, 16, 32)
    model_frames: tuple[int, ...] = (8, 32)
    layer_repeats: int = 5
    model_repeats: int = 3
    long_model_repeats: int = 1  # at the largest model frame count
    rate_repeats: int = 7
    exp_numel: int = 2**22
    copy_numel: int = 2**25
    profile: bool = True

    @classmethod
    def quick(cls) -> Settings:
        return cls(hybrid=QUICK_HYBRID, baseline=QUICK_BASELINE, img_size=32, layer_frames=(1, 2, 4),
                   model_frames=(1, 2), layer_repeats=2, model_repeats=1, long_model_repeats=1, rate_repeats=2,
                   exp_numel=2**16, copy_numel=2**18, profile=True)


def _first_layers(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    kinds = model.config.schedule
    return model.layers[kinds.index("M")].eval(), model.layers[kinds.index("A")].eval()


def run_roofline(settings: Settings | None = None, log: Callable[[str], None] | None = print) -> dict:
    """Measure rates, layers and models; return the report dict (see :func:`format_report`)."""
    from videomap.models import create_model
    from videomap.ops.allocator import tune_cpu_allocator
    from videomap.apps.bench.common import machine_summary

    s = settings or Settings()
    log = log or (lambda *_: None)
    allocator = tune_cpu_allocator()
    torch.manual_seed(0)
    hybrid = create_model(s.hybrid, num_frames=s.layer_frames[0], img_size=s.img_size, num_classes=400).eval()
    cfg = hybrid.config
    per_frame = (s.img_size // cfg.patch_size) ** 2
    lengths = {f: 1 + f // cfg.tubelet_size * per_frame for f in s.layer_frames}
    mamba, attention = _first_layers(hybrid)
    dim = cfg.embed_dim

    def rate_pass() -> Rates:
        log("rates ...")
        return measure_rates(max(lengths.values()), dim, s.exp_numel, s.copy_numel, s.rate_repeats)

    passes = [rate_pass()]
    measured, layer_times = _measure_layers(mamba, attention, cfg, lengths, s, log)
    measured += _measure_models(s, per_frame, log)
    passes.append(rate_pass())
    rates = best_rates(passes)
    rows = [_row(*m[:6], rates, model=m[6]) for m in measured]
    breakdown = _mamba_breakdown(mamba, cfg, max(lengths.values()), rates, log) if s.profile else []
    report = {
        "machine": machine_summary(),
        "cpu": cpu_info(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "allocator_tuning": allocator,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(s).items()},
        "rates": asdict(rates),
        "rate_passes": [asdict(p) for p in passes],
        "rows": rows,
        "mamba_breakdown": breakdown,
        "speedup_bf16": _bf16_speedups(rows, s.hybrid),
        "channels_last_ratio": _layout_ratios(rows),
        "crossover": _crossovers(layer_times, hybrid.config, _meta_model(s.baseline, s.layer_frames[0], s.img_size).config,
                                 per_frame),
        "bound_model": "bound = max(compute, memory); compute = product FLOPs / product rate (of the dtype) "
                       "+ exps / fp32 exp rate; memory = bytes of the unfused op sequence / copy bandwidth",
    }
    return report


def _measure_layers(mamba, attention, cfg, lengths: dict[int, int], s: Settings, log) -> tuple[list, dict]:
    """Time both layers at every length in both dtypes. Returns the measured items as
    ``(title, dtype, frames, tokens, ms, work, None)`` and ``{dtype: {"M"|"A": {L: ms}}}`` for the fits."""
    measured, layer_times = [], {dtype: {"M": {}, "A": {}} for dtype in DTYPES}
    for dtype in DTYPES:
        act = 4 if dtype == "fp32" else 2
        for frames, length in lengths.items():
            for kind, layer, work in (
                ("M", mamba, mamba_layer_work(cfg.embed_dim, length, cfg.d_state, cfg.expand, act_bytes=act)),
                ("A", attention, attention_layer_work(cfg.embed_dim, length, cfg.num_heads, cfg.mlp_ratio, act)),
            ):
                title = f"{'Mamba' if kind == 'M' else 'attention'} layer ({s.hybrid}), {frames} frames"
                log(f"{title}, {dtype} ...")
                ms = time_layer(layer, length, dtype, s.layer_repeats)
                layer_times[dtype][kind][length] = ms
                measured.append((title, dtype, frames, length, ms, work, None))
        # the Mamba layer once more at the largest length in the training layer's layout: both inference
        # layouts side by side on every machine the benchmark runs on
        frames, length = max(lengths.items(), key=lambda kv: kv[1])
        title = f"Mamba layer ({s.hybrid}), {frames} frames, {CHANNELS_FIRST}"
        log(f"{title}, {dtype} ...")
        mamba.mixer.inference = "channels_first"
        try:
            ms = time_layer(mamba, length, dtype, s.layer_repeats)
        finally:
            mamba.mixer.inference = None
        act = 4 if dtype == "fp32" else 2
        measured.append((title, dtype, frames, length, ms,
                         mamba_layer_work(cfg.embed_dim, length, cfg.d_state, cfg.expand, act_bytes=act), None))
    return measured, layer_times


#: The suffix of the rows that time the Mamba layer in the training layout at inference.
CHANNELS_FIRST = "channels-first inference"


def _layout_ratios(rows: list[dict]) -> dict[str, float]:
    """Per dtype: the Mamba layer's default (channels-last) inference time ÷ its channels-first time, at the
    length both were measured."""
    out = {}
    for r in rows:
        if r["item"].endswith(CHANNELS_FIRST):
            default = r["item"][: -len(CHANNELS_FIRST) - 2]
            match = [d for d in rows if d["item"] == default and d["dtype"] == r["dtype"]]
            if match:
                out[r["dtype"]] = match[0]["measured_ms"] / r["measured_ms"]
    return out


def _measure_models(s: Settings, per_frame: int, log) -> list:
    """Time both whole models at every model frame count in both dtypes (fewer repeats at the largest)."""
    measured = []
    for dtype in DTYPES:
        act = 4 if dtype == "fp32" else 2
        for frames in s.model_frames:
            for name in (s.hybrid, s.baseline):
                repeats = s.long_model_repeats if frames == max(s.model_frames) else s.model_repeats
                log(f"{name} forward, {frames} frames, {dtype} ...")
                ms = time_model(name, frames, s.img_size, dtype, repeats)
                work = model_work(_meta_model(name, frames, s.img_size), frames, s.img_size, act)
                measured.append((f"{name} forward, {frames} frames", dtype, frames, 1 + frames * per_frame, ms,
                                 work, name))
    return measured


def _mamba_breakdown(mamba, cfg, length: int, rates: Rates, log) -> list[dict]:
    """Per dtype and :func:`categorise` category: profiled ms, share of the layer, bound and ratio."""
    breakdown = []
    for dtype in DTYPES:
        log(f"profiling the Mamba layer at L={length}, {dtype} ...")
        parts = profile_layer(mamba, length, dtype)
        bounds = mamba_part_bounds(cfg.embed_dim, length, rates, dtype, cfg.d_state, cfg.expand)
        total = sum(parts.values())
        for category, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
            b = bounds.get(category)
            breakdown.append({"dtype": dtype, "part": category, "measured_ms": ms, "share": ms / total,
                              "bound_ms": b, "ratio": ms / b if b else None})
    return breakdown


def _meta_model(name: str, frames: int, img_size: int):
    """The model's structure without weights, for counting its work."""
    from videomap.models import create_model

    with torch.device("meta"):
        return create_model(name, num_frames=frames, img_size=img_size, num_classes=400)


def _row(item: str, dtype: str, frames: int, length: int, ms: float, work: Work, rates: Rates,
         model: str | None = None) -> dict:
    b = bound(work, rates, dtype)
    return {"item": item, "dtype": dtype, "frames": frames, "tokens": length, "model": model,
            "measured_ms": ms, **b, "ratio": ms / b["bound_ms"], "gflop": work.flops / 1e9,
            "gexp": work.exps / 1e9, "gbytes": work.bytes / 1e9}


def _bf16_speedups(rows: list[dict], model: str) -> dict[str, float]:
    """fp32 ms ÷ bf16 ms of ``model``'s whole forward, per frame count."""
    times = {(r["dtype"], r["frames"]): r["measured_ms"] for r in rows if r["model"] == model}
    return {str(f): times[("fp32", f)] / times[("bf16", f)] for (d, f) in times if d == "fp32" and ("bf16", f) in times}


def _crossovers(layer_times: dict, hybrid_cfg, baseline_cfg, per_frame: int) -> dict:
    """Per dtype: the fits (ms as a polynomial in L) and the frame count where the hybrid's layers take less
    time than the baseline's. The stems are identical, so only the layers decide."""
    hybrid, base = hybrid_cfg.schedule, baseline_cfg.schedule
    out = {}
    for dtype, kinds in layer_times.items():
        lengths = sorted(kinds["M"])
        fit_m = fit_polynomial(lengths, [kinds["M"][L] for L in lengths], 1)
        fit_a = fit_polynomial(lengths, [kinds["A"][L] for L in lengths], 2)
        tokens = crossover_tokens(fit_m, fit_a, hybrid.count("M"), hybrid.count("A"), base.count("A"))
        out[dtype] = {
            "mamba_fit_ms": fit_m, "attention_fit_ms": fit_a,
            "hybrid_layers": f"{hybrid.count('M')} M + {hybrid.count('A')} A",
            "baseline_layers": f"{base.count('M')} M + {base.count('A')} A",
            "tokens": tokens,
            "frames": None if tokens is None else max(0.0, (tokens - 1) / per_frame * hybrid_cfg.tubelet_size),
        }
    return out


# ---------------------------------------------------------------------------------------------- output


def format_report(report: dict) -> str:
    """The run as text: machine, rates, the measured/bound table, the Mamba breakdown, speed-up, crossover."""
    cpu, rates = report["cpu"], report["rates"]
    flags = ", ".join(f"{flag} {'yes' if on else 'no'}" for flag, on in cpu["flags"].items())
    shapes = "; ".join(f"{dtype}: " + ", ".join(f"{k} {v:.0f}" for k, v in r.items())
                       for dtype, r in rates["product_shapes"].items())
    spread = ", ".join(f"{key} {'/'.join(f'{p[key]:.3g}' for p in report['rate_passes'])}"
                       for key in ("exp_gps", "copy_gbps"))
    spread += ", products fp32/bf16 " + " | ".join(
        "/".join(f"{p['product_gflops'][d]:.0f}" for d in DTYPES) for p in report["rate_passes"])
    lines = [
        f"CPU: {cpu['model_name']} ({flags})",
        f"torch {report['torch']}, {report['threads']} threads; allocator tuning "
        f"{'on' if report['allocator_tuning'] else 'off'}",
        f"rates: products fp32 {rates['product_gflops']['fp32']:.0f} GFLOP/s, bf16 "
        f"{rates['product_gflops']['bf16']:.0f} GFLOP/s ({shapes}); exp {rates['exp_gps']:.2f} G/s (fp32); "
        f"copy {rates['copy_gbps']:.1f} GB/s — best of {len(report['rate_passes'])} passes "
        f"(start, end: {spread})",
        f"model: {report['bound_model']}",
        "",
    ]
    headers = ["item", "dtype", "tokens", "measured ms", "compute ms", "memory ms", "bound ms", "measured ÷ bound"]
    lines.append(markdown_table(headers, [[r["item"], r["dtype"], r["tokens"], r["measured_ms"], r["compute_ms"],
                                           r["memory_ms"], r["bound_ms"], r["ratio"]] for r in report["rows"]]))
    if report["mamba_breakdown"]:
        lines += ["", "Mamba layer by part (profiler, top-level ops, largest length):", ""]
        lines.append(markdown_table(
            ["dtype", "part", "measured ms", "share", "bound ms", "measured ÷ bound"],
            [[b["dtype"], b["part"], b["measured_ms"], f"{b['share']:.0%}",
              "-" if b["bound_ms"] is None else b["bound_ms"], "-" if b["ratio"] is None else b["ratio"]]
             for b in report["mamba_breakdown"]]))
    lines.append("")
    for frames, speedup in report["speedup_bf16"].items():
        lines.append(f"bf16 speed-up of the whole {report['settings']['hybrid']} forward at {frames} frames: "
                     f"{speedup:.2f}× (fp32 ms ÷ bf16 ms)")
    for dtype, ratio in report.get("channels_last_ratio", {}).items():
        lines.append(f"Mamba layer at inference, {dtype}: channels-last (the default) ÷ channels-first = {ratio:.3f}")
    for dtype, c in report["crossover"].items():
        m, a = c["mamba_fit_ms"], c["attention_fit_ms"]
        fits = (f"Mamba layer ≈ {' + '.join(f'{v:.3g}·L^{i}' for i, v in enumerate(m))} ms, attention layer ≈ "
                f"{' + '.join(f'{v:.3g}·L^{i}' for i, v in enumerate(a))} ms")
        where = ("never below 10^7 tokens" if c["frames"] is None
                 else f"at ≈ {c['frames']:.1f} frames ({c['tokens']:.0f} tokens)")
        lines.append(f"crossover {dtype}: {report['settings']['hybrid']} ({c['hybrid_layers']}) overtakes "
                     f"{report['settings']['baseline']} ({c['baseline_layers']}) {where}; {fits}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videomap bench roofline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes (seconds; for tests)")
    parser.add_argument("--layer-frames", type=int, nargs="+", default=None, help="default 8 16 32")
    parser.add_argument("--model-frames", type=int, nargs="+", default=None, help="default 8 32")
    parser.add_argument("--layer-repeats", type=int, default=None)
    parser.add_argument("--model-repeats", type=int, default=None, help="whole forwards below the largest frames")
    parser.add_argument("--long-model-repeats", type=int, default=None, help="whole forwards at the largest frames")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-part Mamba breakdown")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON to OUT")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings.quick() if args.quick else Settings()
    for field, value in (("layer_frames", args.layer_frames), ("model_frames", args.model_frames),
                         ("layer_repeats", args.layer_repeats), ("model_repeats", args.model_repeats),
                         ("long_model_repeats", args.long_model_repeats)):
        if value is not None:
            setattr(settings, field, tuple(value) if isinstance(value, list) else value)
    settings.profile = not args.no_profile
    report = run_roofline(settings, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
