"""The fused CPU Mamba layer: the unfused layer's gradients, a fraction of its saved memory, and an opt-out.

Every comparison is against the unfused layer (``VIDEOMAP_FUSED_MAMBA=0``, plain autograd over the
separately tested conv and scan kernels) or against finite differences (gradcheck), never against itself.
"""

from __future__ import annotations

import copy

import pytest
import torch

from videomap.layers import BiMamba
from videomap.layers.bimamba import FUSED_ENV_VAR, fused_mamba_mode
from videomap.layers.blocks import MambaLayer
from videomap.models import create_model
from videomap.ops import resolve_backend
from videomap.ops.bimamba_fused import DirectionWeights, bimamba_inner
from videomap.ops.scan_cpu import load_cpu_kernel, scan_backward_cpu
from scan_cases import max_rel_error

pytestmark = pytest.mark.skipif(resolve_backend(torch.device("cpu"), torch.float32) != "cpu",
                                reason="the fused layer needs the CPU kernel")

FUSED_NODE = "_BiMambaInnerBackward"


def graph_nodes(t: torch.Tensor) -> set[str]:
    seen, stack, names = set(), [t.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return names


def perturbed_layer(dim: int, dtype: torch.dtype, merge: str, seed: int = 0) -> MambaLayer:
    """A layer whose parameters are off their initial values (D = 1, norm weight = 1 hide mistakes)."""
    torch.manual_seed(seed)
    layer = MambaLayer(dim, d_state=4, merge=merge).to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-5), (torch.float64, 1e-12)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("merge", ["mean", "sum"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("mode", ["xz", "input"])
def test_fused_layer_has_the_unfused_layers_output_and_gradients(dtype, tol, merge, batch, mode):
    fused = perturbed_layer(16, dtype, merge)
    unfused = copy.deepcopy(fused)
    fused.mixer.fused, unfused.mixer.fused = mode, "off"
    x = torch.randn(batch, 150, 16, dtype=dtype)  # 150 positions: two full scan chunks and a partial one
    weight = torch.randn(batch, 150, 16, dtype=dtype)
    x_fused, x_unfused = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_fused, out_unfused = fused(x_fused), unfused(x_unfused)
    assert FUSED_NODE in graph_nodes(out_fused) and FUSED_NODE not in graph_nodes(out_unfused)
    assert relative_error(out_fused, out_unfused) <= tol
    (out_fused * weight).sum().backward()
    (out_unfused * weight).sum().backward()
    assert relative_error(x_fused.grad, x_unfused.grad) <= tol
    for (name, p_fused), p_unfused in zip(fused.named_parameters(), unfused.parameters()):
        assert relative_error(p_fused.grad, p_unfused.grad) <= tol, f"d{name}"


@pytest.mark.parametrize("mode", ["xz", "input"])
@pytest.mark.parametrize("with_norm", [True, False], ids=["norm", "no_norm"])
def test_fused_layer_gradcheck(mode, with_norm):
    layer = perturbed_layer(4, torch.float64, "mean").mixer
    mixer = BiMamba(4, d_state=2, expand=2).double()
    mixer.load_state_dict({k: v for k, v in layer.state_dict().items() if v.shape == mixer.state_dict()[k].shape},
                          strict=False)
    x = torch.randn(1, 67, 4, dtype=torch.float64, requires_grad=True)  # crosses a scan chunk boundary
    norm_weight = (1 + 0.1 * torch.randn(4, dtype=torch.float64)).requires_grad_()
    directions = [[t.detach().clone().requires_grad_() for t in mixer._direction_weights(*parts)]
                  for parts in ((mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.A_log, mixer.D),
                                (mixer.conv1d_b, mixer.x_proj_b, mixer.dt_proj_b, mixer.A_b_log, mixer.D_b))]
    in_proj = mixer.in_proj.weight.detach().clone().requires_grad_()
    out_proj = mixer.out_proj.weight.detach().clone().requires_grad_()

    def layer_fn(x, norm_weight, in_proj, out_proj, *weights):
        return bimamba_inner(x, in_proj, out_proj, DirectionWeights(*weights[:7]), DirectionWeights(*weights[7:]),
                                 dt_rank=mixer.dt_rank, d_state=2, scale=0.5,
                                 norm_weight=norm_weight if with_norm else None, recompute=mode)

    inputs = (x, norm_weight, in_proj, out_proj, *directions[0], *directions[1])
    assert torch.autograd.gradcheck(layer_fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def saved_activation_bytes(layer: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward of ``layer(x)``, parameters (and views of them) left out."""
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    total = 0

    def pack(t):
        nonlocal total
        if t.untyped_storage().data_ptr() not in params:
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return total


def test_fused_layer_keeps_only_its_input_xz_and_the_scan_checkpoints():
    batch, length, dim = 1, 640, 32
    layer = MambaLayer(dim, d_state=16)
    x = torch.randn(batch, length, dim, requires_grad=True)
    per_d = batch * length * dim * 4  # one (B, L, D) fp32 tensor
    checkpoints = 2 * batch * (length // 64) * 2 * dim * 16 * 4  # two directions' (B, L / 64, E, N)
    saved = {}
    for mode in ("off", "xz", "input"):
        layer.mixer.fused = mode
        saved[mode] = saved_activation_bytes(layer, x)
    assert saved["xz"] == per_d + 4 * per_d + checkpoints  # x, xz (2E = 4D), checkpoints
    assert saved["input"] == per_d  # x alone
    assert saved["off"] >= 3 * saved["xz"]  # what the fused layer spares


def test_whole_model_training_step_is_unchanged_by_the_fused_layer(monkeypatch):
    """A videomap_tiny step, with and without layer checkpointing: fused and unfused gradients agree."""
    torch.manual_seed(0)
    model = create_model("videomap_tiny", num_frames=4, img_size=32, num_classes=5, residual_in_fp32=False).double()
    clip = torch.randn(2, 3, 4, 32, 32, dtype=torch.float64)
    grads = {}
    for mode, checkpointing in (("0", False), ("1", False), ("input", True)):
        monkeypatch.setenv(FUSED_ENV_VAR, mode)
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad(set_to_none=True)
        model(clip).pow(2).sum().backward()
        grads[mode] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for mode in ("1", "input"):
        for name, g in grads["0"].items():
            assert relative_error(grads[mode][name], g) <= 1e-11, f"{mode}: d{name}"


def test_the_environment_variable_chooses_the_path(monkeypatch):
    layer = MambaLayer(16, d_state=4)
    x = torch.randn(1, 20, 16, requires_grad=True)
    monkeypatch.delenv(FUSED_ENV_VAR, raising=False)
    assert fused_mamba_mode() == "xz" and FUSED_NODE in graph_nodes(layer(x))
    monkeypatch.setenv(FUSED_ENV_VAR, "0")
    assert FUSED_NODE not in graph_nodes(layer(x))
    monkeypatch.setenv(FUSED_ENV_VAR, "input")
    assert fused_mamba_mode() == "input" and FUSED_NODE in graph_nodes(layer(x))
    monkeypatch.setenv(FUSED_ENV_VAR, "yes")
    with pytest.raises(ValueError, match=FUSED_ENV_VAR):
        layer(x)


def test_inference_and_bf16_autocast_take_the_unfused_path(monkeypatch):
    monkeypatch.delenv(FUSED_ENV_VAR, raising=False)
    layer = MambaLayer(16, d_state=4)
    x = torch.randn(1, 20, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert FUSED_NODE not in graph_nodes(layer(x))
    training = layer(x).detach()
    with torch.no_grad():
        inference = layer(x)  # the channels-last inference layer: other product kernels, its own SiLU
        layer.mixer.inference = "channels_first"
        unfused = layer(x)
    assert torch.equal(unfused, training)  # the training path computes the same numbers as the unfused layer
    assert max_rel_error(inference, training) <= 1e-5  # and the channels-last layer, to fp32 rounding


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_scan_backward_returns_the_forward_output(reverse):
    """The backward recomputes the gated output on its way; asked for, it returns exactly the forward's."""
    torch.manual_seed(1)
    batch, channels, state, length = 2, 24, 8, 150
    u, z = torch.randn(batch, channels, length), torch.randn(batch, channels, length)
    delta = 0.1 * torch.randn(batch, channels, length)
    A = -torch.rand(channels, state) - 0.5
    B, C = torch.randn(batch, 1, state, length), torch.randn(batch, 1, state, length)
    D, bias = torch.randn(channels), 0.1 * torch.randn(channels)
    out, _, checkpoints = load_cpu_kernel().fwd(u, delta, A, B, C, D, z, bias, None, True, True, reverse, None,
                                                1.0, False)
    *_, y = scan_backward_cpu(u, delta, A, B, C, D, z, bias, checkpoints, torch.ones_like(u),
                              delta_softplus=True, reverse=reverse, want_out=True)
    assert torch.equal(y, out)
