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


@pytest.mark.parametrize("reverse", [False, True])
def test_bf16_input_is_convolved_in_fp32_and_returned_in_bf16(reverse):
    """The CPU kernel reads bf16 rows as they are, accumulates in fp32 with fp32 weights and rounds once."""
    x = torch.randn(2, 5, 70).bfloat16()
    w, b = torch.randn(5, 4), torch.randn(5)
    with scan_backend("cpu"):
        out = causal_conv1d(x, w, b, reverse=reverse)
        act = causal_conv1d(x, w, b, activation="silu", reverse=reverse)
    want = causal_conv1d_reference(x.float(), w, b, reverse=reverse)
    assert out.dtype == act.dtype == torch.bfloat16
    torch.testing.assert_close(out, want.bfloat16(), rtol=0, atol=0)
    torch.testing.assert_close(act.float(), torch.nn.functional.silu(want), rtol=1e-2, atol=1e-2)


def test_bf16_backward_matches_fp32():
    x32 = torch.randn(1, 4, 40).bfloat16().float()
    w, b = torch.randn(4, 4, requires_grad=True), torch.randn(4, requires_grad=True)
    x16 = x32.bfloat16().requires_grad_()
    g = torch.randn(1, 4, 40).bfloat16().float()  # exact in bf16: the bf16 output passes it on unrounded
    with scan_backend("cpu"):
        causal_conv1d(x16, w, b, reverse=True).float().backward(g)
    grads16 = (x16.grad.float(), w.grad.clone(), b.grad.clone())
    w.grad = b.grad = None
    x32.requires_grad_()
    causal_conv1d_reference(x32, w, b, reverse=True).backward(g)
    assert x16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(grads16[0], x32.grad, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(grads16[1], w.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grads16[2], b.grad, rtol=1e-5, atol=1e-4)
