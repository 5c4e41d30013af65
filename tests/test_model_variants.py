"""Each layer variant against the plain reference of tests/model_reference.py (DESIGN §2)."""
from __future__ import annotations

import pytest
import torch

import model.attention as attention
from tests.model_helpers import VARIANTS, make_model, random_cache, random_tokens
from tests.model_reference import reference_nll

TOL = 1e-7  # float64 throughout; any real discrepancy is orders of magnitude larger


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("span", [False, True], ids=["full-span", "adaptive-span"])
@pytest.mark.parametrize("block", [4, 7], ids=["block<span", "block>span"])
def test_variant_matches_reference(variant, span, block):
    model = make_model(variant, span=span)
    tokens, targets = random_tokens(model, batch=2, block=block)
    cache = random_cache(model, batch=2)
    with torch.no_grad():
        nll, _ = model(tokens, cache, targets)
    expected = reference_nll(model, tokens, cache, targets)
    assert nll.dtype == torch.float64 and nll.shape == targets.shape
    torch.testing.assert_close(nll, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("variant", ["all_attention", "attn_split", "attention_only"])
def test_several_query_chunks_match_reference(variant, monkeypatch):
    """Two chunks of 3 queries over a block of 6 give the same result as one."""
    monkeypatch.setattr(attention, "MIN_CHUNK", 3)
    assert attention.chunk_height(6, 6, 5, torch.device("cpu")) == 3
    model = make_model(variant, span=True)
    tokens, targets = random_tokens(model, batch=2, block=6)
    cache = random_cache(model, batch=2)
    with torch.no_grad():
        nll, _ = model(tokens, cache, targets)
    torch.testing.assert_close(nll, reference_nll(model, tokens, cache, targets), atol=TOL, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_parameter_gets_a_gradient(variant):
    """No parameter is dead weight (e.g. head_split's keys/values exist for context heads only)."""
    model = make_model(variant, span=True).train()
    tokens, targets = random_tokens(model, batch=2, block=5)
    nll, _ = model(tokens, random_cache(model, batch=2), targets)
    (nll.mean() + model.span_loss()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
        assert torch.isfinite(param.grad).all(), name


def fixed_dropout(probs, rate):
    """Dropout with a deterministic keep pattern, so that gradcheck sees one function."""
    if rate == 0.0:
        return None, probs
    keep = torch.arange(probs.numel()).view(probs.shape) % 3 != 0
    return keep, attention._apply_keep(probs, keep, rate)


@pytest.mark.parametrize("persistent", [False, True], ids=["context", "joint"])
@pytest.mark.parametrize("span", [False, True], ids=["no-span", "span"])
@pytest.mark.parametrize("dropout", [0.0, 0.4], ids=["no-dropout", "dropout"])
def test_context_attention_gradients(persistent, span, dropout, monkeypatch):
    """The hand-written backward of the banded attention is exact: chunks of 2 queries over a
    block of 5 (the last chunk ragged), relative positions, persistent slots, span mask, dropout."""
    monkeypatch.setattr(attention, "MIN_CHUNK", 2)
    monkeypatch.setattr(attention, "_drop", fixed_dropout)
    gen = torch.Generator().manual_seed(0)
    H, B, M, K, dh, N = 2, 2, 6, 4, 3, 3
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True)
    q, kv, pos = rand(B, M, H * dh), rand(B, K + M, 2 * H * dh), rand(dh, K + 2)
    mask = torch.tensor([[1.0, 1.0, 0.5, 0.0], [1.0, 0.7, 0.2, 0.0]], dtype=torch.float64, requires_grad=True)
    keys, vals = rand(H, dh, N), rand(H, N, dh)

    def fn(q, kv, pos, mask, keys, vals):
        pers = (keys, vals) if persistent else None
        return attention.context_attention(q, kv, pos, H, mask if span else None, pers, dropout, training=True)

    assert torch.autograd.gradcheck(fn, (q, kv, pos, mask, keys, vals))


@pytest.mark.parametrize("persistent", [False, True], ids=["context", "joint"])
@pytest.mark.parametrize("span", [False, True], ids=["no-span", "span"])
def test_projected_context_attention_is_projection_then_attention(persistent, span, monkeypatch):
    """The banded attention that projects [cache ; block] itself (the model's CPU path) equals
    project_context followed by context_attention, and its backward is exact (no gradient to
    the cache, none lost to the recycled key/value buffers)."""
    monkeypatch.setattr(attention, "MIN_CHUNK", 2)
    gen = torch.Generator().manual_seed(1)
    H, B, M, K, dh, N, d = 2, 2, 6, 4, 3, 3, 5
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True)
    q, x, weight, pos = rand(B, M, H * dh), rand(B, M, d), rand(2 * H * dh, d), rand(dh, K + 2)
    history = torch.randn(B, K, d, generator=gen, dtype=torch.float64)
    pers = (rand(H, dh, N), rand(H, N, dh)) if persistent else None
    mask = torch.tensor([[1.0, 1.0, 0.5, 0.0], [1.0, 0.7, 0.2, 0.0]], dtype=torch.float64) if span else None

    def fused(q, x, weight, pos):
        return attention.projected_context_attention(q, history, x, weight, pos, H, mask, pers)

    expected = attention.context_attention(q, attention.project_context(history, x, weight), pos, H, mask, pers)
    torch.testing.assert_close(fused(q, x, weight, pos), expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(fused, (q, x, weight, pos))


def test_projected_context_attention_under_autocast_matches_the_separate_projection():
    """Under bf16 autocast both project in bf16 and attend in fp32: the same outputs and gradients."""
    gen = torch.Generator().manual_seed(2)
    H, B, M, K, dh, d = 2, 2, 8, 8, 4, 8
    rand = lambda *s: torch.randn(*s, generator=gen, requires_grad=True)
    q, x, weight, pos = rand(B, M, H * dh), rand(B, M, d), rand(2 * H * dh, d), rand(dh, K)
    history = torch.randn(B, K, d, generator=gen)
    results = []
    for run in (lambda: attention.projected_context_attention(q, history, x, weight, pos, H),
                lambda: attention.context_attention(q, attention.project_context(history, x, weight), pos, H)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = run()
        grads = torch.autograd.grad(out.square().sum(), (q, x, weight))
        assert out.dtype == torch.float32 and [g.dtype for g in grads] == [torch.float32] * 3
        results.append((out, *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_context_projection_gradients():
    """Keys/values over [cache ; block] in one product; no gradient flows to the cache."""
    gen = torch.Generator().manual_seed(0)
    history = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(attention.project_context(history, x, weight), torch.cat([history, x], 1) @ weight.t())
    assert torch.autograd.gradcheck(lambda x, w: attention.project_context(history, x, w), (x, weight))


def test_head_split_parameter_shapes():
    model = make_model("head_split", span=True, d_model=8, num_heads=4)
    names = dict(model.named_parameters())
    assert names["layers.0.attn.w_k.weight"].shape == (4, 8)
    assert names["layers.0.attn.persistent.keys"].shape == (2, 2, 5)
    assert names["layers.0.attn.persistent.values"].shape == (2, 5, 2)
    assert names["layers.0.attn.span.z"].shape == (2, 1, 1)


def test_single_head_and_ffn_attn_have_one_d_dim_set():
    for variant, prefix in (("single_head", "attn"), ("ffn_attn", "ffn")):
        names = dict(make_model(variant).named_parameters())
        assert names[f"layers.0.{prefix}.persistent.keys"].shape == (8, 5)
        assert names[f"layers.0.{prefix}.persistent.values"].shape == (5, 8)
