"""Cache semantics: causality, block-by-block == one pass, adaptive-span trimming, span API."""
from __future__ import annotations

import pytest
import torch

from tests.model_helpers import VARIANTS, make_model, random_cache, random_tokens
from tests.model_reference import reference_nll

TOL = 1e-7


def run_blocks(model, tokens, targets, block, cache):
    """nll of a long sequence fed block by block, the cache carried over."""
    out = []
    for start in range(0, tokens.shape[1], block):
        with torch.no_grad():
            nll, cache = model(tokens[:, start : start + block], cache, targets[:, start : start + block])
        out.append(nll)
    return torch.cat(out, dim=1), cache


@pytest.mark.parametrize("variant", VARIANTS)
def test_causality(variant):
    """Changing tokens after position t never changes the nll at positions <= t."""
    model = make_model(variant, span=True)
    tokens, targets = random_tokens(model, batch=2, block=9)
    cache = random_cache(model, batch=2)
    with torch.no_grad():
        base, _ = model(tokens, cache, targets)
        for t in (0, 4, 7):
            changed, changed_targets = tokens.clone(), targets.clone()
            changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % model.cfg.vocab_size
            changed_targets[:, t + 1 :] = (changed_targets[:, t + 1 :] + 3) % model.cfg.vocab_size
            nll, _ = model(changed, cache, changed_targets)
            torch.testing.assert_close(nll[:, : t + 1], base[:, : t + 1], atol=0, rtol=0)
            assert not torch.equal(nll[:, t + 1 :], base[:, t + 1 :])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("block", [2, 4, 9])
def test_blocks_with_cache_equal_one_pass(variant, block):
    """Feeding 18 tokens in blocks, caches carried from zeros, equals a single pass over all 18
    (and the plain reference); the final caches hold the last L inputs of every layer."""
    model = make_model(variant, span=True)
    tokens, targets = random_tokens(model, batch=2, block=18)
    blocks, last_cache = run_blocks(model, tokens, targets, block, model.init_cache(2))
    with torch.no_grad():
        whole, whole_cache = model(tokens, model.init_cache(2), targets)
    torch.testing.assert_close(blocks, whole, atol=TOL, rtol=0)
    torch.testing.assert_close(whole, reference_nll(model, tokens, model.init_cache(2), targets), atol=TOL, rtol=0)
    for a, b in zip(last_cache, whole_cache):
        assert a.shape == (2, model.cfg.attn_span, model.cfg.d_model)
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


def test_cache_is_layer_inputs_and_detached():
    model = make_model("all_attention").train()
    tokens, targets = random_tokens(model, batch=2, block=3)
    cache = random_cache(model, batch=2)
    embedded = model.embed(tokens)
    _, new_cache = model(tokens, cache, targets)
    assert all(not c.requires_grad for c in new_cache)
    # layer 0's input is the embedding: the last L = 6 inputs are 3 old cache rows then the block
    torch.testing.assert_close(new_cache[0], torch.cat([cache[0][:, 3:], embedded.detach()], dim=1))


def trimming_pair(variant, seed=0):
    """Two identical models, L = 200, spans well below L; only trim_memory differs."""
    kwargs = dict(span=True, attn_span=200, ramp=8, d_model=8, num_heads=2, seed=seed)
    full = make_model(variant, trim=False, **kwargs)
    trimmed = make_model(variant, trim=True, **kwargs)
    trimmed.load_state_dict(full.state_dict())
    with torch.no_grad():
        for layer in full.layers:
            layer.attn.span.z.uniform_(0.05, 0.25)  # needed span s <= 0.25 * 200 + 8 = 58 -> K = 200 - 128 = 72
    trimmed.load_state_dict(full.state_dict())
    return full, trimmed


@pytest.mark.parametrize("variant", ["all_attention", "attn_split", "head_split", "transformer"])
def test_trimming_and_cache_shrinking_leave_nll_unchanged(variant):
    full, trimmed = trimming_pair(variant)
    assert [layer.attn.kept_span() for layer in trimmed.layers] == [72, 72]  # two groups of 64 dropped
    trimmed_cache = trimmed.init_cache(2)
    assert [c.shape[1] for c in trimmed_cache] == [136, 136]  # kept span + a 64-position margin
    tokens, targets = random_tokens(full, batch=2, block=150)
    a, full_cache = run_blocks(full, tokens, targets, 30, full.init_cache(2))
    b, trimmed_cache = run_blocks(trimmed, tokens, targets, 30, trimmed_cache)
    # the only difference is the 1e-8 of the renormalisation, relative to a smaller softmax sum
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    for c_full, c_trim in zip(full_cache, trimmed_cache):
        assert c_trim.shape[1] == 136
        torch.testing.assert_close(c_trim, c_full[:, -136:], atol=1e-6, rtol=0)


def test_trimmed_model_matches_reference_with_short_cache():
    """A cache shorter than the kept span is left-padded with zeros: same as a zero-filled L cache."""
    full, trimmed = trimming_pair("all_attention")
    tokens, targets = random_tokens(full, batch=2, block=5)
    short = random_cache(full, batch=2, length=40)
    padded = [torch.cat([torch.zeros(2, 160, 8, dtype=torch.float64), c], dim=1) for c in short]
    with torch.no_grad():
        nll, next_cache = trimmed(tokens, short, targets)
    torch.testing.assert_close(nll, reference_nll(full, tokens, padded, targets), atol=1e-6, rtol=0)
    assert [c.shape[1] for c in next_cache] == [136, 136]


def test_span_growth_is_followed():
    """As z grows, the kept span and cache grow in steps of 64 up to L, as in the authors' code:
    K = L - 64 * floor((L - s) / 64) with s = ceil(max z * L) + R, and C = min(L, K + 64)."""
    _, trimmed = trimming_pair("all_attention")
    span = trimmed.layers[0].attn.span
    with torch.no_grad():
        span.z.fill_(0.0)
        assert (span.kept_span(), span.cache_size()) == (8, 72)  # s = 8: 192 keys dropped
        span.z[0] = 0.3  # needs ceil(60) + 8 = 68 positions: 128 keys dropped
        assert (span.kept_span(), span.cache_size()) == (72, 136)
        span.z[1] = 1.0
        assert (span.kept_span(), span.cache_size()) == (200, 200)


def test_span_loss_clamp_and_stats():
    model = make_model("all_attention", span=True, attn_span=6, ramp=2)
    zs = [torch.tensor([0.2, 0.5]), torch.tensor([-0.1, 1.3])]
    with torch.no_grad():
        for layer, z in zip(model.layers, zs):
            layer.attn.span.z.copy_(z.view(2, 1, 1))
    expected = sum(1e-3 * 6 * z.mean() for z in zs)
    torch.testing.assert_close(model.span_loss(), expected.double())
    model.clamp_span_()
    assert model.layers[1].attn.span.z.view(-1).tolist() == [0.0, 1.0]
    spans = [0.2 * 6 + 2, 0.5 * 6 + 2, 0 + 2, 6]  # z * L + ramp, at most L
    mean, top = model.span_stats()
    assert mean == pytest.approx(sum(spans) / 4) and top == pytest.approx(6)


def test_span_api_without_adaptive_span():
    model = make_model("all_attention", span=False)
    assert float(model.span_loss()) == 0.0
    model.clamp_span_()
    assert model.span_stats() == (6.0, 6.0)
    assert [c.shape for c in model.init_cache(3)] == [(3, 6, 8)] * 2
