"""The CPU kernels' instruction-set variants (``VIDEOMAP_CPU_ISA``): each builds on its own cache entry, says
which path it runs, and matches the reference scan and conv forward and backward.

A process builds one variant (the first build is chosen for the whole process), so each forced variant is
checked in one subprocess that does every check at once; its build dominates the time.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from videomap.ops import scan_cpu

TESTS = Path(__file__).resolve().parent

# Run inside the subprocess; prints OK when every check passed.
_CHECKS = textwrap.dedent(
    """
    import sys, torch
    from videomap.ops import scan_backend, selective_scan, selective_scan_accumulate
    from videomap.ops import scan_cpu
    from videomap.ops.causal_conv import causal_conv1d, causal_conv1d_channels_last, causal_conv1d_reference
    from scan_cases import make_inputs, max_rel_error

    want = sys.argv[1]
    assert scan_cpu.requested_isa() == want, scan_cpu.requested_isa()
    assert scan_cpu.cpu_kernel_isa() == want, (scan_cpu.cpu_kernel_isa(), scan_cpu.cpu_kernel_error())

    def run(backend, args, softplus, reverse, grads=True):
        ts = {k: (v.clone().requires_grad_(grads) if v is not None else None) for k, v in args.items()}
        kw = {k: v for k, v in ts.items() if k != "initial_state"}
        with scan_backend(backend):
            out, last = selective_scan(**kw, delta_softplus=softplus, return_last_state=True,
                                       initial_state=ts["initial_state"], reverse=reverse)
        g = torch.Generator().manual_seed(1)
        loss = (out.double() * torch.randn(out.shape, generator=g, dtype=torch.float64)).sum()
        loss = loss + (last.double() * torch.randn(last.shape, generator=g, dtype=torch.float64)).sum()
        loss.backward()
        return out, last, {k: v.grad for k, v in ts.items() if v is not None}

    # (batch, channels, state, length, layout, groups, D/z/bias, softplus, initial state, reverse)
    cases = [(2, 24, 4, 7, "shared", 1, True, True, False, False),
             (1, 48, 16, 130, "grouped", 2, True, True, True, True),
             (2, 20, 8, 70, "grouped", 4, False, False, True, False),
             (1, 40, 32, 65, "shared", 1, True, True, False, True)]
    for dtype, fwd_tol, grad_tol in ((torch.float32, 1e-4, 1e-3), (torch.float64, 1e-10, 1e-9)):
        for b, e, n, l, bc, g, opt, softplus, h0, reverse in cases:
            args = make_inputs(b, e, n, l, bc, g, opt, opt, opt, h0, dtype=dtype)
            out, last, grads = run("cpu", args, softplus, reverse)
            ref_out, ref_last, ref_grads = run("reference", args, softplus, reverse)
            assert max_rel_error(out, ref_out) <= fwd_tol, ("out", dtype, e, l)
            assert max_rel_error(last, ref_last) <= fwd_tol, ("last", dtype, e, l)
            for name in ref_grads:
                err = max_rel_error(grads[name], ref_grads[name])
                assert err <= grad_tol, (name, dtype, e, l, err)

    # the merge of two directions inside the kernel, and bf16 time series
    args = make_inputs(1, 32, 16, 90, "shared", dtype=torch.float32)
    kw = {k: v for k, v in args.items() if k != "initial_state"}
    with scan_backend("cpu"), torch.no_grad():
        acc = selective_scan_accumulate(None, **kw, delta_softplus=True, scale=0.5)
        acc = selective_scan_accumulate(acc, **kw, delta_softplus=True, scale=0.5, reverse=True)
        bf = {k: (v.bfloat16() if v is not None and v.dim() == 3 else v) for k, v in kw.items()}
        out16 = selective_scan(**bf, delta_softplus=True)
    with scan_backend("reference"):
        ref = (selective_scan(**kw, delta_softplus=True) + selective_scan(**kw, delta_softplus=True, reverse=True)) * 0.5
        ref16 = selective_scan(**{k: (v.float() if v is not None else v) for k, v in bf.items()}, delta_softplus=True)
    assert max_rel_error(acc, ref) <= 1e-4
    assert out16.dtype == torch.bfloat16 and max_rel_error(out16, ref16) <= 1e-2

    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        for reverse in (False, True):
            x = torch.randn(2, 5, 70, dtype=dtype, requires_grad=True)
            w = torch.randn(5, 4, dtype=dtype, requires_grad=True)
            bias = torch.randn(5, dtype=dtype, requires_grad=True)
            with scan_backend("cpu"):
                got = causal_conv1d(x, w, bias, activation="silu", reverse=reverse)
            grads = torch.autograd.grad(got.sum(), (x, w, bias))
            want_out = causal_conv1d_reference(x, w, bias, activation="silu", reverse=reverse)
            want = torch.autograd.grad(want_out.sum(), (x, w, bias))
            torch.testing.assert_close(got, want_out, rtol=tol, atol=tol)
            for a, b in zip(grads, want):
                torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    # the channels-last inference kernels: the channels-first kernel's bits, the reference conv
    kernel = scan_cpu.load_cpu_kernel()
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        sd = torch.float32 if dtype == torch.bfloat16 else dtype
        a = make_inputs(2, 40, 5, 130, "grouped", 2, dtype=torch.float64)
        a = {k: (v.to(dtype) if k in ("u", "delta", "z", "B", "C") else v.to(sd))
             for k, v in a.items() if v is not None}
        for reverse in (False, True):
            want, _, _ = kernel.fwd(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["delta_bias"],
                                    None, True, False, reverse, None, 0.5, False)
            last = {k: (v.permute(0, 2, 1).contiguous() if v.dim() == 3 else v.permute(0, 3, 1, 2).contiguous())
                    for k, v in a.items() if k in ("u", "delta", "z", "B", "C")}
            got = scan_cpu.selective_scan_channels_last(last["u"], last["delta"], a["A"], last["B"], last["C"],
                                                        a["D"], last["z"], a["delta_bias"], True, reverse=reverse,
                                                        scale=0.5)
            assert torch.equal(got.transpose(1, 2), want), ("channels-last scan", dtype, reverse)
            x = torch.randn(2, 70, 42).to(dtype)[..., :21]
            w, bias = torch.randn(21, 4, dtype=sd), torch.randn(21, dtype=sd)
            conv = causal_conv1d_channels_last(x, w, bias, "silu", reverse)
            ref = causal_conv1d_reference(x.transpose(1, 2).to(sd), w, bias, "silu", reverse).transpose(1, 2)
            tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
            torch.testing.assert_close(conv.to(sd), ref, rtol=tol, atol=tol)
    print("OK", scan_cpu.cpu_kernel_isa())
    """
)


def _cpu_flags() -> set[str]:
    return set(scan_cpu._cpu_signature().split())


def _check_variant(isa: str) -> None:
    env = dict(os.environ, VIDEOMAP_CPU_ISA=isa, VIDEOMAP_SCAN_BACKEND="auto")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", _CHECKS, isa], env=env, cwd=TESTS, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0 and f"OK {isa}" in done.stdout, done.stdout[-3000:] + done.stderr[-6000:]


x86_only = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 variants")


@x86_only
@pytest.mark.skipif(not {"avx2", "fma"} <= _cpu_flags(), reason="the CPU has no AVX2/FMA")
def test_avx2_variant_builds_and_matches_the_reference():
    """x86-64-v3 (AVX2 + FMA): the AVX-512 path compiled out even on an AVX-512 CPU."""
    _check_variant("avx2")


@pytest.mark.slow
@x86_only
def test_generic_variant_builds_and_matches_the_reference():
    """The portable template path, built for baseline x86-64."""
    _check_variant("generic")


def test_native_variant_is_what_the_cpu_has():
    if not scan_cpu.cpu_kernel_available():
        pytest.skip(f"the CPU kernel is unavailable: {scan_cpu.cpu_kernel_error()}")
    flags = _cpu_flags()
    if os.environ.get(scan_cpu.ISA_ENV_VAR, "native") not in ("", "native"):
        pytest.skip("a variant is forced for this run")
    if {"avx512f", "avx512bw", "avx512vl"} <= flags:
        expected = "avx512"
    elif {"avx2", "fma"} <= flags:
        expected = "avx2"
    else:
        expected = "generic"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        expected = "generic"
    assert scan_cpu.cpu_kernel_isa() == expected


def test_variants_have_their_own_cache_entries(monkeypatch):
    names = {isa: scan_cpu._extension_name(isa, scan_cpu._flag_sets(isa)[0][0]) for isa in scan_cpu.ISAS}
    assert len(set(names.values())) == len(scan_cpu.ISAS)
    assert all(isa in name for isa, name in names.items())
    monkeypatch.setenv(scan_cpu.ISA_ENV_VAR, "AVX2")
    assert scan_cpu.requested_isa() == "avx2"
    monkeypatch.setenv(scan_cpu.ISA_ENV_VAR, "sse9")
    with pytest.raises(ValueError, match="VIDEOMAP_CPU_ISA"):
        scan_cpu.requested_isa()


def test_loading_a_variant_again_finds_its_own_cache_entry(monkeypatch):
    """torch's load() appends its link flags to the list it is given; the flags, and so the cache name, of the
    next build of the same variant must not change (they did, and every kernel_variant call rebuilt)."""
    calls = []

    def fake_load(name, sources, extra_cflags, extra_ldflags, verbose):
        calls.append((name, list(extra_cflags), list(extra_ldflags)))
        extra_ldflags.extend(["-L/torch/lib", "-ltorch"])  # as torch.utils.cpp_extension.load does
        extra_cflags.append("-DEXTRA")
        return object()

    import torch.utils.cpp_extension

    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake_load)
    monkeypatch.setattr(scan_cpu, "_clear_dead_build", lambda name: None)
    for _ in range(3):
        scan_cpu._build(False, "generic")
    assert len(calls) == 3 and calls[1] == calls[0] and calls[2] == calls[0]


@pytest.mark.skipif(not scan_cpu.cpu_kernel_available(), reason="the CPU kernel does not build here")
def test_the_loaded_kernel_has_the_name_its_flags_give():
    """After the real build (or cache load), the name computed from the variant's flags is the loaded one's."""
    module = scan_cpu.load_cpu_kernel()
    isa = scan_cpu.requested_isa()
    names = {scan_cpu._extension_name(isa, cflags + ldflags) for cflags, ldflags in scan_cpu._flag_sets(isa)}
    assert module.__name__ in names


def test_a_forced_variant_the_cpu_lacks_is_refused(monkeypatch):
    monkeypatch.setattr(scan_cpu, "_cpu_signature", lambda: "fpu sse sse2")
    with pytest.raises(RuntimeError, match="lacks"):
        scan_cpu._check_cpu_supports("avx512")
    scan_cpu._check_cpu_supports("generic")


# ------------------------------------------------------------------------------------- build locks


def test_a_lock_left_by_a_dead_build_is_removed(tmp_path):
    import os
    import time

    from videomap.ops.scan_cpu import wait_for_build_lock

    (tmp_path / "build.ninja").write_text("")
    (tmp_path / "lock").write_text("")
    old = time.time() - 3600
    for entry in tmp_path.iterdir():
        os.utime(entry, (old, old))
    assert wait_for_build_lock(tmp_path, stale_after=60, poll=0.01) is True
    assert not (tmp_path / "lock").exists()
    assert wait_for_build_lock(tmp_path, stale_after=60, poll=0.01) is False  # nothing to wait for


def test_a_live_build_is_waited_for_not_broken(tmp_path):
    import threading

    from videomap.ops.scan_cpu import wait_for_build_lock

    (tmp_path / "lock").write_text("")
    finished = threading.Timer(0.3, (tmp_path / "lock").unlink)
    finished.start()
    assert wait_for_build_lock(tmp_path, stale_after=60, poll=0.01) is False  # returned once the build ended
    finished.join()
