"""The oneDNN products against float64 references, forward and backward, on the strided operands the layers
pass, and the fallbacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from videomap.layers import BiMamba, Linear, Mlp
from videomap.ops import matmul as mm

needs_onednn = pytest.mark.skipif(not mm.onednn_available(), reason="this torch build has no oneDNN")


def _operands(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(37, 53, generator=g)
    b_t = torch.randn(29, 53, generator=g)  # b = b_t.t(): a transposed view
    return a, b_t.t()


@needs_onednn
def test_the_fast_path_is_taken_for_float32_cpu_only(monkeypatch):
    a, b = _operands()
    assert mm.use_onednn(a, b)
    assert not mm.use_onednn(a.double(), b.double())
    monkeypatch.setenv("VIDEOMAP_ONEDNN", "0")
    assert not mm.use_onednn(a, b)


@pytest.mark.parametrize("onednn", ["1", "0"])
def test_matmul_forward_and_backward_match_float64(monkeypatch, onednn):
    monkeypatch.setenv("VIDEOMAP_ONEDNN", onednn)
    a, b = _operands()
    a.requires_grad_(True)
    b_leaf = b.detach().clone().requires_grad_(True)
    out = mm.matmul(a, b_leaf.t().contiguous().t())  # a strided b that still reaches b_leaf's gradient
    grad = torch.randn_like(out)
    out.backward(grad)
    a64, b64 = a.detach().double().requires_grad_(True), b.double().requires_grad_(True)
    ref = a64 @ b64
    ref.backward(grad.double())
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.grad.double(), a64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b_leaf.grad.double(), b64.grad, rtol=1e-5, atol=1e-5)


def test_matmul_rejects_other_ranks():
    with pytest.raises(ValueError, match="2-D"):
        mm.matmul(torch.randn(2, 3, 4), torch.randn(4, 5))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("grad", [True, False])
def test_linear_matches_float64(bias, grad):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 11, 24, generator=g)[:, ::2]  # strided rows
    weight = torch.randn(17, 24, generator=g, requires_grad=grad)
    b = torch.randn(17, generator=g, requires_grad=grad) if bias else None
    out = mm.linear(x, weight, b)
    ref = F.linear(x.double(), weight.detach().double(), None if b is None else b.detach().double())
    assert out.shape == (3, 6, 17) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    assert out.requires_grad == grad
    if grad:
        upstream = torch.randn_like(out)
        out.backward(upstream)
        w64 = weight.detach().double().requires_grad_(True)
        b64 = None if b is None else b.detach().double().requires_grad_(True)
        F.linear(x.double(), w64, b64).backward(upstream.double())
        torch.testing.assert_close(weight.grad.double(), w64.grad, rtol=1e-5, atol=1e-4)
        if b is not None:
            torch.testing.assert_close(b.grad.double(), b64.grad, rtol=1e-5, atol=1e-4)


def test_linear_input_gradient_matches():
    x = torch.randn(5, 8, requires_grad=True)
    weight = torch.randn(3, 8)
    mm.linear(x, weight).pow(2).sum().backward()
    x64 = x.detach().double().requires_grad_(True)
    F.linear(x64, weight.double()).pow(2).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("length", [40, mm.MIN_PER_SAMPLE_LENGTH + 3])  # batched torch product / per sample
def test_channels_first_matmul_reads_transposed_activations(batch, length):
    h = torch.randn(batch, length, 12)  # (B, L, K)
    weight = torch.randn(20, 12)
    out = mm.channels_first_matmul(weight, h.transpose(1, 2))
    assert out.shape == (batch, 20, length) and out.is_contiguous()
    torch.testing.assert_close(out.double(), (weight.double() @ h.double().transpose(1, 2)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(B, K, L\)"):
        mm.channels_first_matmul(weight, h[0])


def test_layers_agree_with_and_without_onednn(monkeypatch):
    torch.manual_seed(0)
    mixer, mlp = BiMamba(16, d_state=4), Mlp(16, 32)
    assert isinstance(mlp.fc1, Linear) and isinstance(mlp.fc1, torch.nn.Linear)
    x = torch.randn(2, 21, 16, requires_grad=True)
    results = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("VIDEOMAP_ONEDNN", flag)
        x.grad = None
        mixer.zero_grad()
        out = mixer(x) + mlp(x)
        out.square().sum().backward()
        results[flag] = (out.detach(), x.grad.clone(), mixer.in_proj.weight.grad.clone(), mixer.x_proj_b.weight.grad.clone())
    for fast, plain in zip(results["1"], results["0"]):
        torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


def test_expanded_and_strided_operands_reach_onednn_dense():
    """oneDNN is fast on row- and column-major operands only; anything else is copied first."""
    rows = torch.randn(6, 5)
    assert mm._dense(rows) is rows and mm._dense(rows.t()).data_ptr() == rows.data_ptr()
    expanded = torch.ones(1, 1).expand(6, 5)
    assert mm._dense(expanded).is_contiguous() and mm._dense(expanded).stride() == (5, 1)
    strided = torch.randn(6, 10)[:, ::2]
    assert mm._dense(strided).is_contiguous()
    # The case that met the slow path: the expanded gradient of out.sum().
    a = torch.randn(7, 4, requires_grad=True)
    b = torch.randn(4, 3, requires_grad=True)
    mm.matmul(a, b).sum().backward()
    torch.testing.assert_close(a.grad, torch.ones(7, 3) @ b.detach().t())
    torch.testing.assert_close(b.grad, a.detach().t() @ torch.ones(7, 3))


# --- CPU autocast: every product runs in the autocast dtype, on every shape ------------------------------

def _bf16_agreement(out: torch.Tensor, ref_bf16: torch.Tensor) -> float:
    """Fraction of elements of ``out`` that equal an explicit bf16 computation to the last bit."""
    assert out.dtype == torch.bfloat16, f"the product ran in {out.dtype}, not in the autocast dtype"
    return (out == ref_bf16).float().mean().item()


def _bf16(*tensors):
    return [None if t is None else t.detach().bfloat16() for t in tensors]


# An explicit bf16 product agrees bit for bit with the autocast one almost everywhere (an fp32 product
# rounded to bf16 afterwards agrees on far fewer elements: about half, measured on these operands).
AGREE = 0.97


@pytest.mark.parametrize("shape", [(1, 7, 24), (2, 4, 24), (3, 50, 24), (1, 1100, 24), (4, 1030, 24)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("grad", [True, False])
def test_linear_under_cpu_autocast_runs_in_bf16(shape, bias, grad):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, generator=g)
    weight = torch.randn(40, shape[-1], generator=g, requires_grad=grad)
    b = torch.randn(40, generator=g, requires_grad=grad) if bias else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mm.linear(x, weight, b)
    ref = F.linear(*_bf16(x, weight, b))
    assert _bf16_agreement(out, ref) >= AGREE
    if grad:
        out.float().square().sum().backward()
        assert weight.grad.dtype == torch.float32  # the parameter keeps its own dtype
        w16 = weight.detach().bfloat16().requires_grad_(True)
        F.linear(x.bfloat16(), w16, None if b is None else b.detach().bfloat16()).float().square().sum().backward()
        torch.testing.assert_close(weight.grad, w16.grad.float(), rtol=2e-2, atol=2e-2 * w16.grad.abs().max().item())


@pytest.mark.parametrize("batch,length", [(1, 40), (2, 40), (2, 1023), (2, 1025), (1, 2100), (3, 1200)])
def test_channels_first_matmul_under_cpu_autocast_runs_in_bf16(batch, length):
    """Both routes — torch's batched product for short sequences, oneDNN per sample for long ones — give the
    autocast dtype, so a run's precision does not depend on its batch size or length."""
    assert _channels_first_bf16_agreement(batch, length, seed=4) >= AGREE


def _channels_first_bf16_agreement(batch: int, length: int, seed: int) -> float:
    """``channels_first_matmul`` under bf16 autocast against an explicit bf16 product, as in ``_bf16_agreement``."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, length, 24, generator=g)
    weight = torch.randn(36, 24, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mm.channels_first_matmul(weight, h.transpose(1, 2))
    w16, h16 = _bf16(weight, h)
    return _bf16_agreement(out, torch.matmul(w16, h16.transpose(1, 2)))


def test_matmul_under_cpu_autocast_runs_in_bf16_and_not_outside_it():
    a, b = _operands(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mm.matmul(a, b)
    a16, b16 = _bf16(a, b)
    assert _bf16_agreement(out, a16 @ b16) >= AGREE
    assert mm.matmul(a, b).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mm.matmul(a.double(), b.double()).dtype == torch.float64  # autocast leaves float64 alone


def test_layers_under_cpu_autocast_give_bf16_products():
    """Each kind of layer product: ``Linear`` (qkv, proj, fc1, fc2) and the channels-first products
    (``in_proj``, ``x_proj``, ``dt_proj``, ``out_proj``) inside BiMamba."""
    from videomap.layers import Attention

    torch.manual_seed(0)
    x = torch.randn(2, 21, 16)
    mixer, mlp, attn = BiMamba(16, d_state=4), Mlp(16, 32), Attention(16, num_heads=2)
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, out.dtype))
             for name, m in [("mlp", mlp), ("attn", attn), ("fc1", mlp.fc1), ("qkv", attn.qkv)]]
    calls = []
    original = mm.channels_first_matmul

    def spy(weight, h):
        out = original(weight, h)
        calls.append(out.dtype)
        return out

    import videomap.layers.bimamba as bimamba_module

    bimamba_module.channels_first_matmul, saved = spy, bimamba_module.channels_first_matmul
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = mixer(x)
            mlp(x), attn(x)
    finally:
        bimamba_module.channels_first_matmul = saved
        for h in hooks:
            h.remove()
    assert mixed.dtype == torch.bfloat16  # out_proj
    assert set(seen.values()) == {torch.bfloat16}, seen
    assert len(calls) == 6 and set(calls) == {torch.bfloat16}, calls  # in_proj, 2 x_proj, 2 dt_proj, out_proj


# --- CPUs without bf16 instructions: bf16 products widened to float32 ------------------------------------

@pytest.fixture
def no_native_bf16(monkeypatch):
    """This CPU as one without AVX512-BF16/AMX: oneDNN multiplies float32 only. Records the operand dtypes of
    every oneDNN product."""
    monkeypatch.setattr(mm, "_onednn_dtypes", lambda: frozenset({torch.float32}))
    seen = []
    original = mm._inner

    def spy(x, weight_t, bias=None):
        seen.append((x.dtype, weight_t.dtype))
        return original(x, weight_t, bias)

    monkeypatch.setattr(mm, "_inner", spy)
    return seen


@needs_onednn
def test_native_reduced_precision_follows_the_cpu_probe(no_native_bf16):
    assert not mm.native_reduced_precision(torch.bfloat16)
    assert mm._widened_dtype(torch.ones(2, dtype=torch.bfloat16)) == torch.bfloat16
    assert mm._widened_dtype(torch.ones(2)) is None  # float32 is never widened
    assert mm._widened_dtype(torch.ones(2, dtype=torch.bfloat16), torch.ones(2)) is None  # mixed: torch decides


@needs_onednn
@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_bf16_linear_without_native_bf16_runs_float32_kernels(no_native_bf16, grad, bias):
    """The product runs in oneDNN's float32 kernel on bf16-rounded operands and comes back as bf16, bit-equal
    to an explicit bf16 product almost everywhere; its gradients match the explicit bf16 ones."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 300, 24, generator=g)
    weight = torch.randn(40, 24, generator=g, requires_grad=grad)
    b = torch.randn(40, generator=g, requires_grad=grad) if bias else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mm.linear(x, weight, b)
    assert no_native_bf16 and set(no_native_bf16) == {(torch.float32, torch.float32)}, no_native_bf16
    assert _bf16_agreement(out, F.linear(*_bf16(x, weight, b))) >= AGREE
    if grad:
        out.float().square().sum().backward()
        w16 = weight.detach().bfloat16().requires_grad_(True)
        F.linear(x.bfloat16(), w16, None if b is None else b.detach().bfloat16()).float().square().sum().backward()
        assert weight.grad.dtype == torch.float32
        torch.testing.assert_close(weight.grad, w16.grad.float(), rtol=2e-2, atol=2e-2 * w16.grad.abs().max().item())
        assert all(dtypes == (torch.float32, torch.float32) for dtypes in no_native_bf16)  # backward too


@needs_onednn
def test_bf16_matmul_without_native_bf16_runs_float32_kernels(no_native_bf16):
    a, b = _operands(7)
    a16, b16 = _bf16(a, b)
    out = mm.matmul(a16, b16)  # bf16 tensors outside autocast take the same route
    assert no_native_bf16 == [(torch.float32, torch.float32)]
    assert _bf16_agreement(out, a16 @ b16) >= AGREE


@needs_onednn
@pytest.mark.parametrize("batch,length", [(1, 40), (2, 40), (2, 1100)])
def test_bf16_channels_first_matmul_without_native_bf16(no_native_bf16, batch, length):
    assert _channels_first_bf16_agreement(batch, length, seed=8) >= AGREE
    short_batch = batch > 1 and length < mm.MIN_PER_SAMPLE_LENGTH  # torch's batched float32 product
    assert all(d == (torch.float32, torch.float32) for d in no_native_bf16) and bool(no_native_bf16) != short_batch
