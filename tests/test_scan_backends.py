"""Every fast backend against the reference scan: forward, every gradient, chunked state passing, dtypes."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from videomap.ops import backend as ops_backend
from videomap.ops import resolve_backend, scan_backend, selective_scan, selective_scan_reference
from videomap.ops.backend import cuda_kernel_available
from scan_cases import make_inputs, max_rel_error

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]

BACKENDS = [
    pytest.param("cpu", "cpu", id="cpu"),
    pytest.param("cuda", "cuda", id="cuda", marks=pytest.mark.skipif(
        not cuda_kernel_available(), reason="needs CUDA and mamba_ssm")),
    # On CPU tensors the Triton kernels are tested under the interpreter in test_ops_triton.py.
    pytest.param("triton", "cuda", id="triton", marks=pytest.mark.skipif(
        not torch.cuda.is_available() or importlib.util.find_spec("triton") is None, reason="needs CUDA and triton")),
]

SHAPES = [  # batch, channels, state, length, B/C layout, groups
    (1, 16, 16, 1, "shared", 1),
    (2, 24, 4, 7, "shared", 1),
    (1, 48, 16, 65, "grouped", 2),
    (2, 20, 8, 130, "grouped", 4),
    (1, 16, 5, 33, "const", 1),
    (1, 32, 16, 200, "shared", 1),
]

# (D, z, delta_bias, softplus, initial state): each optional argument both on and off across the rows.
OPTIONS = [
    (False, False, False, False, False),
    (True, True, True, True, False),
    (True, False, True, False, True),
    (False, True, False, True, True),
]


def _run(backend, args, softplus, device, grads=True):
    tensors = {k: (v.to(device).clone().requires_grad_(grads) if v is not None else None) for k, v in args.items()}
    kw = {k: v for k, v in tensors.items() if k != "initial_state"}
    h0 = tensors["initial_state"]
    with scan_backend(backend):
        out, last = selective_scan(**kw, delta_softplus=softplus, return_last_state=True, initial_state=h0)
    if not grads:
        return out, last, {}
    g = torch.Generator().manual_seed(1)
    w_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(device)
    w_last = torch.randn(last.shape, generator=g, dtype=torch.float64).to(device)
    loss = (out.double() * w_out).sum() + (last.double() * w_last).sum()
    loss.backward()
    return out, last, {k: v.grad for k, v in tensors.items() if v is not None}


def _device(backend):
    return "cuda" if backend == "cuda" else "cpu"


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("dtype, fwd_tol, grad_tol", [(torch.float32, 1e-4, 1e-3), (torch.float64, 1e-10, 1e-9)],
                         ids=["fp32", "fp64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "".join("1" if x else "0" for x in o))
def test_backend_matches_reference(backend, device, dtype, fwd_tol, grad_tol, shape, options):
    use_D, use_z, use_bias, softplus, use_h0 = options
    if backend == "cuda" and (use_h0 or dtype == torch.float64):
        pytest.skip("mamba_ssm's kernel has no initial state and no float64")
    batch, channels, state, length, bc, groups = shape
    args = make_inputs(batch, channels, state, length, bc, groups, use_D, use_z, use_bias, use_h0, dtype=dtype)
    out, last, grads = _run(backend, args, softplus, device)
    ref_out, ref_last, ref_grads = _run("reference", args, softplus, "cpu")
    assert out.dtype == dtype
    assert max_rel_error(out.cpu(), ref_out) <= fwd_tol
    assert max_rel_error(last.cpu(), ref_last) <= fwd_tol
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        err = max_rel_error(grads[name].cpu(), ref_grads[name])
        assert err <= grad_tol, f"d{name}: relative error {err:.2e}"


@pytest.mark.parametrize("backend, device", BACKENDS)
def test_backend_gradcheck(backend, device):
    if backend == "cuda":
        pytest.skip("mamba_ssm's kernel has no float64")
    args = make_inputs(batch=2, channels=3, state=2, length=5, bc="grouped", groups=3, use_h0=True)
    tensors = [args[n].to(device).clone().requires_grad_() for n in NAMES]

    def fn(*ts):
        kw = dict(zip(NAMES, ts))
        h0 = kw.pop("initial_state")
        with scan_backend(backend):
            return selective_scan(**kw, delta_softplus=True, return_last_state=True, initial_state=h0)

    assert torch.autograd.gradcheck(fn, tensors)


def _reverse_recurrence(u, delta, A, B, C, D, z, delta_bias, initial_state):
    """The reverse scan written out step by step, independently of every backend: the state runs from
    t = L - 1 down to t = 0 (softplus on; D, z, delta_bias given). Differentiable; returns (out, h_0)."""
    batch, channels, length = u.shape

    def at(M, t):  # the projection every channel reads at position t: (B or 1, E, N)
        if M.dim() == 2:
            return M[None]
        if M.dim() == 3:
            return M[:, None, :, t]
        return M[:, :, :, t].repeat_interleave(channels // M.shape[1], dim=1)

    h = initial_state if initial_state is not None else u.new_zeros(batch, channels, A.shape[1])
    out = [None] * length
    for t in range(length - 1, -1, -1):
        step = F.softplus(delta[:, :, t] + delta_bias)
        h = torch.exp(step[..., None] * A) * h + (step * u[:, :, t])[..., None] * at(B, t)
        y = (h * at(C, t)).sum(-1) + D * u[:, :, t]
        out[t] = y * F.silu(z[:, :, t])
    return torch.stack(out, dim=-1), h


@pytest.mark.parametrize("backend, device", [pytest.param("reference", "cpu", id="reference"), *BACKENDS])
@pytest.mark.parametrize("dtype, fwd_tol, grad_tol", [(torch.float32, 1e-4, 1e-3), (torch.float64, 1e-10, 1e-9)],
                         ids=["fp32", "fp64"])
@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: "x".join(map(str, s)))
def test_reverse_scan_matches_a_reverse_recurrence(backend, device, dtype, fwd_tol, grad_tol, shape):
    """``reverse=True`` equals the recurrence run from the last position to the first (a plain loop in this
    test, which equals flipping every time-indexed input, scanning and flipping back), forward and every
    gradient."""
    if backend == "cuda" and dtype == torch.float64:
        pytest.skip("mamba_ssm's kernel has no float64")
    batch, channels, state, length, bc, groups = shape
    args = make_inputs(batch, channels, state, length, bc, groups, True, True, True, backend != "cuda", dtype=dtype)
    leaves = {k: (v.to(device).clone().requires_grad_() if v is not None else None) for k, v in args.items()}
    kw = {k: v for k, v in leaves.items() if k != "initial_state"}
    with scan_backend(backend):
        out, last = selective_scan(**kw, delta_softplus=True, return_last_state=True,
                                   initial_state=leaves["initial_state"], reverse=True)
    ref_leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in args.items()}
    ref_out, ref_last = _reverse_recurrence(**ref_leaves)
    assert max_rel_error(out.cpu(), ref_out) <= fwd_tol
    assert max_rel_error(last.cpu(), ref_last) <= fwd_tol
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    ((out * weight.to(device)).sum() + last.sum()).backward()
    ((ref_out * weight).sum() + ref_last.sum()).backward()
    for name, leaf in leaves.items():
        if leaf is not None:
            err = max_rel_error(leaf.grad.cpu(), ref_leaves[name].grad)
            assert err <= grad_tol, f"d{name}: relative error {err:.2e}"


def test_reverse_cpu_kernel_gradcheck():
    args = make_inputs(batch=2, channels=3, state=2, length=7, bc="grouped", groups=3, use_h0=True)
    tensors = [args[n].clone().requires_grad_() for n in NAMES]

    def fn(*ts):
        kw = dict(zip(NAMES, ts))
        h0 = kw.pop("initial_state")
        with scan_backend("cpu"):
            return selective_scan(**kw, delta_softplus=True, return_last_state=True, initial_state=h0, reverse=True)

    assert torch.autograd.gradcheck(fn, tensors)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_chunked_state_passing_equals_one_pass(backend):
    """Scanning [0, L/2) then [L/2, L) from the carried state equals one pass, forward and backward."""
    args = make_inputs(batch=2, channels=16, state=8, length=96, bc="shared", dtype=torch.float32)
    one = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in args.items()}
    two = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in args.items()}
    half = 48
    with scan_backend(backend):
        kw = {k: v for k, v in one.items() if k != "initial_state"}
        full, full_last = selective_scan(**kw, delta_softplus=True, return_last_state=True)

        def part(sl):
            return dict(u=two["u"][..., sl], delta=two["delta"][..., sl], A=two["A"], B=two["B"][..., sl],
                        C=two["C"][..., sl], D=two["D"], z=two["z"][..., sl], delta_bias=two["delta_bias"])

        first, carried = selective_scan(**part(slice(0, half)), delta_softplus=True, return_last_state=True)
        second, last = selective_scan(**part(slice(half, None)), delta_softplus=True, return_last_state=True,
                                      initial_state=carried)
    joined = torch.cat([first, second], dim=-1)
    assert max_rel_error(joined, full) <= 1e-5
    assert max_rel_error(last, full_last) <= 1e-5
    weight = torch.randn_like(full)
    ((full * weight).sum() + full_last.sum()).backward()
    ((joined * weight).sum() + last.sum()).backward()
    for name in ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]:
        assert max_rel_error(two[name].grad, one[name].grad) <= 1e-4, name


def _elementwise_rel_error(got: torch.Tensor, want: torch.Tensor, floor: float = 1e-30) -> float:
    """Largest |got - want| / max(|want|, floor) over the elements."""
    return ((got.double() - want).abs() / want.abs().clamp_min(floor)).max().item()


def test_cpu_kernel_gate_is_accurate_per_element_over_the_whole_range():
    """With B = C = 0 the output is D u silu(z) element by element: the kernel's gate (its own exp polynomial
    and a division) must match silu in float64 to a few ulp for z from -120 to 120, forward and backward."""
    channels, length = 48, 161
    z = torch.linspace(-120.0, 120.0, channels * length).reshape(1, channels, length)
    u = torch.randn(1, channels, length, generator=torch.Generator().manual_seed(0))
    leaves = dict(u=u.clone().requires_grad_(), z=z.clone().requires_grad_())
    zeros = torch.zeros(channels, 4)
    with scan_backend("cpu"):
        out = selective_scan(leaves["u"], torch.full_like(u, 0.5), -torch.ones(channels, 4), zeros, zeros,
                             D=torch.ones(channels), z=leaves["z"])
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weight).sum().backward()
    u64, z64, w64 = u.double(), z.double(), weight.double()
    sig = torch.sigmoid(z64)
    assert torch.isfinite(out).all() and torch.isfinite(leaves["z"].grad).all()
    assert _elementwise_rel_error(out, u64 * z64 * sig) <= 2e-6
    assert _elementwise_rel_error(leaves["u"].grad, w64 * z64 * sig) <= 2e-6
    assert _elementwise_rel_error(leaves["z"].grad, w64 * u64 * sig * (1 + z64 * (1 - sig))) <= 2e-5


def test_cpu_kernel_softplus_is_accurate_per_element_over_the_whole_range():
    """With one step, one state and B = C = u = 1 the output is softplus(delta) per channel; its gradient is
    sigmoid(delta). Checked against float64 for delta from -40 to 40 (above 20 softplus passes x through)."""
    channels = 4096
    x = torch.linspace(-40.0, 40.0, channels).reshape(1, channels, 1)
    delta = x.clone().requires_grad_()
    ones = torch.ones(channels, 1)
    with scan_backend("cpu"):
        out = selective_scan(torch.ones(1, channels, 1), delta, -ones, ones, ones, delta_softplus=True)
    out.sum().backward()
    x64 = x.double()
    want = torch.where(x64 > 20, x64, torch.log1p(torch.exp(x64)))
    assert torch.isfinite(out).all()
    assert _elementwise_rel_error(out, want) <= 1e-6
    assert _elementwise_rel_error(delta.grad, torch.where(x64 > 20, 1.0, torch.sigmoid(x64))) <= 1e-6


@pytest.mark.parametrize("backend, device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(backend, device, dtype):
    args = make_inputs(batch=2, channels=32, state=16, length=40, bc="shared", dtype=dtype)
    out, last, grads = _run(backend, args, True, device)
    ref_out, ref_last, ref_grads = _run("reference", args, True, "cpu")
    assert out.dtype == dtype and last.dtype == torch.float32
    assert torch.isfinite(out).all()
    # Both compute in fp32 from the same rounded inputs: only the final rounding differs.
    assert max_rel_error(out.cpu(), ref_out) <= 1e-2
    for name in ref_grads:
        assert grads[name].dtype == dtype if name != "initial_state" else True
        assert max_rel_error(grads[name].cpu(), ref_grads[name]) <= 2e-2, name


def test_auto_selects_a_backend_and_env_var_is_honoured(monkeypatch):
    monkeypatch.delenv("VIDEOMAP_SCAN_BACKEND", raising=False)
    assert resolve_backend(torch.device("cpu"), torch.float32) in ("cpu", "reference")
    monkeypatch.setenv("VIDEOMAP_SCAN_BACKEND", "reference")
    assert resolve_backend(torch.device("cpu"), torch.float32) == "reference"
    with scan_backend("cpu"):  # the context manager wins over the environment
        assert resolve_backend(torch.device("cpu"), torch.float32) == "cpu"


def test_auto_order_per_device(monkeypatch):
    """CUDA tensors: mamba_ssm, then Triton, then the reference; CPU tensors: the C++ kernel, then the
    reference (never Triton)."""
    monkeypatch.delenv("VIDEOMAP_SCAN_BACKEND", raising=False)
    cuda = torch.device("cuda")
    monkeypatch.setattr(ops_backend, "cuda_kernel_available", lambda: True)
    monkeypatch.setattr(ops_backend, "_triton_import_error", lambda: None)
    assert resolve_backend(cuda, torch.float32) == "cuda"
    assert resolve_backend(cuda, torch.float32, needs_initial_state=True) == "triton"  # mamba_ssm has no h0
    monkeypatch.setattr(ops_backend, "cuda_kernel_available", lambda: False)
    assert resolve_backend(cuda, torch.float32) == "triton"
    monkeypatch.setattr(ops_backend, "_triton_import_error", lambda: "triton is not importable")
    assert resolve_backend(cuda, torch.float32) == "reference"
    monkeypatch.setattr(ops_backend, "cpu_kernel_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(ops_backend, "_triton_import_error", lambda: None)
    assert resolve_backend(torch.device("cpu"), torch.float32) == "cpu"
    assert resolve_backend(torch.device("cpu"), torch.float32, op="conv") == "cpu"


def test_backend_table_covers_every_backend_and_op():
    for op in ops_backend.OPS:
        for name in ops_backend.BACKENDS[1:]:
            assert any(key[0] == op and key[2] == name for key in ops_backend.KERNELS), (op, name)
    assert ops_backend.kernel("scan", "reference", "mps") is selective_scan_reference


def test_forcing_triton_on_cpu_tensors_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = {k: v for k, v in make_inputs().items() if k != "initial_state"}
    with scan_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        selective_scan(**args)
    with scan_backend("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        from videomap.ops.causal_conv import causal_conv1d

        causal_conv1d(torch.randn(1, 2, 5), torch.randn(2, 4))


def test_forcing_cuda_on_cpu_tensors_is_an_error():
    with scan_backend("cuda"), pytest.raises(RuntimeError, match="'cuda' was requested"):
        selective_scan(**{k: v for k, v in make_inputs().items() if k != "initial_state"})


def test_empty_sequence():
    args = make_inputs(length=0, dtype=torch.float32, use_h0=True)
    for backend in ("reference", "cpu"):
        with scan_backend(backend):
            out, last = selective_scan(**{k: v for k, v in args.items() if k != "initial_state"},
                                       return_last_state=True, initial_state=args["initial_state"])
        assert out.shape == (2, 4, 0)
        assert torch.equal(last, args["initial_state"])
