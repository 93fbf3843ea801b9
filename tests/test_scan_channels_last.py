"""The channels-last inference kernels (the scan's ``fwd_last`` and the conv's ``causal_conv1d_fwd_last``) and the
Mamba layer's inference path built on them: against the channels-first kernel (same bits), the reference
scan and conv (independent computations), with the strided views the layer passes, and their errors."""

import pytest
import torch

from videomap.layers.bimamba import BiMamba
from videomap.ops import scan_backend, selective_scan
from videomap.ops.causal_conv import causal_conv1d_channels_last, causal_conv1d_reference
from videomap.ops.scan_cpu import cpu_kernel_available, load_cpu_kernel, selective_scan_channels_last
from scan_cases import make_inputs, max_rel_error

pytestmark = pytest.mark.skipif(not cpu_kernel_available(), reason="the CPU kernel could not be built")


def _last(t):
    """A (B, E, L) tensor as a (B, L, E) channels-last copy; (B, G, N, L) as (B, L, G, N)."""
    return t.permute(0, 2, 1).contiguous() if t.dim() == 3 else t.permute(0, 3, 1, 2).contiguous()


def _case(dtype, batch, channels, state, length, groups, seed=0):
    args = make_inputs(batch, channels, state, length, "grouped", groups, dtype=torch.float64, seed=seed)
    args.pop("initial_state")
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return {k: (v.to(dtype) if k in ("u", "delta", "z", "B", "C") else v.to(state_dtype)) for k, v in args.items()}


SHAPES = [(2, 40, 5, 130, 2), (1, 7, 16, 64, 1), (1, 48, 20, 65, 3), (2, 32, 16, 200, 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["fp32", "bf16", "fp64"])
@pytest.mark.parametrize("shape", SHAPES, ids=["groups", "partial-block", "n20", "batch"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_channels_last_scan_has_the_bits_of_the_channels_first_kernel(dtype, shape, reverse):
    a = _case(dtype, *shape)
    previous = torch.randn(a["u"].shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    kernel = load_cpu_kernel()
    want, _, _ = kernel.fwd(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["delta_bias"], None, True,
                            False, reverse, previous.clone(), 0.5, True)
    got = selective_scan_channels_last(
        _last(a["u"]), _last(a["delta"]), a["A"], _last(a["B"]), _last(a["C"]), a["D"], _last(a["z"]),
        a["delta_bias"], True, reverse=reverse, out=_last(previous), scale=0.5, accumulate=True)
    assert got.shape == (shape[0], shape[3], shape[1]) and got.dtype == dtype
    assert torch.equal(got.transpose(1, 2), want)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("options", [(True, True, True), (False, False, False), (True, False, True)],
                         ids=["D-z-softplus", "plain", "D-softplus"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_channels_last_scan_matches_the_reference(dtype, tol, options, reverse):
    use_D, use_z, softplus = options
    a = _case(dtype, 2, 40, 5, 130, 2)
    D, z = (a["D"] if use_D else None), (a["z"] if use_z else None)
    with torch.no_grad(), scan_backend("reference"):
        want = selective_scan(a["u"], a["delta"], a["A"], a["B"], a["C"], D, z, a["delta_bias"],
                              delta_softplus=softplus, reverse=reverse)
    got = selective_scan_channels_last(_last(a["u"]), _last(a["delta"]), a["A"], _last(a["B"]), _last(a["C"]), D,
                                       None if z is None else _last(z), a["delta_bias"], softplus, reverse=reverse)
    assert max_rel_error(got.transpose(1, 2), want) <= tol


def test_channels_last_scan_reads_halves_and_slices_in_place():
    """x and z as the halves of a (B, L, 2E) product, B and C as (B, L, N) slices of a (B, L, R + 2N) one:
    the same result as contiguous copies, and a merged second direction adds into the first's buffer."""
    g = torch.Generator().manual_seed(0)
    batch, length, E, N, R = 2, 150, 40, 16, 8
    xz = torch.randn(batch, length, 2 * E, generator=g)
    x_dbl = torch.randn(batch, length, R + 2 * N, generator=g)
    delta = torch.rand(batch, length, E, generator=g) * 0.5
    A = -torch.rand(E, N, generator=g) - 0.1
    D, bias = torch.randn(E, generator=g), torch.randn(E, generator=g) * 0.1
    u, z = xz[..., :E], xz[..., E:]
    B, C = x_dbl[..., R:R + N], x_dbl[..., R + N:]
    assert not (u.is_contiguous() or z.is_contiguous() or B.is_contiguous())
    y = selective_scan_channels_last(u, delta, A, B, C, D, z, bias, True, scale=0.5)
    y = selective_scan_channels_last(u, delta, A, B, C, D, z, bias, True, reverse=True, out=y, scale=0.5,
                                     accumulate=True)
    copies = [t.contiguous() for t in (u, z, B, C)]
    with torch.no_grad(), scan_backend("reference"):
        args = dict(u=copies[0].transpose(1, 2), delta=delta.transpose(1, 2), A=A, B=copies[2].transpose(1, 2),
                    C=copies[3].transpose(1, 2), D=D, z=copies[1].transpose(1, 2), delta_bias=bias, delta_softplus=True)
        want = (selective_scan(**args) + selective_scan(**args, reverse=True)) * 0.5
    assert max_rel_error(y.transpose(1, 2), want) <= 1e-5


def test_channels_last_scan_refuses_what_it_cannot_do():
    a = _case(torch.float32, 1, 16, 4, 20, 1)
    u, delta, B, C = _last(a["u"]), _last(a["delta"]), _last(a["B"]), _last(a["C"])
    with pytest.raises(RuntimeError, match="inference only"):
        selective_scan_channels_last(u.requires_grad_(), delta, a["A"], B, C)
    u = u.detach()
    with pytest.raises(RuntimeError, match="`delta` must have contiguous channels"):
        selective_scan_channels_last(u, a["delta"].transpose(1, 2), a["A"], B, C)
    with pytest.raises(RuntimeError, match="`z` must have shape"):
        selective_scan_channels_last(u, delta, a["A"], B, C, z=a["z"])
    with pytest.raises(RuntimeError, match="accumulating needs an `out`"):
        selective_scan_channels_last(u, delta, a["A"], B, C, accumulate=True)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12), (torch.bfloat16, 1e-2)],
                         ids=["fp32", "fp64", "bf16"])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("reverse", [False, True], ids=["causal", "reverse"])
@pytest.mark.parametrize("width", [3, 4])
def test_channels_last_conv_matches_the_reference(dtype, tol, activation, reverse, width):
    g = torch.Generator().manual_seed(width)
    xz = torch.randn(2, 70, 2 * 21, generator=g).to(dtype)
    x = xz[..., :21]  # a half of in_proj's output, read in place
    wdtype = torch.float64 if dtype == torch.float64 else torch.float32
    w, b = torch.randn(21, width, generator=g).to(wdtype), torch.randn(21, generator=g).to(wdtype)
    got = causal_conv1d_channels_last(x, w, b, activation, reverse)
    want = causal_conv1d_reference(x.transpose(1, 2).to(wdtype), w, b, activation, reverse).transpose(1, 2)
    assert got.shape == x.shape and got.dtype == dtype and got.is_contiguous()
    torch.testing.assert_close(got.to(wdtype), want, rtol=tol, atol=tol)


def test_channels_last_conv_refuses_what_it_cannot_do():
    x, w = torch.randn(1, 10, 8), torch.randn(8, 4)
    with pytest.raises(ValueError, match=r"expected x \(B, L, E\)"):
        causal_conv1d_channels_last(x, torch.randn(5, 4))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_channels_last(x, w, activation="relu")
    with pytest.raises(RuntimeError, match="inference only"):
        causal_conv1d_channels_last(x, w.requires_grad_())


def _layer(seed=0):
    torch.manual_seed(seed)
    layer = BiMamba(48, d_state=16).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # off the init, so that every parameter matters
    return layer


def _spy(monkeypatch):
    calls = []
    import videomap.layers.bimamba as module

    real = module.selective_scan_channels_last
    monkeypatch.setattr(module, "selective_scan_channels_last", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("merge", ["mean", "sum"])
def test_layer_inference_path_matches_the_autograd_path(monkeypatch, merge):
    layer = _layer()
    layer.merge = merge
    x = torch.randn(2, 133, 48)
    calls = _spy(monkeypatch)
    want = layer(x).detach()  # grad mode on: the channels-first layer
    assert calls == []
    with torch.no_grad():
        got = layer(x)
    assert calls == [1, 1]  # both directions ran channels-last
    assert got.shape == want.shape
    assert max_rel_error(got, want) <= 1e-5
    with torch.no_grad(), scan_backend("reference"):
        reference = layer(x)
    assert max_rel_error(got, reference) <= 1e-5


def test_layer_inference_path_in_bf16_keeps_the_fp32_answer(monkeypatch):
    layer = _layer(1)
    x = torch.randn(1, 200, 48)
    calls = _spy(monkeypatch)
    with torch.no_grad():
        want = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = layer(x)
    assert calls == [1, 1, 1, 1] and got.dtype == torch.bfloat16
    assert max_rel_error(got.float(), want) <= 3e-2
    # what a classifier would read off the features: the same largest channel per position almost everywhere
    assert (got.float().argmax(-1) == want.argmax(-1)).float().mean() >= 0.95


def test_layer_takes_the_channels_first_path_where_channels_last_does_not_apply(monkeypatch):
    layer = _layer()
    x = torch.randn(1, 40, 48)
    calls = _spy(monkeypatch)
    with torch.no_grad():
        layer.double()(x.double())  # fp64: the tests' exact path
        with scan_backend("reference"):
            layer.float()(x)
    assert calls == []


def test_the_channels_first_layout_can_be_kept_at_inference(monkeypatch):
    from videomap.layers.bimamba import INFERENCE_ENV_VAR

    layer = _layer()
    x = torch.randn(1, 40, 48)
    calls = _spy(monkeypatch)
    with torch.no_grad():
        monkeypatch.setenv(INFERENCE_ENV_VAR, "channels_first")
        first = layer(x)
        layer.inference = "channels_last"  # the attribute wins over the variable
        last = layer(x)
        assert calls == [1, 1]
        layer.inference = None
        monkeypatch.setenv(INFERENCE_ENV_VAR, "sideways")
        with pytest.raises(ValueError, match=INFERENCE_ENV_VAR):
            layer(x)
    assert max_rel_error(last, first) <= 1e-5
