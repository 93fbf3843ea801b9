"""The Triton selective scan and causal conv against the reference, forward and every gradient.

Without a GPU the kernels run on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1``, set by a module
fixture before the kernels are first compiled and restored afterwards); with CUDA they run natively on CUDA
tensors, plus a parity check against mamba_ssm where it imports. Shapes are tiny because the interpreter
executes every program step by step in numpy; small chunks and channel blocks make them cross chunk
boundaries, mask partial blocks and split groups over several programs.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from scan_cases import make_inputs, max_rel_error
from videomap.ops import scan_backend, selective_scan, selective_scan_reference
from videomap.ops.backend import cuda_kernel_available
from videomap.ops.causal_conv import causal_conv1d, causal_conv1d_reference

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (pip install triton)")

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]


@pytest.fixture(scope="module", autouse=True)
def triton_device():
    """On a CPU-only machine, run the kernels in the interpreter. Triton fixes the mode when it is first
    imported, so ``tests/conftest.py`` sets the variable for the whole session; this fixture keeps the module
    usable on its own (and skips if triton was loaded without it)."""
    if CUDA:
        yield
        return
    import sys

    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("triton was imported without TRITON_INTERPRET=1 in this process")
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous


def _scan_triton(**kw):
    from videomap.ops.scan_triton import selective_scan_triton

    return selective_scan_triton(**kw)


def _run(fn, args, softplus, reverse, device, grads=True, **kw):
    """Forward, then backward of a random weighting of the output and of the last state (float64 loss)."""
    leaves = {k: (v.to(device).clone().requires_grad_(grads) if v is not None else None) for k, v in args.items()}
    out, last = fn(**{k: v for k, v in leaves.items() if k != "initial_state"}, delta_softplus=softplus,
                   return_last_state=True, initial_state=leaves["initial_state"], reverse=reverse, **kw)
    if not grads:
        return out, last, {}
    g = torch.Generator().manual_seed(1)
    w_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device)
    w_last = torch.randn(last.shape, generator=g, dtype=torch.float64).to(device)
    ((out.double() * w_out).sum() + (last.double() * w_last).sum()).backward()
    return out, last, {k: v.grad for k, v in leaves.items() if v is not None}


def _assert_close(got, want, fwd_tol, grad_tol):
    out, last, grads = got
    ref_out, ref_last, ref_grads = want
    assert out.dtype == ref_out.dtype and last.dtype == ref_last.dtype
    assert max_rel_error(out.cpu(), ref_out) <= fwd_tol
    assert max_rel_error(last.cpu(), ref_last) <= fwd_tol
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert grads[name].dtype == ref_grads[name].dtype, name
        err = max_rel_error(grads[name].cpu(), ref_grads[name])
        assert err <= grad_tol, f"d{name}: relative error {err:.2e}"


SHAPES = [  # batch, channels, state, length, B/C layout, groups, chunk, block_e
    pytest.param((2, 8, 4, 13, "shared", 1, 4, None), id="L13-chunk4"),
    pytest.param((2, 8, 4, 1, "shared", 1, 4, None), id="L1"),
    pytest.param((2, 8, 4, 27, "shared", 1, 8, 4), id="L27-chunk8-two-blocks"),
    pytest.param((1, 10, 3, 13, "grouped", 2, 4, 4), id="grouped-partial-blocks"),
    pytest.param((2, 8, 5, 17, "grouped", 4, 64, None), id="grouped4-N5-one-chunk"),
    pytest.param((1, 6, 4, 9, "const", 1, 4, None), id="const-BC"),
]

# (D, z, delta_bias, softplus, initial state, reverse): each option both on and off across the rows.
OPTIONS = [
    (False, False, False, False, False, False),
    (True, True, True, True, True, True),
    (True, False, True, False, True, False),
    (False, True, False, True, False, True),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "".join("1" if x else "0" for x in o))
def test_scan_matches_reference_fp32(shape, options):
    batch, channels, state, length, bc, groups, chunk, block_e = shape
    use_D, use_z, use_bias, softplus, use_h0, reverse = options
    args = make_inputs(batch, channels, state, length, bc, groups, use_D, use_z, use_bias, use_h0,
                       dtype=torch.float32)
    got = _run(_scan_triton, args, softplus, reverse, DEVICE, chunk=chunk, block_e=block_e)
    want = _run(selective_scan_reference, args, softplus, reverse, "cpu")
    _assert_close(got, want, 1e-4, 1e-3)


def test_scan_float64_matches_reference():
    args = make_inputs(2, 6, 3, 11, "grouped", 2, use_h0=True, dtype=torch.float64)
    got = _run(_scan_triton, args, True, True, DEVICE, chunk=4, block_e=2)
    want = _run(selective_scan_reference, args, True, True, "cpu")
    _assert_close(got, want, 1e-10, 1e-9)


def test_scan_mixed_layouts_of_B_and_C():
    """B grouped in 2, C shared: programs must lie inside one group of each."""
    args = make_inputs(1, 8, 4, 10, "grouped", 2, dtype=torch.float32)
    args["C"] = make_inputs(1, 8, 4, 10, "shared", dtype=torch.float32, seed=3)["C"]
    got = _run(_scan_triton, args, True, False, DEVICE, chunk=4, block_e=2)
    want = _run(selective_scan_reference, args, True, False, "cpu")
    _assert_close(got, want, 1e-4, 1e-3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scan_half_precision_inputs(dtype):
    args = make_inputs(2, 8, 4, 20, "shared", dtype=dtype)
    out, last, grads = _run(_scan_triton, args, True, False, DEVICE, chunk=8)
    ref_out, ref_last, ref_grads = _run(selective_scan_reference, args, True, False, "cpu")
    assert out.dtype == dtype and last.dtype == torch.float32
    # Both compute in fp32 from the same rounded inputs: only the final roundings differ.
    assert max_rel_error(out.cpu(), ref_out) <= 1e-2
    assert max_rel_error(last.cpu(), ref_last) <= 1e-4
    for name in ref_grads:
        assert grads[name].dtype == args[name].dtype, name
        assert max_rel_error(grads[name].cpu(), ref_grads[name]) <= 2e-2, name


def test_scan_loss_through_last_state_only():
    args = make_inputs(2, 8, 4, 13, "shared", use_h0=True, dtype=torch.float32)
    grads = []
    for fn, device, kw in ((_scan_triton, DEVICE, dict(chunk=4)), (selective_scan_reference, "cpu", {})):
        leaves = {k: v.to(device).clone().requires_grad_() for k, v in args.items()}
        _, last = fn(**{k: v for k, v in leaves.items() if k != "initial_state"}, delta_softplus=True,
                     return_last_state=True, initial_state=leaves["initial_state"], **kw)
        (last * torch.linspace(-1, 1, last.numel(), device=device).view(last.shape)).sum().backward()
        grads.append({k: None if v.grad is None else v.grad.cpu() for k, v in leaves.items()})
    for name in NAMES:
        if grads[1][name] is None:  # D and z do not reach the state: autograd gives no gradient, the kernel zeros
            assert grads[0][name] is None or not grads[0][name].any(), name
        else:
            assert max_rel_error(grads[0][name], grads[1][name]) <= 1e-3, name


def test_public_api_dispatches_to_triton():
    """Through selective_scan and the backend table (default chunk), without gradients, and L = 0."""
    args = make_inputs(2, 8, 4, 70, "shared", use_h0=True, dtype=torch.float32)
    kw = {k: v for k, v in args.items() if k != "initial_state"}
    with scan_backend("triton"):
        out, last = selective_scan(**{k: v.to(DEVICE) for k, v in kw.items()}, delta_softplus=True,
                                   return_last_state=True, initial_state=args["initial_state"].to(DEVICE))
    ref_out, ref_last = selective_scan_reference(**kw, delta_softplus=True, return_last_state=True,
                                                 initial_state=args["initial_state"])
    assert max_rel_error(out.cpu(), ref_out) <= 1e-4 and max_rel_error(last.cpu(), ref_last) <= 1e-4
    empty = make_inputs(length=0, use_h0=True, dtype=torch.float32)
    with scan_backend("triton"):
        out, last = selective_scan(**{k: v.to(DEVICE) for k, v in empty.items() if k != "initial_state"},
                                   return_last_state=True, initial_state=empty["initial_state"].to(DEVICE))
    assert out.shape == (2, 4, 0)
    assert torch.equal(last.cpu(), empty["initial_state"])


@pytest.mark.skipif(not (CUDA and cuda_kernel_available()), reason="needs CUDA and mamba_ssm")
def test_scan_matches_mamba_ssm():
    args = make_inputs(2, 64, 16, 300, "shared", dtype=torch.float32)
    got = _run(_scan_triton, {**args, "initial_state": None}, True, False, "cuda")
    with scan_backend("cuda"):
        want = _run(selective_scan, {**args, "initial_state": None}, True, False, "cuda")
    want = (want[0].cpu(), want[1].cpu(), {k: v.cpu() for k, v in want[2].items()})
    _assert_close(got, want, 1e-4, 1e-3)


# ---------------------------------------------------------------------------------------------- causal conv


@pytest.mark.parametrize("length", [1, 37, 70])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("use_bias", [True, False])
def test_conv_matches_reference(length, activation, reverse, use_bias):
    g = torch.Generator().manual_seed(length)
    x = torch.randn(2, 5, length, generator=g)
    w = torch.randn(5, 4, generator=g)
    b = torch.randn(5, generator=g) if use_bias else None
    weight = torch.linspace(-1, 1, x.numel()).reshape(x.shape)
    results = []
    for backend, device in (("triton", DEVICE), ("reference", "cpu")):
        leaves = [t.to(device).clone().requires_grad_() if t is not None else None for t in (x, w, b)]
        with scan_backend(backend):
            out = causal_conv1d(*leaves, activation=activation, reverse=reverse)
        out.backward(weight.to(device))
        results.append([out] + [t.grad for t in leaves if t is not None])
    for got, want in zip(*results):
        assert got.dtype == want.dtype
        assert max_rel_error(got.cpu(), want) <= 1e-5


@pytest.mark.parametrize("width", [2, 3])
def test_conv_other_widths(width):
    x, w, b = torch.randn(1, 3, 9), torch.randn(3, width), torch.randn(3)
    with scan_backend("triton"):
        got = causal_conv1d(x.to(DEVICE), w.to(DEVICE), b.to(DEVICE), activation="silu")
    assert max_rel_error(got.cpu(), causal_conv1d_reference(x, w, b, activation="silu")) <= 1e-5


def test_conv_bf16_input_keeps_its_dtype():
    x = torch.randn(1, 4, 12).bfloat16().to(DEVICE).requires_grad_()
    w, b = torch.randn(4, 4, device=DEVICE), torch.randn(4, device=DEVICE)
    with scan_backend("triton"):
        out = causal_conv1d(x, w, b, activation="silu")
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16
    want = causal_conv1d_reference(x.detach().float().cpu(), w.cpu(), b.cpu(), activation="silu")
    assert max_rel_error(out.float().cpu(), want) <= 1e-2


@pytest.mark.parametrize("mode", ["xz", "input"])
def test_fused_mamba_layer_on_triton_has_the_unfused_layers_gradients(mode):
    """The fused training layer on the Triton scan (it keeps the merged output, which the Triton backward does
    not recompute) against the unfused layer on the reference backend: output and every gradient."""
    import copy

    from videomap.layers.blocks import MambaLayer

    torch.manual_seed(0)
    fused = MambaLayer(8, d_state=4).to(DEVICE)
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(0.1 * torch.randn_like(p))
    unfused = copy.deepcopy(fused).cpu()
    fused.mixer.fused, unfused.mixer.fused = mode, "off"
    x = torch.randn(2, 70, 8)
    x_fused, x_unfused = x.clone().to(DEVICE).requires_grad_(), x.clone().requires_grad_()
    with scan_backend("triton"):
        out_fused = fused(x_fused)
        mixer_node = out_fused.grad_fn.next_functions[1][0].next_functions[0][0]  # x + transpose(fused(...))
        assert type(mixer_node).__name__ == "_BiMambaInnerBackward"
        out_fused.pow(2).sum().backward()
    with scan_backend("reference"):
        out_unfused = unfused(x_unfused)
        out_unfused.pow(2).sum().backward()
    assert max_rel_error(out_fused.detach().cpu(), out_unfused.detach()) <= 1e-4
    assert max_rel_error(x_fused.grad.cpu(), x_unfused.grad) <= 1e-3
    for (name, p_fused), p_unfused in zip(fused.named_parameters(), unfused.parameters()):
        assert max_rel_error(p_fused.grad.cpu(), p_unfused.grad) <= 1e-3, f"d{name}"
