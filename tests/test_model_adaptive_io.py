"""Tied adaptive input + adaptive softmax: exact, normalised, tied, and the whole model."""
from __future__ import annotations

import math

import torch

from tests.model_helpers import make_model, random_cache, random_tokens
from tests.model_reference import reference_adaptive_log_probs, reference_nll

ADAPTIVE = dict(vocab_size=40, output="adaptive", adaptive_cutoffs=[7, 15, 30], adaptive_div_value=2.0)


def adaptive_model(**kw):
    return make_model("all_attention", span=True, d_model=16, num_heads=2, **ADAPTIVE, **kw)


def test_nll_equals_explicit_log_probs_and_distribution_is_normalised():
    model = adaptive_model()
    params = {name: p.detach() for name, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2, 20, 16, generator=gen, dtype=torch.float64)
    targets = torch.arange(40).view(2, 20)  # every cluster, every boundary
    expected = reference_adaptive_log_probs(params, model.cfg, h.view(-1, 16))  # n x V
    with torch.no_grad():
        nll = model.adaptive.nll(h, targets)
        full = model.adaptive.log_probs(h.view(-1, 16))
    torch.testing.assert_close(nll.view(-1), -expected.gather(1, targets.view(-1, 1)).squeeze(1))
    torch.testing.assert_close(full, expected)
    torch.testing.assert_close(full.exp().sum(-1), torch.ones(40, dtype=torch.float64))


def test_input_and_output_share_tables_and_projections():
    model = adaptive_model()
    names = dict(model.named_parameters())
    widths = [16, 8, 4, 2]
    sizes = [7, 8, 15, 10]
    for i, (n, w) in enumerate(zip(sizes, widths)):
        assert names[f"adaptive.tables.{i}"].shape == (n, w)
        assert names[f"adaptive.projs.{i}"].shape == (16, w)
        assert names[f"adaptive.biases.{i}"].shape == (n,)
    assert names["adaptive.cluster.weight"].shape == (3, 16)
    assert not any(name.startswith(("embed", "out.")) for name in names)
    tokens = torch.tensor([[3, 9, 20, 35]])
    emb = model.adaptive.embed(tokens)[0]
    expected_20 = names["adaptive.projs.2"] @ names["adaptive.tables.2"][20 - 15] * math.sqrt(16)
    torch.testing.assert_close(emb[2], expected_20)


def test_adaptive_model_matches_reference():
    model = adaptive_model()
    tokens, targets = random_tokens(model, batch=2, block=5)
    cache = random_cache(model, batch=2)
    with torch.no_grad():
        nll, _ = model(tokens, cache, targets)
    torch.testing.assert_close(nll, reference_nll(model, tokens, cache, targets), atol=1e-7, rtol=0)


def test_adaptive_gradients_reach_shared_tables_from_both_sides():
    model = adaptive_model().train()
    tokens, targets = random_tokens(model, batch=2, block=8)
    nll, _ = model(tokens, model.init_cache(2), targets)
    nll.mean().backward()
    assert all(p.grad is not None for p in model.adaptive.parameters())
