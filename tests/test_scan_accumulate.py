"""``selective_scan_accumulate`` (the merge of two scan directions inside the CPU kernel's output pass) and
bfloat16 time series read by the CPU kernel without widened copies, against the reference scan."""

import pytest
import torch

import videomap
from videomap.ops import scan_backend, selective_scan, selective_scan_accumulate
from videomap.ops.scan_cpu import cpu_kernel_available, selective_scan_cpu
from scan_cases import make_inputs, max_rel_error

needs_kernel = pytest.mark.skipif(not cpu_kernel_available(), reason="the CPU kernel could not be built")
SCAN_ARGS = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


def _merged(backend, fwd, bwd, scale, grads=True):
    """scale * (scan(fwd) + reverse scan(bwd)) through selective_scan_accumulate, its output and gradients."""
    leaves = [{k: (v.clone().requires_grad_(grads) if v is not None else None) for k, v in a.items()} for a in (fwd, bwd)]
    with scan_backend(backend):
        y = selective_scan_accumulate(None, **leaves[0], delta_softplus=True, scale=scale)
        y = selective_scan_accumulate(y, **leaves[1], delta_softplus=True, scale=scale, reverse=True)
    if grads:
        g = torch.Generator().manual_seed(3)
        (y.double() * torch.randn(y.shape, generator=g, dtype=torch.float64)).sum().backward()
    return y, [{k: v.grad for k, v in lv.items() if v is not None} for lv in leaves]


def _pair(dtype, shape=(2, 32, 16, 130, "grouped", 2)):
    batch, channels, state, length, bc, groups = shape
    fwd, bwd = (make_inputs(batch, channels, state, length, bc, groups, dtype=dtype, seed=s) for s in (0, 1))
    for a in (fwd, bwd):
        a.pop("initial_state")
    bwd["u"], bwd["z"] = fwd["u"], fwd["z"]  # the two directions of a layer share x and z
    return fwd, bwd


@needs_kernel
@pytest.mark.parametrize("dtype, fwd_tol, grad_tol", [(torch.float32, 1e-5, 1e-4), (torch.float64, 1e-12, 1e-11)],
                         ids=["fp32", "fp64"])
@pytest.mark.parametrize("scale", [0.5, 1.0])
@pytest.mark.parametrize("shape", [(2, 32, 16, 130, "grouped", 2), (1, 24, 4, 7, "shared", 1)], ids=["grouped", "short"])
def test_kernel_merge_matches_the_reference_forward_and_backward(dtype, fwd_tol, grad_tol, scale, shape):
    fwd, bwd = _pair(dtype, shape)
    y, grads = _merged("cpu", fwd, bwd, scale)
    ref, ref_grads = _merged("reference", fwd, bwd, scale)
    assert y.dtype == dtype
    assert max_rel_error(y, ref) <= fwd_tol
    for got, want in zip(grads, ref_grads):
        assert got.keys() == want.keys()
        for name in want:
            assert max_rel_error(got[name], want[name]) <= grad_tol, name


@needs_kernel
def test_fp32_merge_has_the_bits_of_sum_then_halve():
    """0.5 * y + 0.5 * y_b rounds exactly as (y + y_b) * 0.5, so layers keep their fp32 results."""
    fwd, bwd = _pair(torch.float32)
    with torch.no_grad(), scan_backend("cpu"):
        y, _ = _merged("cpu", fwd, bwd, 0.5, grads=False)
        want = (selective_scan(**fwd, delta_softplus=True) + selective_scan(**bwd, delta_softplus=True, reverse=True)) * 0.5
    assert torch.equal(y, want)


@needs_kernel
def test_accumulate_into_a_buffer_the_kernel_cannot_write_falls_back():
    fwd, _ = _pair(torch.float32)
    acc = torch.randn(fwd["u"].shape[::-1]).transpose(0, 2)  # strided
    want = acc + 2.0 * selective_scan(**fwd, delta_softplus=True)
    got = selective_scan_accumulate(acc.clone().transpose(0, 2).contiguous().transpose(0, 2), **fwd,
                                    delta_softplus=True, scale=2.0)
    torch.testing.assert_close(got, want)


@needs_kernel
def test_kernel_out_and_accumulate_arguments_are_checked():
    args = make_inputs(1, 16, 4, 10, dtype=torch.float32)
    args.pop("initial_state")
    args["B"], args["C"] = args["B"][:, None].contiguous(), args["C"][:, None].contiguous()
    with pytest.raises(ValueError, match="accumulate"):
        selective_scan_cpu(**args, accumulate=True)
    with pytest.raises(ValueError, match="out"):
        selective_scan_cpu(**args, out=torch.empty(1, 16, 11))


@needs_kernel
@pytest.mark.parametrize("reverse", [False, True])
def test_bf16_time_series_are_read_directly(reverse):
    """bf16 u/delta/z/B/C: the kernel's fp32 computation from the same values, one rounding at the end; the
    gradients are those of the fp32 scan of the widened inputs."""
    args = make_inputs(2, 40, 16, 150, "grouped", 2, dtype=torch.float32)
    args.pop("initial_state")
    series = ("u", "delta", "z", "B", "C")
    bf = {k: (v.bfloat16().requires_grad_() if k in series else v.clone().requires_grad_()) for k, v in args.items()}
    wide = {k: v.detach().float().requires_grad_() for k, v in bf.items()}
    with scan_backend("cpu"):
        out16, last16 = selective_scan(**bf, delta_softplus=True, return_last_state=True, reverse=reverse)
    with scan_backend("reference"):
        out, last = selective_scan(**wide, delta_softplus=True, return_last_state=True, reverse=reverse)
    assert out16.dtype == torch.bfloat16 and last16.dtype == torch.float32
    assert max_rel_error(out16, out) <= 8e-3
    assert max_rel_error(last16, last) <= 1e-5
    g = torch.randn(out.shape).bfloat16().float()  # exact in bf16, so both get the same upstream gradient
    (out16.float() * g).sum().backward()
    (out * g).sum().backward()
    for name in SCAN_ARGS:
        assert bf[name].grad.dtype == bf[name].dtype
        assert max_rel_error(bf[name].grad, wide[name].grad) <= (1e-2 if name in series else 1e-4), name


@needs_kernel
def test_bf16_merge_in_the_kernel():
    fwd, bwd = _pair(torch.float32)
    to16 = {k for k in ("u", "delta", "z", "B", "C")}
    f16, b16 = ({k: (v.bfloat16() if k in to16 else v) for k, v in a.items()} for a in (fwd, bwd))
    with torch.no_grad():
        y16, _ = _merged("cpu", f16, b16, 0.5, grads=False)
        ref, _ = _merged("reference", *({k: v.float() for k, v in a.items()} for a in (f16, b16)), 0.5, grads=False)
    assert y16.dtype == torch.bfloat16 and max_rel_error(y16, ref) <= 8e-3


@needs_kernel
def test_bf16_autocast_model_agrees_with_fp32():
    """A small VideoMAP under CPU bf16 autocast: logits within bf16 tolerance of fp32, the same top-1."""
    torch.manual_seed(0)
    model = videomap.create_model("videomap_tiny", num_classes=10, num_frames=4, img_size=64).eval()
    x = torch.randn(3, 3, 4, 64, 64)
    with torch.no_grad():
        logits = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits16 = model(x)
    assert max_rel_error(logits16.float(), logits) <= 0.08
    assert torch.equal(logits16.float().argmax(-1), logits.argmax(-1))
