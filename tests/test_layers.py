"""Building blocks of the backbone: each checked against a direct formula or loop."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from videomap.layers import (
    Attention,
    BiMamba,
    DropPath,
    MambaLayer,
    PatchEmbed3d,
    RMSNorm,
    TransformerLayer,
    add_position_embeddings,
    resample_spatial_pos_embed,
    resample_temporal_pos_embed,
    validate_schedule,
)
from videomap.ops.causal_conv import causal_conv1d, causal_conv1d_reference


def causal_conv_loop(x, weight, bias, activation):
    batch, channels, length = x.shape
    width = weight.shape[1]
    out = torch.zeros_like(x)
    for t in range(length):
        for k in range(width):
            src = t - (width - 1) + k
            if src >= 0:
                out[:, :, t] += weight[:, k] * x[:, :, src]
    if bias is not None:
        out += bias[:, None]
    return F.silu(out) if activation == "silu" else out


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("length", [1, 3, 9])
def test_causal_conv_matches_loop(activation, use_bias, length):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, length, generator=g, dtype=torch.float64)
    weight = torch.randn(5, 4, generator=g, dtype=torch.float64)
    bias = torch.randn(5, generator=g, dtype=torch.float64) if use_bias else None
    expected = causal_conv_loop(x, weight, bias, activation)
    torch.testing.assert_close(causal_conv1d(x, weight, bias, activation), expected)
    torch.testing.assert_close(causal_conv1d_reference(x, weight, bias, activation), expected)


def test_causal_conv_is_causal_and_checks_arguments():
    x = torch.randn(1, 3, 8, requires_grad=True)
    out = causal_conv1d(x, torch.randn(3, 4), None, "silu")
    out[..., 4].sum().backward()
    assert x.grad[..., 5:].abs().sum() == 0 and x.grad[..., 1:5].abs().sum() > 0
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(x, torch.randn(3, 4), activation="relu")
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d(x, torch.randn(4, 4))


def test_rmsnorm_formula_and_dtype():
    norm = RMSNorm(6, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(2, 3, 6)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    assert norm(x.bfloat16()).dtype == torch.bfloat16
    assert [n for n, _ in norm.named_parameters()] == ["weight"]


def test_drop_path_is_per_sample_and_unbiased():
    layer = DropPath(0.25)
    x = torch.ones(4000, 3, 2)
    assert layer.eval()(x) is x
    out = layer.train()(x)
    per_sample = out.flatten(1)
    # Every sample is either dropped entirely or scaled by 1 / keep.
    values = per_sample.unique()
    assert len(values) == 2 and values[0] == 0 and torch.isclose(values[1], torch.tensor(1 / 0.75))
    assert (per_sample == per_sample[:, :1]).all()
    assert abs(out.mean().item() - 1.0) < 0.05
    with pytest.raises(ValueError):
        DropPath(1.0)


def test_patch_embed_grid_and_raster_order():
    embed = PatchEmbed3d(patch_size=4, tubelet_size=2, in_chans=3, embed_dim=8)
    x = torch.randn(2, 3, 6, 8, 12)
    tokens = embed(x)
    assert tokens.shape == (2, 3, 2 * 3, 8)
    assert embed.grid_size(6, 8, 12) == (3, 2, 3)
    # Token (t, n) with n = row * W' + col is the conv output at (t, row, col).
    direct = embed.proj(x)
    torch.testing.assert_close(tokens[1, 2, 1 * 3 + 2], direct[1, :, 2, 1, 2])
    with pytest.raises(ValueError, match="divisible"):
        embed(torch.randn(1, 3, 5, 8, 12))


def test_position_embeddings_order():
    batch, frames, tokens, dim = 2, 3, 4, 5
    patches = torch.zeros(batch, frames, tokens, dim)
    cls = torch.full((1, 1, dim), 100.0)
    pos = torch.arange(1 + tokens, dtype=torch.float32).view(1, -1, 1).expand(1, -1, dim)
    temporal = (10 * torch.arange(1, frames + 1, dtype=torch.float32)).view(1, -1, 1).expand(1, -1, dim)
    seq = add_position_embeddings(patches, cls, pos, temporal)
    assert seq.shape == (batch, 1 + frames * tokens, dim)
    # The class token gets pos_embed[0] and no temporal embedding; then frames in order, tokens in order.
    assert seq[0, 0, 0] == 100.0
    expected = [10 * (t + 1) + (n + 1) for t in range(frames) for n in range(tokens)]
    assert seq[1, 1:, 0].tolist() == expected


def _cubic_resize_1d(values: list[float], new: int, a: float = -0.75) -> list[float]:
    """Bicubic resize of one line, written out: half-pixel centres (``align_corners=False``), Keys' cubic
    convolution kernel with ``a = -0.75``, taps past either end clamped to the border sample."""

    def kernel(d: float) -> float:
        d = abs(d)
        if d <= 1:
            return (a + 2) * d**3 - (a + 3) * d**2 + 1
        return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a if d < 2 else 0.0

    old, out = len(values), []
    for i in range(new):
        x = (i + 0.5) * old / new - 0.5
        base = math.floor(x)
        out.append(sum(kernel(x - k) * values[min(max(k, 0), old - 1)] for k in range(base - 1, base + 3)))
    return out


@pytest.mark.parametrize("old_grid,new_grid", [((4, 7), (9, 5)), ((6, 3), (4, 8)), ((5, 5), (10, 7))])
def test_spatial_resampling_keeps_rows_and_columns_apart(old_grid, new_grid):
    """A ramp along each axis, on grids that are not square: channel 0 is the row index, channel 1 the
    column index. Each output token must carry the 1-D cubic resize of its own row and column coordinate,
    computed independently here — a transposed or mis-reshaped grid cannot."""
    rows, cols = torch.meshgrid(torch.arange(old_grid[0]), torch.arange(old_grid[1]), indexing="ij")
    field = torch.stack([rows, cols], dim=-1).float().reshape(1, -1, 2)  # raster order (row-major)
    pos = torch.cat([torch.tensor([[[-5.0, 9.0]]]), field], dim=1)
    out = resample_spatial_pos_embed(pos, old_grid, new_grid)
    assert out.shape == (1, 1 + new_grid[0] * new_grid[1], 2)
    assert out[0, 0].tolist() == [-5.0, 9.0]
    grid = out[0, 1:].reshape(new_grid[0], new_grid[1], 2)
    row_values = torch.tensor(_cubic_resize_1d([float(r) for r in range(old_grid[0])], new_grid[0]))
    col_values = torch.tensor(_cubic_resize_1d([float(c) for c in range(old_grid[1])], new_grid[1]))
    torch.testing.assert_close(grid[..., 0], row_values[:, None].expand(new_grid), atol=1e-5, rtol=0)
    torch.testing.assert_close(grid[..., 1], col_values[None, :].expand(new_grid), atol=1e-5, rtol=0)


def test_resampling_preserves_constants_and_identity():
    pos = torch.cat([torch.full((1, 1, 3), 7.0), torch.full((1, 14 * 14, 3), 2.0)], dim=1)
    out = resample_spatial_pos_embed(pos, (14, 14), (10, 12))
    assert out.shape == (1, 1 + 120, 3)
    torch.testing.assert_close(out[:, 0], pos[:, 0])
    torch.testing.assert_close(out[:, 1:], torch.full((1, 120, 3), 2.0))
    assert resample_spatial_pos_embed(pos, (14, 14), (14, 14)) is pos
    temporal = torch.randn(1, 8, 3)
    assert resample_temporal_pos_embed(temporal, 8) is temporal
    doubled = resample_temporal_pos_embed(temporal, 16)
    assert doubled.shape == (1, 16, 3)
    # Linear interpolation at 2x: every output lies between its two nearest inputs.
    torch.testing.assert_close(doubled[:, 1:-1:2], 0.75 * temporal[:, :-1] + 0.25 * temporal[:, 1:])


def test_attention_matches_softmax_formula():
    attn = Attention(8, num_heads=2)
    x = torch.randn(2, 5, 8)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


BIMAMBA_SHAPES = {
    "in_proj.weight": (64, 16),
    "conv1d.weight": (32, 1, 4),
    "conv1d.bias": (32,),
    "x_proj.weight": (1 + 2 * 16, 32),
    "dt_proj.weight": (32, 1),
    "dt_proj.bias": (32,),
    "A_log": (32, 16),
    "D": (32,),
    "out_proj.weight": (16, 32),
}


def test_bimamba_parameters_follow_videomamba_layout():
    mixer = BiMamba(16)
    expected = dict(BIMAMBA_SHAPES)
    for name in ("conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias"):
        stem, leaf = name.split(".")
        expected[f"{stem}_b.{leaf}"] = BIMAMBA_SHAPES[name]
    expected["A_b_log"], expected["D_b"] = (32, 16), (32,)
    assert {n: tuple(p.shape) for n, p in mixer.named_parameters()} == expected
    # S4D-real A = 1..N per channel, D = 1, and softplus(dt bias) log-uniform in [1e-3, 1e-1].
    torch.testing.assert_close(mixer.A_b_log.exp(), torch.arange(1.0, 17.0).expand(32, 16))
    assert (mixer.D_b == 1).all()
    dt = F.softplus(torch.cat([mixer.dt_proj.bias, mixer.dt_proj_b.bias]))
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 1e-1 * 1.001
    assert mixer.dt_proj.weight.abs().max() <= 1.0  # uniform in ±dt_rank^-0.5 with dt_rank = 1


def _swap_directions(mixer):
    swapped = copy.deepcopy(mixer)
    with torch.no_grad():
        for fwd, bwd in (("conv1d", "conv1d_b"), ("x_proj", "x_proj_b"), ("dt_proj", "dt_proj_b")):
            for leaf in ("weight", "bias"):
                a, b = getattr(getattr(mixer, fwd), leaf, None), getattr(getattr(mixer, bwd), leaf, None)
                if a is not None:
                    getattr(getattr(swapped, fwd), leaf).copy_(b)
                    getattr(getattr(swapped, bwd), leaf).copy_(a)
        swapped.A_log.copy_(mixer.A_b_log)
        swapped.A_b_log.copy_(mixer.A_log)
        swapped.D.copy_(mixer.D_b)
        swapped.D_b.copy_(mixer.D)
    return swapped


@pytest.mark.parametrize("merge", ["mean", "sum"])
def test_bimamba_flipping_tokens_swaps_directions(merge):
    torch.manual_seed(0)
    mixer = BiMamba(16, merge=merge)
    with torch.no_grad():  # make the two directions clearly different
        mixer.A_b_log.add_(torch.rand_like(mixer.A_b_log))
        mixer.D_b.mul_(-0.5)
    x = torch.randn(2, 11, 16)
    out = mixer(x)
    torch.testing.assert_close(_swap_directions(mixer)(x.flip(1)), out.flip(1), atol=1e-5, rtol=1e-4)
    # Without the swap, flipping the input is not the same function: the directions really differ.
    assert not torch.allclose(mixer(x.flip(1)), out.flip(1), atol=1e-3)


def test_bimamba_sees_both_directions_and_merge_scales():
    torch.manual_seed(0)
    mixer = BiMamba(8, merge="sum")
    x = torch.randn(1, 9, 8, requires_grad=True)
    out = mixer(x)
    out[:, 0].sum().backward()
    assert x.grad[:, -1].abs().sum() > 0  # the first token depends on the last one
    mean_mixer = copy.deepcopy(mixer)
    mean_mixer.merge = "mean"
    torch.testing.assert_close(mean_mixer(x), 0.5 * out, atol=1e-6, rtol=1e-5)


def test_bimamba_matches_separate_scans():
    """The merged output equals out_proj(forward scan + flipped backward scan), each gated by silu(z)."""
    from videomap.ops.scan_reference import selective_scan_reference

    torch.manual_seed(1)
    mixer = BiMamba(8, d_state=4, merge="sum")
    h = torch.randn(2, 7, 8)
    xz = h @ mixer.in_proj.weight.T  # (B, L, 2E)
    x, z = xz.transpose(1, 2).chunk(2, dim=1)

    def direction(x, z, conv, x_proj, dt_proj, A_log, D):
        x = F.silu(conv(x)[..., : x.shape[-1]])
        dt, B, C = (x.transpose(1, 2) @ x_proj.weight.T).split([mixer.dt_rank, 4, 4], dim=-1)
        delta = (dt @ dt_proj.weight.T).transpose(1, 2)
        return selective_scan_reference(x, delta, -A_log.exp(), B.transpose(1, 2), C.transpose(1, 2), D, z=z,
                                        delta_bias=dt_proj.bias, delta_softplus=True)

    y = direction(x, z, mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.A_log, mixer.D)
    y_b = direction(x.flip(-1), z.flip(-1), mixer.conv1d_b, mixer.x_proj_b, mixer.dt_proj_b, mixer.A_b_log,
                    mixer.D_b).flip(-1)
    expected = (y + y_b).transpose(1, 2) @ mixer.out_proj.weight.T
    torch.testing.assert_close(mixer(h), expected, atol=1e-5, rtol=1e-4)


def test_layers_are_residual_and_keep_fp32_stream_under_autocast():
    torch.manual_seed(0)
    layers = [MambaLayer(16), TransformerLayer(16, num_heads=2, layer_scale_init=1e-5)]
    x = torch.randn(2, 6, 16)
    for layer in layers:
        assert layer(x).shape == x.shape
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # With a tiny LayerScale the Transformer layer is close to the identity.
    torch.testing.assert_close(layers[1](x), x, atol=1e-3, rtol=0)
    assert {n.split(".")[0] for n, _ in layers[1].named_parameters()} == {"norm1", "attn", "ls1", "norm2", "mlp", "ls2"}


def test_schedule_validation():
    assert validate_schedule("MMMMA") == "MMMMA"
    with pytest.raises(ValueError, match="unknown layer letters"):
        validate_schedule("MMX")
    with pytest.raises(ValueError):
        validate_schedule("")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("activation", [None, "silu"])
def test_causal_conv_cuda_matches_reference(activation):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 37, generator=g)
    weight, bias = torch.randn(64, 4, generator=g), torch.randn(64, generator=g)
    leaves = [t.cuda().requires_grad_() for t in (x, weight, bias)]
    out = causal_conv1d(*leaves, activation=activation)
    ref_leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    ref = causal_conv1d_reference(*ref_leaves, activation=activation)
    torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=1e-4)
    grad = torch.randn_like(ref)
    out.backward(grad.cuda())
    ref.backward(grad)
    for a, b in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad.cpu(), b.grad, atol=1e-3, rtol=1e-3)
