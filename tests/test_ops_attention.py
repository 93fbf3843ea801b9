"""Attention on CPUs whose bf16 attention kernel is slow: computed in float32 from the bf16-rounded inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from videomap.layers import Attention
from videomap.ops import attention as attention_ops


def _reference(q, k, v, mask=None):
    """Softmax attention in float64 from the given values."""
    q, k, v = (t.double() for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


@pytest.fixture
def sdpa_dtypes(monkeypatch):
    """Records the dtype of every call torch's attention kernel gets."""
    seen = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        seen.append(q.dtype)
        return original(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(attention_ops.F, "scaled_dot_product_attention", spy)
    return seen


def _qkv(seed=0, length=45):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, length, 16, generator=g) for _ in range(3)]


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_bf16_attention_kernel_dtype_follows_the_cpu(monkeypatch, sdpa_dtypes, fast, masked):
    monkeypatch.setattr(attention_ops, "fast_reduced_attention", lambda: fast)
    q, k, v = (t.bfloat16() for t in _qkv())  # as the qkv product gives them under autocast
    mask = torch.ones(45, 45, dtype=torch.bool).tril() if masked else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention_ops.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        # float32 inputs under autocast are rounded to bf16 first, as autocast would round them
        widened = attention_ops.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    assert out.dtype == widened.dtype == torch.bfloat16  # what autocast gives either way
    assert sdpa_dtypes[0] == (torch.bfloat16 if fast else torch.float32)
    assert torch.equal(out, widened)
    ref = _reference(q, k, v, mask)
    # Rounding the output to bf16 is the only error of the float32 route; the bf16 kernel rounds inside too.
    tol = 2 ** -8 * ref.abs().max().item()
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=tol if not fast else 4 * tol)


def test_float32_and_gpu_style_inputs_are_left_to_torch(monkeypatch, sdpa_dtypes):
    monkeypatch.setattr(attention_ops, "fast_reduced_attention", lambda: False)
    q, k, v = _qkv(1)
    out = attention_ops.scaled_dot_product_attention(q, k, v)
    assert sdpa_dtypes == [torch.float32] and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _reference(q, k, v), rtol=1e-5, atol=1e-5)
    out64 = attention_ops.scaled_dot_product_attention(*(t.double() for t in (q, k, v)))
    assert out64.dtype == torch.float64


def test_float32_route_is_differentiable(monkeypatch):
    monkeypatch.setattr(attention_ops, "fast_reduced_attention", lambda: False)
    q, k, v = (t.requires_grad_(True) for t in _qkv(2, length=20))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention_ops.scaled_dot_product_attention(q, k, v)
    out.float().square().sum().backward()
    leaves = [t.detach().bfloat16().double().requires_grad_(True) for t in (q, k, v)]
    _reference(*leaves).square().sum().backward()
    for got, want in zip((q.grad, k.grad, v.grad), (t.grad for t in leaves)):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=0, atol=3e-2 * want.abs().max().item())


def test_attention_layer_uses_the_cpu_aware_kernel(monkeypatch, sdpa_dtypes):
    monkeypatch.setattr(attention_ops, "fast_reduced_attention", lambda: False)
    layer = Attention(48, num_heads=3)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(2, 30, 48))
    assert out.dtype == torch.bfloat16 and sdpa_dtypes == [torch.float32]
