"""Tied adaptive input + adaptive softmax: the authors' head and tail order, exact, normalised,
tied, and the whole model."""
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


def test_head_is_computed_from_the_projected_state_and_tails_read_columns_from_the_end():
    """The authors' head: [table_0 ; cluster.weight] (P_0^T h) + [bias_0 ; cluster.bias], and
    tail cluster i scored by head column c_0 + S - i (here 7 + 3 - i), written out by hand."""
    io = adaptive_model().adaptive
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(5, 16, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        x0 = h @ io.projs[0]  # n x d_0: P_0^T h
        shortlist = x0 @ io.tables[0].t() + io.biases[0]  # n x 7
        clusters = x0 @ io.cluster.weight.t() + io.cluster.bias  # n x 3, from P_0^T h as well
        head = torch.log_softmax(torch.cat([shortlist, clusters], -1), -1)
        full = io.log_probs(h)
    assert [io.head_column(i) for i in (1, 2, 3)] == [9, 8, 7]
    torch.testing.assert_close(full[:, :7], head[:, :7])
    for i, (lo, hi) in enumerate(((7, 15), (15, 30), (30, 40)), start=1):
        within = torch.log_softmax(h @ io.projs[i] @ io.tables[i].t() + io.biases[i], -1).detach()
        torch.testing.assert_close(full[:, lo:hi], head[:, 10 - i : 11 - i] + within)


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


def test_every_adaptive_tensor_gets_a_gradient_even_when_its_cluster_is_absent():
    """As the authors' dummy loss: a cluster absent from inputs and targets still gets a zero
    gradient (so Adam moves it with its moments, as theirs does), and the loss is unchanged."""
    model = adaptive_model().train()
    tokens = torch.tensor([[0, 1, 2, 3]])  # shortlist only
    nll, _ = model(tokens, model.init_cache(1), tokens)
    nll.mean().backward()
    for i in (1, 2, 3):
        for tensor in (model.adaptive.tables[i], model.adaptive.projs[i], model.adaptive.biases[i]):
            assert tensor.grad is not None and not tensor.grad.any()
    with torch.no_grad():
        h = torch.randn(1, 4, 16, dtype=torch.float64)
        direct = -model.adaptive.log_probs(h.view(-1, 16)).gather(1, tokens.view(-1, 1)).view(1, 4)
        assert torch.equal(model.adaptive.nll(h, tokens), direct)
