"""A plain, slow, independent statement of DESIGN §2, used to check model/.

It shares no code with model/: it reads the parameters by their documented names
and evaluates each query and head with explicit loops, one position at a time.
Everything is computed in float64.
"""
from __future__ import annotations

import math

import torch

EPS = 1e-8  # the joint renormalisation constant of the adaptive span


def reference_nll(model, tokens, cache, targets):
    """nll B x M of `model` (eval semantics, L-position windows, no trimming) for the given caches."""
    params = {name: p.detach().double() for name, p in model.named_parameters()}
    cfg = model.cfg
    rows = []
    for b in range(tokens.shape[0]):
        h = _embed(params, cfg, tokens[b])
        for i in range(cfg.num_layers):
            h = _layer(params, cfg, i, cache[i][b].double(), h)
        rows.append(_nll(params, cfg, h, targets[b]))
    return torch.stack(rows)


def _embed(p, cfg, tokens):
    if cfg.output == "softmax":
        return p["embed.weight"][tokens]
    bounds = [0, *cfg.adaptive_cutoffs, cfg.vocab_size]
    out = []
    for t in tokens.tolist():
        i = max(j for j in range(len(bounds) - 1) if bounds[j] <= t)
        e = p[f"adaptive.tables.{i}"][t - bounds[i]]
        out.append(p[f"adaptive.projs.{i}"] @ e * math.sqrt(cfg.d_model))
    return torch.stack(out)


def _layer(p, cfg, i, cache, x):
    """One layer on one sequence: x M x d, cache C x d (its earlier inputs)."""
    pre = f"layers.{i}."
    span = cfg.attn_span
    ext = torch.cat([torch.zeros(max(0, span - cache.shape[0]), cfg.d_model, dtype=x.dtype), cache, x])
    start = ext.shape[0] - x.shape[0]  # row of the first query in ext
    out = []
    for t in range(x.shape[0]):
        a = _attention(p, cfg, pre, ext, start + t)
        y = _layer_norm(p, pre + "norm1", x[t] + p[pre + "attn.w_o.weight"] @ a)
        if cfg.variant == "transformer":
            hid = torch.relu(p[pre + "ffn.fc1.weight"] @ y + p[pre + "ffn.fc1.bias"])
            y = _layer_norm(p, pre + "norm2", y + p[pre + "ffn.fc2.weight"] @ hid + p[pre + "ffn.fc2.bias"])
        if cfg.variant == "ffn_attn":
            keys, vals = _scaled_persistent(p, pre + "ffn.persistent", cfg)
            y = _layer_norm(p, pre + "norm2", y + _softmax_attend(y, keys, vals, cfg.d_model))
        out.append(y)
    return torch.stack(out)


def _attention(p, cfg, pre, ext, a):
    """Concatenated head outputs (before W_o) for the query at row a of ext."""
    H, dh = cfg.num_heads, cfg.head_dim
    q = p[pre + "attn.w_q.weight"] @ ext[a]
    context_heads = H // 2 if cfg.variant == "head_split" else H
    heads = []
    for h in range(H):
        qh = q[h * dh : (h + 1) * dh]
        if h >= context_heads:  # head_split: a persistent-only head
            keys, vals = _scaled_persistent(p, pre + "attn.persistent", cfg, h - context_heads)
            heads.append(_softmax_attend(qh, keys, vals, dh))
            continue
        heads.append(_context_head(p, cfg, pre, ext, a, h, qh))
    out = torch.cat(heads)
    if cfg.variant == "single_head":
        keys, vals = _scaled_persistent(p, pre + "attn.persistent", cfg)
        out = out + _softmax_attend(q, keys, vals, cfg.d_model)
    return out


def _context_head(p, cfg, pre, ext, a, h, qh):
    dh, L = cfg.head_dim, cfg.attn_span
    wk = p[pre + "attn.w_k.weight"][h * dh : (h + 1) * dh]
    wv = p[pre + "attn.w_v.weight"][h * dh : (h + 1) * dh]
    scores, values = [], []
    for dist in range(1, L + 1):
        k = wk @ ext[a - dist]
        scores.append(qh @ (k + p["pos_emb"][:, dist - 1]) / math.sqrt(dh))
        values.append(wv @ ext[a - dist])
    scores, values = torch.stack(scores), torch.stack(values)  # L, L x d_h
    joint = cfg.variant == "all_attention"
    if joint:
        keys, vals = _scaled_persistent(p, pre + "attn.persistent", cfg, h)
        scores = torch.cat([scores, keys @ qh / math.sqrt(dh)])
        values = torch.cat([values, vals])
    probs = torch.softmax(scores, 0)
    if cfg.adaptive_span.enabled:
        probs = _span_mask(p, cfg, pre, h, probs)
    if cfg.variant == "attn_split":
        keys, vals = _scaled_persistent(p, pre + "attn.persistent", cfg, h)
        return probs @ values + _softmax_attend(qh, keys, vals, dh)
    return probs @ values


def _span_mask(p, cfg, pre, h, probs):
    """Mask the first L (context) probabilities by distance, renormalise everything jointly."""
    L, R = cfg.attn_span, cfg.adaptive_span.ramp
    z = p[pre + "attn.span.z"][h, 0, 0]
    probs = probs.clone()
    for dist in range(1, L + 1):
        m = min(1.0, max(0.0, float((R + z * L - (dist - 1)) / R)))
        probs[dist - 1] = probs[dist - 1] * m
    return probs / (probs.sum() + EPS)


def _scaled_persistent(p, name, cfg, head=None):
    """(keys N x D, values N x D) as used: stored keys * sqrt(D), values * sqrt(N)."""
    keys, vals = p[name + ".keys"], p[name + ".values"]
    if head is not None:
        keys, vals = keys[head], vals[head]
    dim, num = keys.shape
    return keys.t() * math.sqrt(dim), vals * math.sqrt(num)


def _softmax_attend(q, keys, vals, dim):
    return torch.softmax(keys @ q / math.sqrt(dim), 0) @ vals


def _layer_norm(p, name, x):
    mu, var = x.mean(), x.var(unbiased=False)
    return (x - mu) / torch.sqrt(var + 1e-5) * p[name + ".weight"] + p[name + ".bias"]


def _nll(p, cfg, h, targets):
    if cfg.output == "softmax":
        logits = h @ p["out.weight"].t() + p["out.bias"]
        return torch.logsumexp(logits, -1) - logits.gather(1, targets[:, None]).squeeze(1)
    return -reference_adaptive_log_probs(p, cfg, h).gather(1, targets[:, None]).squeeze(1)


def reference_adaptive_log_probs(p, cfg, h):
    """Full log p over the vocabulary from the tied adaptive softmax; h: n x d -> n x V.
    As the authors' code: the cluster logits act on the projected state P_0^T h, and tail
    cluster i (1..S) reads the head column counted from the end (the last one is cluster 1)."""
    bounds = [0, *cfg.adaptive_cutoffs, cfg.vocab_size]
    tails = len(bounds) - 2
    rows = []
    for x in h:
        x0 = p["adaptive.projs.0"].t() @ x
        short = p["adaptive.tables.0"] @ x0 + p["adaptive.biases.0"]
        clusters = p["adaptive.cluster.weight"] @ x0 + p["adaptive.cluster.bias"]
        head = torch.log_softmax(torch.cat([short, clusters]), 0)
        parts = [head[: bounds[1]]]
        for i in range(1, tails + 1):
            tail = p[f"adaptive.tables.{i}"] @ (p[f"adaptive.projs.{i}"].t() @ x) + p[f"adaptive.biases.{i}"]
            parts.append(head[bounds[1] + tails - i] + torch.log_softmax(tail, 0))
        rows.append(torch.cat(parts))
    return torch.stack(rows)
