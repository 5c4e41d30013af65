"""The fused attention (SDPA + additive bias, the CUDA path) against the banded one, on CPU.

The two compute the same function except the 1e-8 the authors add to the adaptive-span
renormalisation (model/fused_attention.py says why); with it set to 0 they agree to float64
rounding, forward and backward, for every variant, with and without adaptive span and
trimming, over a carried cache.
"""
from __future__ import annotations

import pytest
import torch

import model.attention
from model.fused_attention import fused_context_attention, skew
from tests.model_helpers import VARIANTS, make_model, random_cache, random_tokens

EXACT = dict(rtol=1e-10, atol=1e-12)


def _twin(variant: str, **kw):
    banded = make_model(variant, attention="banded", **kw)
    fused = make_model(variant, attention="fused", **kw)
    fused.load_state_dict(banded.state_dict())
    return banded, fused


def _two_blocks(net, tokens, targets, cache):
    """Mean nll of two blocks with the cache carried, and the gradients of every parameter."""
    net.zero_grad()
    first, cache = net(tokens[:, :5], cache, targets[:, :5])
    second, _ = net(tokens[:, 5:], cache, targets[:, 5:])
    loss = torch.cat([first, second], dim=1).mean() + net.span_loss()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("span,trim", [(False, False), (True, False), (True, True)])
def test_fused_equals_banded_forward_and_backward(variant, span, trim, monkeypatch):
    monkeypatch.setattr(model.attention, "SPAN_EPS", 0.0)
    banded, fused = _twin(variant, span=span, trim=trim, attn_span=12, ramp=3)
    tokens, targets = random_tokens(banded, batch=2, block=10)
    cache = random_cache(banded, batch=2)
    loss_b, grads_b = _two_blocks(banded, tokens, targets, cache)
    loss_f, grads_f = _two_blocks(fused, tokens, targets, cache)
    torch.testing.assert_close(loss_f, loss_b, **EXACT)
    assert grads_f.keys() == grads_b.keys()
    for name in grads_b:
        torch.testing.assert_close(grads_f[name], grads_b[name], **EXACT, msg=name)


def test_span_renormalisation_epsilon_is_the_only_difference():
    """With the authors' 1e-8, the two differ by about 1e-8 relative, no more."""
    banded, fused = _twin("all_attention", span=True, attn_span=12, ramp=3)
    tokens, targets = random_tokens(banded, batch=2, block=10)
    cache = random_cache(banded, batch=2)
    with torch.no_grad():
        nll_b, _ = banded(tokens, cache, targets)
        nll_f, _ = fused(tokens, cache, targets)
    torch.testing.assert_close(nll_f, nll_b, rtol=1e-6, atol=0)


def test_skew_places_each_row_on_its_band():
    rev = torch.arange(1.0, 13.0).view(3, 4)  # M 3 x K 4
    out = skew(rev, 7)  # T = K + M
    inf = float("-inf")
    expected = torch.tensor([[1, 2, 3, 4, inf, inf, inf], [inf, 5, 6, 7, 8, inf, inf], [inf, inf, 9, 10, 11, 12, inf]])
    assert torch.equal(out, expected)


def test_fused_attention_dropout_drops_probabilities():
    """In training mode with dropout the output changes from call to call; in eval mode it does not."""
    q, kv, pos = torch.randn(2, 4, 8), torch.randn(2, 10, 16), torch.randn(4, 6)
    torch.manual_seed(0)
    a = fused_context_attention(q, kv, pos, 2, dropout=0.5, training=True)
    b = fused_context_attention(q, kv, pos, 2, dropout=0.5, training=True)
    assert not torch.equal(a, b)
    assert torch.equal(fused_context_attention(q, kv, pos, 2, dropout=0.5), fused_context_attention(q, kv, pos, 2))


def test_auto_is_banded_on_cpu():
    banded, _ = _twin("all_attention")
    assert banded.cfg.attention == "banded"
    auto = make_model("all_attention", attention="auto")
    assert not auto.layers[0].attn._fused(torch.zeros(1))
