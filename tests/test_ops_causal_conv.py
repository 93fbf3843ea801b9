"""The CPU causal-conv kernel against the F.conv1d reference, forward and backward."""

import pytest
import torch

from videomap.ops import scan_backend
from videomap.ops.causal_conv import causal_conv1d, causal_conv1d_reference
from videomap.ops.scan_cpu import load_cpu_kernel


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("length", [1, 3, 4, 37])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_kernel_matches_reference_forward_and_backward(dtype, tol, length, use_bias, activation):
    load_cpu_kernel()  # fails loudly (rather than falling back) if the kernel does not build
    g = torch.Generator().manual_seed(length)
    x = torch.randn(2, 5, length, generator=g, dtype=dtype)
    w = torch.randn(5, 4, generator=g, dtype=dtype)
    b = torch.randn(5, generator=g, dtype=dtype) if use_bias else None
    results = []
    for backend in ("cpu", "reference"):
        leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, w, b)]
        with scan_backend(backend):
            out = causal_conv1d(*leaves, activation=activation)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape))
        results.append([out] + [t.grad for t in leaves if t is not None])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)


def test_kernel_gradcheck():
    load_cpu_kernel()
    x = torch.randn(1, 3, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    with scan_backend("cpu"):
        assert torch.autograd.gradcheck(lambda *t: causal_conv1d(*t, activation="silu"), (x, w, b))


def test_reverse_mode_is_the_flipped_causal_conv():
    kernel = load_cpu_kernel()
    x, w, b = torch.randn(2, 3, 10), torch.randn(3, 4), torch.randn(3)
    want = causal_conv1d_reference(x.flip(-1), w, b).flip(-1)
    torch.testing.assert_close(kernel.causal_conv1d_fwd(x, w, b, True), want)
    g = torch.randn(2, 3, 10)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    causal_conv1d_reference(leaves[0].flip(-1), leaves[1], leaves[2]).flip(-1).backward(g)
    dx, dw, db = kernel.causal_conv1d_bwd(x, w, g, True)
    for got, leaf in zip((dx, dw, db), leaves):
        torch.testing.assert_close(got, leaf.grad)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_public_reverse_conv_matches_flipping(backend):
    x = torch.randn(2, 5, 33, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    with scan_backend(backend):
        got = causal_conv1d(x, w, b, activation="silu", reverse=True)
        assert torch.autograd.gradcheck(lambda *t: causal_conv1d(*t, activation="silu", reverse=True), (x, w, b))
    want = causal_conv1d_reference(x.detach().flip(-1), w.detach(), b.detach(), activation="silu").flip(-1)
    torch.testing.assert_close(got.detach(), want)


def test_bf16_input_runs_in_fp32():
    x = torch.randn(1, 4, 12).bfloat16()
    out = causal_conv1d(x, torch.randn(4, 4), torch.randn(4), activation="silu")
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
