"""The roofline benchmark's analytic counters match a hand count, and its quick mode runs end to end."""

import json
import math

import pytest

from videomap.apps.bench import roofline


def test_mamba_layer_work_matches_a_hand_count():
    # D=8, L=5: E=16, N=16, dt_rank=ceil(8/16)=1.
    work = roofline.mamba_layer_work(dim=8, length=5)
    in_proj = 2 * 5 * 8 * 32
    x_proj = 2 * (2 * 5 * 16 * (1 + 32))
    dt_proj = 2 * (2 * 5 * 1 * 16)
    out_proj = 2 * 5 * 16 * 8
    assert work.flops == in_proj + x_proj + dt_proj + out_proj == 14720
    # exp(delta·A) per (E, N, L) and direction; softplus and conv SiLU per (E, L) and direction; silu(z) once.
    assert work.exps == 2 * 16 * 16 * 5 + 2 * 16 * 5 + 2 * 16 * 5 + 16 * 5 == 2960
    assert work.bytes > 0 and roofline.mamba_layer_work(8, 5, act_bytes=2).bytes == work.bytes / 2


def test_attention_layer_work_matches_a_hand_count():
    work = roofline.attention_layer_work(dim=8, length=5, num_heads=2)
    qkv, scores, proj, mlp = 2 * 5 * 8 * 24, 4 * 25 * 8, 2 * 5 * 8 * 8, 16 * 5 * 64
    assert work.flops == qkv + scores + proj + mlp == 8480
    assert work.exps == 2 * 25 + 5 * 32 == 210  # softmax heads·L², GELU per (L, 4D)


def test_bound_is_the_larger_of_compute_and_memory():
    rates = roofline.Rates(product_gflops={"fp32": 100.0, "bf16": 200.0}, product_shapes={}, exp_gps=2.0,
                           copy_gbps=10.0)
    work = roofline.Work(flops=1e9, exps=1e8, bytes=1e9)
    b = roofline.bound(work, rates, "fp32")
    assert b["compute_ms"] == pytest.approx(10 + 50) and b["memory_ms"] == pytest.approx(100)
    assert b["bound_ms"] == pytest.approx(100)
    assert roofline.bound(work.scaled(0.0) + roofline.Work(1e9, 0, 0), rates, "bf16")["bound_ms"] == pytest.approx(5)


def test_crossover_solves_the_fitted_layer_times():
    # tM = 1 + 0.01·L; tA = 0.001·L²: 24·tM + 6·tA = 12·tA  <=>  6·0.001·L² − 0.24·L − 24 = 0.
    mamba = roofline.fit_polynomial([100, 200, 400], [2.0, 3.0, 5.0], 1)
    attention = roofline.fit_polynomial([100, 200, 400], [10.0, 40.0, 160.0], 2)
    tokens = roofline.crossover_tokens(mamba, attention, 24, 6, 12)
    assert tokens == pytest.approx((0.24 + math.sqrt(0.24**2 + 4 * 0.006 * 24)) / (2 * 0.006), rel=1e-6)
    assert roofline.crossover_tokens([0.0, 1.0], [0.0, 0.01], 24, 6, 12) is None  # attention never slower


def test_categorise_profiler_ops():
    assert roofline.categorise("mkldnn::_linear_pointwise") == "products"
    assert roofline.categorise("_SelectiveScanCPU") == "scan"
    assert roofline.categorise("_CausalConv1dCPU") == "conv"
    # the inference layer's kernels, named by their record_function scopes
    assert roofline.categorise("videomap::selective_scan_channels_last") == "scan"
    assert roofline.categorise("videomap::causal_conv1d_channels_last") == "conv + SiLU"
    assert roofline.categorise("aten::add") == "norm/add/mul"


def test_quick_mode_end_to_end(tmp_path, capsys):
    out = tmp_path / "roofline.json"
    assert roofline.main(["--quick", "--threads", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "measured ÷ bound" in text and "CPU:" in text and "allocator tuning" in text
    assert "crossover fp32" in text and "crossover bf16" in text and "bf16 speed-up" in text
    report = json.loads(out.read_text())
    assert set(report["cpu"]["flags"]) == set(roofline.CPU_FLAGS)
    rows = report["rows"]
    # 3 lengths x 2 layers x 2 dtypes, the channels-first Mamba layer per dtype, and 2 frame counts x 2 models
    # x 2 dtypes.
    assert len(rows) == 12 + 2 + 8 and all(r["measured_ms"] > 0 and r["bound_ms"] > 0 for r in rows)
    assert sum(r["item"].endswith(roofline.CHANNELS_FIRST) for r in rows) == 2
    assert set(report["channels_last_ratio"]) == {"fp32", "bf16"} and "channels-first = " in text
    assert all(r["ratio"] == pytest.approx(r["measured_ms"] / r["bound_ms"]) for r in rows)
    assert report["rates"]["product_gflops"]["bf16"] > 0 and report["rates"]["exp_gps"] > 0
    # the profiled layer runs at inference, so its conv is the channels-last conv + SiLU, with a bound
    parts = {b["part"]: b for b in report["mamba_breakdown"]}
    assert set(parts) >= {"products", "scan", "conv + SiLU"}
    assert parts["conv + SiLU"]["bound_ms"] > 0
