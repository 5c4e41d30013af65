"""Banded context attention with relative positions (the sequential transformer's core).

Symbols: B batch, M block (queries), K kept span (keys each query sees; K = L
unless adaptive-span trimming is on), L attention span, T = K + M key rows over
[cache ; block], H heads attending to the context, d_h head width, d' = H d_h,
N persistent slots, c queries per chunk, W = K + c - 1 keys in a chunk's window.

Query t of the block (t = 0..M-1) sits at key row K + t of [cache ; block] and
attends to the K rows t .. t + K - 1, i.e. distances dist = K .. 1; itself and
later rows are excluded. Its score for the key at distance dist is
    q_t . (k + P[:, dist - 1]) / sqrt(d_h)
and, in the joint variant, q_t . Pk_n / sqrt(d_h) for persistent slot n, all in
one softmax. With an adaptive span the context probabilities are multiplied by
the soft mask m(dist) and all probabilities renormalised by their sum + 1e-8.

Cost: per head, queries are processed in chunks of c rows; a chunk needs only
the W contiguous key rows of its window, so its scores are c x (W + N): the work
is O(M (K + c + N)) per head, never O(M (K + M)), and no mask is materialised.
The position term is one dense product for all queries and heads, written into
a buffer whose rows end with c slots of -inf, so that a strided view (a "skew")
puts each distance at its key's column and -inf outside the band. Queries,
keys and values stay in the projections' token-major layout (B x T x d'); each
head reads its columns through strided views, so nothing is permuted or copied
per head. Forward and backward are written by hand (_BandedAttention) so that
overlapping windows accumulate their gradients in place.
"""
from __future__ import annotations

import torch
from torch import Tensor

SPAN_EPS = 1e-8
"""Added to the sum before the adaptive-span renormalisation (as the authors do)."""
TARGET_WASTE = 0.125
"""Fraction of extra (out-of-band) scores a chunk may compute; bounds the chunk height c."""
CHUNK_BYTES = 1 << 18
"""On CPU, one batch element's chunk of scores should stay in a core's L2 cache."""
MIN_CHUNK = 32
"""Below this height, the batched products lose more to overhead than the band saves."""


def chunk_height(block: int, kept: int, slots: int, device: torch.device) -> int:
    """Queries per chunk, a divisor of the block: as tall as the window overhead (c-1)/K
    allows and, on CPU, as the L2 cache allows (c x (W + N) scores); on GPU the whole
    block (fewer, larger launches). Without a divisor near that height: the whole block."""
    if device.type != "cpu":
        return block
    target = min(int(TARGET_WASTE * kept), CHUNK_BYTES // (4 * (kept + slots)))
    target = min(block, max(MIN_CHUNK, target))
    height = max(c for c in range(1, target + 1) if block % c == 0)
    return height if 2 * height > target else block


def context_attention(
    q: Tensor,
    kv: Tensor,
    pos: Tensor,
    heads: int,
    span_mask: Tensor | None = None,
    persistent: tuple[Tensor, Tensor] | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> Tensor:
    """Attention of each query over its K previous positions (and the persistent slots, if given).

    q: B x M x d' (heads side by side); kv: B x (K + M) x 2d', keys then values over
    [cache ; block]; pos: d_h x L, column dist-1 holds distance dist (the first K are used);
    span_mask: H x K adaptive-span mask by distance (column dist-1), or None;
    persistent: (keys H x d_h x N, values H x N x d_h), scaled as used, sharing the softmax
    with the context (all_attention), or None. Dropout applies to all probabilities.
    Returns B x M x d'.

    Under autocast (train.precision bf16) it computes in fp32: its softmax and the span
    renormalisation must be fp32 anyway, and its hand-written kernels write into buffers
    of one dtype. The output is fp32; W_o's autocast casts it back down.
    """
    if torch.is_autocast_enabled(q.device.type):
        with torch.autocast(q.device.type, enabled=False):
            pers = None if persistent is None else (_fp32(persistent[0]), _fp32(persistent[1]))
            return context_attention(_fp32(q), _fp32(kv), _fp32(pos), heads, _fp32(span_mask), pers, dropout, training)
    kept = kv.shape[1] - q.shape[1]
    pos_rev = pos[:, :kept].flip(-1)  # d_h x K: column u = distance K - u, the order of a window's keys
    mask_rev = None if span_mask is None else span_mask.flip(-1)  # H x K, same order
    keys, values = persistent if persistent is not None else (None, None)
    return _BandedAttention.apply(q, kv, pos_rev, mask_rev, keys, values, heads, dropout if training else 0.0)


class _Band:
    """Shapes and chunking of one call, the views that select a head's columns, and the skew
    between distance and window coordinates. n = M/c chunks; a head's chunk-major rows
    are n x B x c."""

    def __init__(self, q: Tensor, kv: Tensor, heads: int, pers_keys: Tensor | None):
        self.batch, self.block, width = q.shape
        self.heads, self.d_head = heads, width // heads
        self.kept = kv.shape[1] - self.block
        self.num_pers = 0 if pers_keys is None else pers_keys.shape[-1]
        self.height = chunk_height(self.block, self.kept, self.num_pers, q.device)
        self.width = self.kept + self.height - 1  # W
        self.starts = range(0, self.block, self.height)

    def keys(self, kv: Tensor, head: int, start: int) -> Tensor:
        """Head `head`'s keys in the window of the chunk at `start`: B x W x d_h (a view)."""
        return kv[:, start : start + self.width, head * self.d_head : (head + 1) * self.d_head]

    def values(self, kv: Tensor, head: int, start: int) -> Tensor:
        offset = (self.heads + head) * self.d_head
        return kv[:, start : start + self.width, offset : offset + self.d_head]

    def head(self, x: Tensor, head: int) -> Tensor:
        """Head `head`'s columns of a B x M x d' tensor: B x M x d_h (a view)."""
        return x[..., head * self.d_head : (head + 1) * self.d_head]

    def chunked(self, x: Tensor) -> Tensor:
        """B x M x m -> n x B x c x m, chunk-major rows (a view)."""
        return x.view(self.batch, -1, self.height, x.shape[-1]).transpose(0, 1)

    def to_chunks(self, x: Tensor) -> Tensor:
        """`chunked`, as a contiguous copy."""
        return self.chunked(x).contiguous()

    def skewed(self, padded: Tensor, start: int) -> Tensor:
        """Rows start.. of `padded` (... x R x (K + c) with any row stride; row i holds column
        u = distance K - u, then c padding slots, and the c slots before each row are padding
        too) in window coordinates: ... x c x W, column j of row i is distance K + i - j
        inside the band and a padding slot outside it (a view)."""
        *lead, row_stride, _ = padded.stride()
        size = (*padded.shape[:-2], self.height, self.width)
        return padded.as_strided(size, (*lead, row_stride - 1, 1), padded.storage_offset() + start * row_stride)

    def unskewed(self, x: Tensor) -> Tensor:
        """Inverse view of `skewed` on ... x c x (W + ...) with unit column stride:
        ... x c x K, column u = distance K - u."""
        *lead, row_stride, _ = x.stride()
        return x.as_strided((*x.shape[:-1], self.kept), (*lead, row_stride + 1, 1), x.storage_offset())

    def position_scores(self, qs: Tensor, pos_rev: Tensor) -> Tensor:
        """qs . P for every query, head and distance in one product, each row followed by c
        slots of -inf (what `skewed` reads outside the band): B x M x H x (K + c)."""
        width = self.kept + self.height
        out = qs.new_empty(self.batch, self.block, self.heads, width)
        out[..., self.kept :] = float("-inf")
        torch.mm(qs.view(-1, self.d_head), pos_rev, out=out.view(-1, width)[:, : self.kept])
        return out

    def skewed_mask(self, mask_rev: Tensor) -> Tensor:
        """H x K span mask by reversed distance -> H x c x W in window coordinates, 0 off the band."""
        padded = mask_rev.new_zeros(self.heads, self.height, self.kept + self.height)  # H x c x (K + c)
        padded[..., : self.kept] = mask_rev.unsqueeze(1)
        return self.skewed(padded, 0)


class _Head:
    """What one head's forward pass keeps for the backward pass (n x B x c x (W + N) each)."""

    def __init__(self, probs: Tensor, renormed: Tensor, norm: Tensor | None, keep: Tensor | None):
        self.probs = probs  # the softmax output
        self.renormed = renormed  # after the span mask and renormalisation (or `probs`)
        self.norm = norm  # n x B x c x 1: renormalisation sum + eps (adaptive span), or None
        self.keep = keep  # dropout's keep mask, or None


class _BandedAttention(torch.autograd.Function):
    """`context_attention` on reversed positions/mask, with a hand-written backward."""

    @staticmethod
    def forward(ctx, q, kv, pos_rev, mask_rev, pers_keys, pers_values, heads, dropout):
        band = _Band(q, kv, heads, pers_keys)
        qs = q * band.d_head**-0.5  # B x M x d' (contiguous): scores are qs . (k + P)
        pos_scores = band.position_scores(qs, pos_rev)  # B x M x H x (K + c)
        mask = None if mask_rev is None else band.skewed_mask(mask_rev)  # H x c x W
        out = torch.empty_like(qs)  # B x M x d'
        saved = []
        for head in range(band.heads):
            probs = _head_scores(band, head, qs, kv, pos_scores, pers_keys)  # n x B x c x (W + N)
            probs = torch.ops.aten._softmax.out(probs, -1, False, out=probs)  # in place
            renormed, norm = _renormalise(band, probs, None if mask is None else mask[head])
            keep, used = _drop(renormed, dropout)
            band.chunked(band.head(out, head)).copy_(_head_output(band, head, used, kv, pers_values))
            saved.append(_Head(probs, renormed, norm, keep))
        ctx.band, ctx.saved, ctx.dropout, ctx.qs, ctx.mask = band, saved, dropout, qs, mask
        ctx.save_for_backward(kv, pos_rev, pers_keys, pers_values)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        band, qs, mask = ctx.band, ctx.qs, ctx.mask
        kv, pos_rev, pers_keys, pers_values = ctx.saved_tensors
        grads = _Grads(band, qs, kv, mask, pers_keys)
        for head, state in enumerate(ctx.saved):
            d_out = band.to_chunks(band.head(grad_out, head))  # n x B x c x d_h
            d_used = grads.add_outputs(head, state, d_out, kv, pers_values, ctx.dropout)  # n x B x c x (W + N)
            d_scores = _scores_grad(band, head, state, d_used, mask, grads)
            grads.add_scores(head, d_scores, qs, kv, pers_keys)
        d_q, d_pos = grads.queries_and_positions(qs, pos_rev)
        return d_q, grads.kv, d_pos, grads.mask, grads.pers_keys, grads.pers_values, None, None


def _head_scores(band: _Band, head: int, qs: Tensor, kv: Tensor, pos_scores: Tensor, pers_keys: Tensor | None) -> Tensor:
    """Scores of one head, chunk by chunk: n x B x c x W over each window, then N persistent columns."""
    out = qs.new_empty(len(band.starts), band.batch, band.height, band.width + band.num_pers)
    queries = band.head(qs, head)  # B x M x d_h
    pers = None if pers_keys is None else band.to_chunks(queries) @ pers_keys[head]  # n x B x c x N
    for i, start in enumerate(band.starts):
        positions = band.skewed(pos_scores[:, :, head], start)  # B x c x W
        keys = band.keys(kv, head, start).transpose(1, 2)  # B x d_h x W
        chunk_queries = queries[:, start : start + band.height]  # B x c x d_h
        if pers is None:
            torch.baddbmm(positions, chunk_queries, keys, out=out[i])
        else:
            torch.cat([torch.baddbmm(positions, chunk_queries, keys), pers[i]], dim=-1, out=out[i])
    return out


def _renormalise(band: _Band, probs: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Adaptive span: context probabilities times the mask (c x W), then all of them over
    their sum + eps."""
    if mask is None:
        return probs, None
    out = probs.clone()  # n x B x c x (W + N)
    out[..., : band.width].mul_(mask)
    norm = out.sum(-1, keepdim=True).add_(SPAN_EPS)  # n x B x c x 1
    return out.div_(norm), norm


def _drop(probs: Tensor, rate: float) -> tuple[Tensor | None, Tensor]:
    """Dropout on probabilities: (keep mask or None, the probabilities as used)."""
    if rate == 0.0:
        return None, probs
    keep = torch.empty_like(probs, dtype=torch.bool).bernoulli_(1.0 - rate)
    return keep, _apply_keep(probs, keep, rate)


def _apply_keep(x: Tensor, keep: Tensor, rate: float) -> Tensor:
    return x.mul(keep).mul_(1.0 / (1.0 - rate))


def _head_output(band: _Band, head: int, used: Tensor, kv: Tensor, pers_values: Tensor | None) -> Tensor:
    """Probabilities times values, context windows plus persistent slots: n x B x c x d_h."""
    if pers_values is None:
        out = used.new_zeros(*used.shape[:-1], band.d_head)
    else:
        out = used[..., band.width :] @ pers_values[head]  # n x B x c x d_h
    for i, start in enumerate(band.starts):
        out[i].baddbmm_(used[i, ..., : band.width], band.values(kv, head, start))
    return out


def _scores_grad(band: _Band, head: int, state: _Head, d_used: Tensor, mask: Tensor | None, grads: "_Grads") -> Tensor:
    """From the gradient of the probabilities as used to that of the scores (in place)."""
    if state.norm is not None:
        # renormed = masked / norm, masked = probs * m: d_masked = (d_renormed - <d_renormed, renormed>) / norm
        dot = (d_used * state.renormed).sum(-1, keepdim=True)  # n x B x c x 1
        d_used = d_used.sub_(dot).div_(state.norm)
        grads.add_mask(head, d_used, state.probs)
        d_used[..., : band.width].mul_(mask[head])
    return torch.ops.aten._softmax_backward_data.out(d_used, state.probs, -1, d_used.dtype, grad_input=d_used)


class _Grads:
    """Gradient accumulators of one backward pass (key/value windows overlap across chunks)."""

    def __init__(self, band: _Band, qs: Tensor, kv: Tensor, mask: Tensor | None, pers_keys: Tensor | None):
        self.band = band
        self.kv = torch.zeros_like(kv)  # B x T x 2d'
        self.q = torch.empty_like(qs)  # B x M x d'
        self.pos_scores = qs.new_empty(band.batch, band.block, band.heads, band.kept)  # B x M x H x K
        self.mask = None if mask is None else qs.new_zeros(band.heads, band.kept)  # H x K
        has_pers = pers_keys is not None
        self.pers_keys = torch.zeros_like(pers_keys) if has_pers else None  # H x d_h x N
        self.pers_values = qs.new_zeros(band.heads, band.num_pers, band.d_head) if has_pers else None

    def add_outputs(self, head: int, state: _Head, d_out: Tensor, kv: Tensor, pers_values: Tensor | None, rate: float) -> Tensor:
        """Value gradients of one head; returns the gradient of its renormalised probabilities."""
        band = self.band
        used = state.renormed if state.keep is None else _apply_keep(state.renormed, state.keep, rate)
        d_used = torch.empty_like(used)  # n x B x c x (W + N)
        d_pers = None
        if pers_values is not None:
            self.pers_values[head].addmm_(_rows(used[..., band.width :]).t(), _rows(d_out))
            d_pers = d_out @ pers_values[head].t()  # n x B x c x N
        for i, start in enumerate(band.starts):
            band.values(self.kv, head, start).baddbmm_(used[i, ..., : band.width].transpose(1, 2), d_out[i])
            d_ctx = torch.bmm(d_out[i], band.values(kv, head, start).transpose(1, 2))  # B x c x W
            if d_pers is None:
                d_used[i].copy_(d_ctx)
            else:
                torch.cat([d_ctx, d_pers[i]], dim=-1, out=d_used[i])
        return d_used if state.keep is None else _apply_keep(d_used, state.keep, rate)

    def add_mask(self, head: int, d_masked: Tensor, probs: Tensor) -> None:
        """d mask(dist): sum over chunks, batch and queries of d_masked * probs at that distance."""
        width = self.band.width
        per_cell = (d_masked[..., :width] * probs[..., :width]).sum((0, 1))  # c x W
        self.mask[head] += self.band.unskewed(per_cell).sum(0)  # K

    def add_scores(self, head: int, d_scores: Tensor, qs: Tensor, kv: Tensor, pers_keys: Tensor | None) -> None:
        band, width = self.band, self.band.width
        queries = band.head(qs, head)  # B x M x d_h
        d_q = torch.empty(*d_scores.shape[:-1], band.d_head, dtype=qs.dtype, device=qs.device)  # n x B x c x d_h
        for i, start in enumerate(band.starts):
            chunk_queries = queries[:, start : start + band.height]  # B x c x d_h
            band.keys(self.kv, head, start).baddbmm_(d_scores[i, ..., :width].transpose(1, 2), chunk_queries)
            torch.bmm(d_scores[i, ..., :width], band.keys(kv, head, start), out=d_q[i])
            self.pos_scores[:, start : start + band.height, head] = band.unskewed(d_scores[i])  # B x c x K
        if pers_keys is not None:
            d_pers = _rows(d_scores[..., width:])  # (n B c) x N
            _rows(d_q).addmm_(d_pers, pers_keys[head].t())
            self.pers_keys[head].addmm_(_rows(band.to_chunks(queries)).t(), d_pers)
        band.chunked(band.head(self.q, head)).copy_(d_q)

    def queries_and_positions(self, qs: Tensor, pos_rev: Tensor) -> tuple[Tensor, Tensor]:
        """d q (B x M x d') and d pos_rev (d_h x K): the position term is one product for all."""
        dh = self.band.d_head
        d_pos_scores = self.pos_scores.view(-1, self.band.kept)  # (B M H) x K
        self.q.view(-1, dh).addmm_(d_pos_scores, pos_rev.t())
        d_pos = qs.view(-1, dh).t() @ d_pos_scores  # d_h x K
        return self.q.mul_(dh**-0.5), d_pos


def _rows(x: Tensor) -> Tensor:
    """... x m -> (...) x m: a view for contiguous leading dimensions (e.g. a column slice)."""
    return x.reshape(-1, x.shape[-1])


class _ContextProjection(torch.autograd.Function):
    """kv = [history ; x] W^T in one product, without the (wasted) gradient for the detached
    history: B x K x d and B x M x d -> B x (K + M) x n. Under autocast the backward runs
    in the forward's autocast state (as torch.amp.custom_bwd does, for any device), so
    its products take the dtype of the forward's (bf16) and return gradients in the
    inputs' dtypes."""

    @staticmethod
    def forward(ctx, history, x, weight):
        context = torch.cat([history, x], dim=1)  # B x T x d
        ctx.save_for_backward(context, weight)
        ctx.kept = history.shape[1]
        ctx.device_type, ctx.x_dtype = x.device.type, x.dtype
        ctx.autocast = torch.is_autocast_enabled(ctx.device_type)
        ctx.autocast_dtype = torch.get_autocast_dtype(ctx.device_type)
        return torch.nn.functional.linear(context, weight)

    @staticmethod
    def backward(ctx, grad):
        context, weight = ctx.saved_tensors
        with torch.autocast(ctx.device_type, dtype=ctx.autocast_dtype, enabled=ctx.autocast):
            d_weight = _rows(grad).t() @ _rows(context)  # n x d
            d_x = grad[:, ctx.kept :] @ weight  # B x M x d
        return None, d_x.to(ctx.x_dtype), d_weight.to(weight.dtype)


def _fp32(x: Tensor | None) -> Tensor | None:
    """`x` in at least float32 (None stays None)."""
    return None if x is None else x.to(torch.promote_types(x.dtype, torch.float32))


def project_context(history: Tensor, x: Tensor, weight: Tensor) -> Tensor:
    """Keys/values over [cache ; block]: history B x K x d (detached), x B x M x d, weight n x d."""
    return _ContextProjection.apply(history.detach(), x, weight)
