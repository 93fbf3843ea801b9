"""Selective-scan benchmark: forward and forward+backward time and peak memory per backend, with ratios to
the reference loop (``videomap bench scan``; ``python benchmarks/scan.py``)."""

from __future__ import annotations

import argparse

import torch

from videomap.ops import scan_backend, selective_scan
from videomap.ops.backend import unavailable_reason
from videomap.apps.bench.common import machine_summary, markdown_table, measure


def scan_inputs(batch: int, channels: int, state: int, length: int, device, dtype, seed: int = 0):
    """Inputs in the ranges a trained Mamba layer sees (softplus'd dt around 1e-3..1e-1, A = -1..-16)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, channels, length, generator=g)
    delta = torch.randn(batch, channels, length, generator=g) * 0.5 - 4.0
    A = -torch.arange(1, state + 1, dtype=torch.float32).repeat(channels, 1)
    B = torch.randn(batch, state, length, generator=g)
    C = torch.randn(batch, state, length, generator=g)
    D = torch.ones(channels)
    z = torch.randn(batch, channels, length, generator=g)
    delta_bias = torch.rand(channels, generator=g) - 2.0
    tensors = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    return {k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}


def available_backends(device: torch.device) -> list[str]:
    names = ["reference"]
    # Triton on CPU tensors is its interpreter: correct, but not worth timing.
    candidates = ("cpu",) if device.type == "cpu" else ("triton", "cuda")
    names += [name for name in candidates if unavailable_reason("scan", name, device, torch.float32) is None]
    return names


def run_scan_benchmark(lengths=(1568, 3136, 6272, 12544), batch=1, channels=768, state=16, backends=None,
                       repeats=5, reference_repeats=2, device="cpu", dtype=torch.float32, quiet=False):
    """Measure every backend at every length. Returns a list of row dicts."""
    device = torch.device(device)
    backends = backends or available_backends(device)
    rows = []
    for length in lengths:
        inputs = scan_inputs(batch, channels, state, length, device, dtype)
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        for name in backends:
            def forward():
                with torch.no_grad(), scan_backend(name):
                    selective_scan(**inputs, delta_softplus=True)

            def forward_backward():
                for t in leaves.values():
                    t.grad = None
                with scan_backend(name):
                    selective_scan(**leaves, delta_softplus=True).sum().backward()

            n = reference_repeats if name == "reference" else repeats
            fwd = measure(forward, device, repeats=n, warmup=1 if name != "reference" else 0)
            fwd_bwd = measure(forward_backward, device, repeats=n, warmup=1 if name != "reference" else 0)
            row = dict(L=length, backend=name, fwd_ms=fwd.median_ms, fwd_bwd_ms=fwd_bwd.median_ms,
                       fwd_mib=fwd.peak_mib, fwd_bwd_mib=fwd_bwd.peak_mib)
            rows.append(row)
            if not quiet:
                print(f"  L={length:>6} {name:>9}: fwd {fwd.median_ms:9.2f} ms, fwd+bwd {fwd_bwd.median_ms:9.2f} ms",
                      flush=True)
    reference = {r["L"]: r for r in rows if r["backend"] == "reference"}
    for row in rows:
        ref = reference.get(row["L"])
        row["fwd_speedup"] = ref["fwd_ms"] / row["fwd_ms"] if ref else float("nan")
        row["fwd_bwd_speedup"] = ref["fwd_bwd_ms"] / row["fwd_bwd_ms"] if ref else float("nan")
    return rows


def run_isa_comparison(lengths=(3136,), isas=("avx512", "avx2"), batch=1, channels=768, state=16, repeats=5,
                       rounds=3, dtype=torch.float32, quiet=False):
    """The fused CPU kernel built for each instruction-set variant (``VIDEOMAP_CPU_ISA`` values), timed side by
    side: ``rounds`` rounds that each measure every variant in turn (``repeats`` runs each), so that load on
    a shared machine falls on all of them alike; medians over all runs. Returns a list of row dicts."""
    from statistics import median

    from videomap.ops.scan_cpu import kernel_variant

    rows = []
    for length in lengths:
        inputs = scan_inputs(batch, channels, state, length, "cpu", dtype)
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}

        def forward():
            with torch.no_grad(), scan_backend("cpu"):
                selective_scan(**inputs, delta_softplus=True)

        def forward_backward():
            for t in leaves.values():
                t.grad = None
            with scan_backend("cpu"):
                selective_scan(**leaves, delta_softplus=True).sum().backward()

        times = {isa: ([], []) for isa in isas}
        for _ in range(rounds):
            for isa in isas:
                with kernel_variant(isa):
                    times[isa][0].append(measure(forward, torch.device("cpu"), repeats=repeats).median_ms)
                    times[isa][1].append(measure(forward_backward, torch.device("cpu"), repeats=repeats).median_ms)
        base = None
        for isa in isas:
            fwd, fwd_bwd = median(times[isa][0]), median(times[isa][1])
            base = base or (fwd, fwd_bwd)
            rows.append(dict(L=length, isa=isa, fwd_ms=fwd, fwd_bwd_ms=fwd_bwd, fwd_ratio=fwd / base[0],
                             fwd_bwd_ratio=fwd_bwd / base[1]))
            if not quiet:
                print(f"  L={length:>6} {isa:>8}: fwd {fwd:8.2f} ms, fwd+bwd {fwd_bwd:8.2f} ms", flush=True)
    return rows


def format_isa_table(rows, batch, channels, state, dtype) -> str:
    first = rows[0]["isa"] if rows else ""
    headers = ["L", "variant", "fwd ms", "fwd+bwd ms", f"fwd time / {first}", f"fwd+bwd time / {first}"]
    body = [[r["L"], r["isa"], r["fwd_ms"], r["fwd_bwd_ms"], f"{r['fwd_ratio']:.2f}×", f"{r['fwd_bwd_ratio']:.2f}×"]
            for r in rows]
    title = (f"CPU scan kernel variants, B={batch}, E={channels}, N={state}, {str(dtype).replace('torch.', '')}, "
             f"delta_softplus, D and z on — {machine_summary()}")
    return title + "\n\n" + markdown_table(headers, body)


def format_scan_table(rows, batch, channels, state, dtype) -> str:
    headers = ["L", "backend", "fwd ms", "fwd+bwd ms", "fwd peak MiB", "fwd+bwd peak MiB",
               "fwd × vs reference", "fwd+bwd × vs reference"]
    body = [[r["L"], r["backend"], r["fwd_ms"], r["fwd_bwd_ms"], r["fwd_mib"], r["fwd_bwd_mib"],
             f"{r['fwd_speedup']:.1f}×", f"{r['fwd_bwd_speedup']:.1f}×"] for r in rows]
    title = (f"Selective scan, B={batch}, E={channels}, N={state}, {str(dtype).replace('torch.', '')}, "
             f"delta_softplus, D and z on — {machine_summary()}")
    return title + "\n\n" + markdown_table(headers, body)


def main(argv=None) -> int:
    from videomap.ops.allocator import tune_cpu_allocator

    tune_cpu_allocator()  # as the videomap command does, so numbers match it
    parser = argparse.ArgumentParser(prog="videomap bench scan", description=__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1568, 3136, 6272, 12544])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--channels", type=int, default=768)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--backends", nargs="+", choices=["reference", "cpu", "triton", "cuda"], default=None,
                        help="default: every backend available on the device")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per fast backend (median)")
    parser.add_argument("--reference-repeats", type=int, default=2, help="timed runs of the slow reference")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--isa", nargs="+", default=None, choices=["native", "avx512", "avx2", "generic"],
                        help="compare the CPU kernel built for these instruction-set variants, side by side")
    parser.add_argument("--rounds", type=int, default=3, help="with --isa: rounds over the variants")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(f"videomap bench scan — {machine_summary()}", flush=True)
    if args.isa:
        rows = run_isa_comparison(args.lengths, args.isa, args.batch, args.channels, args.state, args.repeats,
                                  args.rounds, dtype)
        print()
        print(format_isa_table(rows, args.batch, args.channels, args.state, dtype))
        return 0
    rows = run_scan_benchmark(args.lengths, args.batch, args.channels, args.state, args.backends, args.repeats,
                              args.reference_repeats, args.device, dtype)
    print()
    print(format_scan_table(rows, args.batch, args.channels, args.state, dtype))
    return 0
