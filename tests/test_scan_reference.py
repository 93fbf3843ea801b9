"""The reference scan is the specification: check it against an element-wise oracle of mamba_ssm's semantics."""

import itertools

import numpy as np
import pytest
import torch

from videomap.ops import scan_backend, selective_scan, selective_scan_reference
from scan_cases import make_inputs, naive_scan

CASES = [
    dict(bc="shared"),
    dict(bc="grouped", groups=2),
    dict(bc="grouped", groups=4),
    dict(bc="const"),
    dict(bc="shared", length=1),
    dict(bc="shared", length=7, use_h0=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("options", list(itertools.product([False, True], repeat=3)), ids=str)
def test_reference_matches_elementwise_oracle(case, options):
    use_D, use_z, use_bias = options
    args = make_inputs(use_D=use_D, use_z=use_z, use_bias=use_bias, **case)
    for softplus in (False, True):
        out, last = selective_scan_reference(**{k: v for k, v in args.items() if k != "initial_state"},
                                             delta_softplus=softplus, return_last_state=True,
                                             initial_state=args["initial_state"])
        want_out, want_last = naive_scan(**args, delta_softplus=softplus)
        np.testing.assert_allclose(out.numpy(), want_out, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(last.numpy(), want_last, rtol=1e-10, atol=1e-12)


def test_single_step_by_hand():
    # L = 1 from a zero state: h = delta * B * u, y = <C, h> + D u, out = y * silu(z).
    u, delta, A = torch.tensor([[[2.0]]]), torch.tensor([[[0.5]]]), torch.tensor([[-1.0, -2.0]])
    B, C = torch.tensor([[[3.0], [1.0]]]), torch.tensor([[[1.0], [-2.0]]])
    D, z = torch.tensor([0.25]), torch.tensor([[[1.0]]])
    out = selective_scan_reference(u, delta, A, B, C, D=D, z=z)
    h = 0.5 * torch.tensor([3.0, 1.0]) * 2.0
    y = (h * torch.tensor([1.0, -2.0])).sum() + 0.25 * 2.0
    assert torch.allclose(out.flatten(), y * torch.nn.functional.silu(torch.tensor([1.0])))


def test_output_dtype_and_compute_precision():
    args = make_inputs(dtype=torch.bfloat16)
    out, last = selective_scan_reference(**{k: v for k, v in args.items() if k != "initial_state"},
                                         return_last_state=True)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    args64 = make_inputs(dtype=torch.float64)
    assert selective_scan_reference(**{k: v for k, v in args64.items() if k != "initial_state"}).dtype == torch.float64


def test_reference_gradcheck():
    args = make_inputs(batch=1, channels=2, state=2, length=4, use_h0=True)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
    tensors = [args[n].clone().requires_grad_() for n in names]

    def fn(*ts):
        kw = dict(zip(names, ts))
        h0 = kw.pop("initial_state")
        out, last = selective_scan_reference(**kw, delta_softplus=True, return_last_state=True, initial_state=h0)
        return out, last

    assert torch.autograd.gradcheck(fn, tensors)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.update(u=a["u"][0]), "`u` must be a (B, E, L)"),
        (lambda a: a.update(delta=a["delta"][:, :, :-1]), "`delta` must have shape"),
        (lambda a: a.update(A=a["A"][:-1]), "`A` must have shape"),
        (lambda a: a.update(B=a["B"][:, :, :-1]), "`B` must have shape"),
        (lambda a: a.update(C=torch.zeros(2, 3, 3, 6, dtype=torch.float64)), "`C` must have shape"),
        (lambda a: a.update(D=a["D"][:-1]), "`D` must have shape"),
        (lambda a: a.update(z=a["z"][:1]), "`z` must have shape"),
        (lambda a: a.update(delta_bias=torch.zeros(5, dtype=torch.float64)), "`delta_bias` must have shape"),
        (lambda a: a.update(initial_state=torch.zeros(2, 4, 2, dtype=torch.float64)), "`initial_state` must have"),
        (lambda a: a.update(u=a["u"].long()), "`u` must be floating point"),
    ],
)
def test_clear_errors(mutate, message):
    args = make_inputs()
    mutate(args)
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(")", r"\)")):
        selective_scan(**args)


def test_complex_A_is_rejected():
    args = make_inputs()
    args["A"] = args["A"].to(torch.complex128)
    with pytest.raises(NotImplementedError, match="complex"):
        selective_scan(**args)


def test_unknown_backend_is_rejected(monkeypatch):
    with pytest.raises(ValueError, match="unknown selective-scan backend"):
        with scan_backend("fast"):
            pass
    monkeypatch.setenv("VIDEOMAP_SCAN_BACKEND", "gpu")
    with pytest.raises(ValueError, match="VIDEOMAP_SCAN_BACKEND"):
        selective_scan(**make_inputs())
