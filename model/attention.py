"""Banded context attention with relative positions (the sequential transformer's core).

Symbols: B batch, M block (queries), K kept span (keys each query sees; K = L
unless adaptive-span trimming is on), L attention span, T = K + M key rows over
[cache ; block], H heads attending to the context, d_h head width, d' = H d_h,
G = H B (head, batch element) pairs, N persistent slots, c queries per chunk,
n = M / c chunks, W = K + c key rows in a chunk's window, R = W + N scores per query.

Query t of the block (t = 0..M-1) sits at key row K + t of [cache ; block] and
attends to the K rows t .. t + K - 1, i.e. distances dist = K .. 1; itself and
later rows are excluded. Its score for the key at distance dist is
    q_t . (k + P[:, dist - 1]) / sqrt(d_h)
and, in the joint variant, q_t . Pk_n / sqrt(d_h) for persistent slot n, all in
one softmax. With an adaptive span the context probabilities are multiplied by
the soft mask m(dist) and all probabilities renormalised by their sum + 1e-8.

Layout: queries, keys and values are copied once each into head-major tensors
(group g = h B + b), so that every product below is one batched product over all
heads and batch elements (G matrices) instead of a loop over heads. The keys and
values hold the T rows of [cache ; block] followed by the N persistent slots:
G x (T + N) x d_h.

Cost: queries are processed in chunks of c rows. A chunk's scores are G x c x R:
its window of W contiguous key rows, then the persistent slots, so the work is
O(M (K + c + N)) per head, never O(M (K + M)). A window's last row is outside
every query's band (the chunk's last query sees up to the row before it), but it
makes the last window end at row T, where the persistent rows begin, so the last
chunk's scores are one product; an earlier chunk's are two, into strided outputs.
The position term is one product for all of a chunk's queries, added in place on
the band through a diagonal view of the scores (row stride R + 1 puts distance
K - u of query row r at window column r + u); scores off the band are set to -inf.
Forward and backward are written by hand (_BandedAttention) so that the products
write into their outputs and the overlapping windows accumulate their gradients
in place. Large buffers are recycled between calls (_Recycled).
"""
from __future__ import annotations

import functools
import itertools
import math
import threading
import weakref

import torch
from torch import Tensor

SPAN_EPS = 1e-8
"""Added to the sum before the adaptive-span renormalisation (as the authors do)."""
TARGET_WASTE = 0.5
"""Extra (out-of-band) scores per query that a chunk may compute, as a fraction of the
useful ones: c / (K + N). Splitting the block costs more than the band saves well before
that (results/benchmarks/README.md: 64-query chunks lose to one 128-query chunk at span
256, N 256, where one chunk computes 25% extra scores)."""
PROJECTION = "K/V projection"
"""The profiler's name for the keys/values product over [cache ; block] and its gradient."""
MIN_CHUNK = 32
"""Below this height, the per-chunk products lose more to overhead than the band saves."""


def chunk_height(block: int, kept: int, slots: int, device: torch.device) -> int:
    """Queries per chunk, a divisor of the block: the tallest whose window overhead
    c / (K + N) is within TARGET_WASTE (one chunk makes every product one contiguous batched
    product; more chunks split them and accumulate overlapping windows), else the shortest
    not under MIN_CHUNK. On GPU the whole block (fewer, larger launches)."""
    if device.type != "cpu":
        return block
    allowed = [c for c in range(min(MIN_CHUNK, block), block + 1) if block % c == 0]
    within = [c for c in allowed if c <= TARGET_WASTE * (kept + slots)]
    return max(within) if within else min(allowed)


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
    return _banded(q, None, kv, None, pos, heads, span_mask, persistent, dropout, training)


def projected_context_attention(
    q: Tensor,
    history: Tensor,
    x: Tensor,
    weight: Tensor,
    pos: Tensor,
    heads: int,
    span_mask: Tensor | None = None,
    persistent: tuple[Tensor, Tensor] | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> Tensor:
    """`context_attention` with kv = project_context(history, x, weight) computed inside it:
    history B x K x d (detached: no gradient), x B x M x d, weight 2d' x d (keys' rows, then
    values'). The same math. Why: the keys/values (B x (K + M) x 2d') and their gradient are
    then recycled buffers of the call (_Recycled), not fresh tensors per layer and step; at
    span 2048 they are the step's largest (35 MB each at batch 8), and fresh ones were faulted
    in page by page every step (results/benchmarks/README.md). History and x are projected
    apart (no [history ; x] copy), so d x is the block part's gradient times the weight,
    without a strided copy. (The keys/values are still copied to and from the head-major
    layout.) Under autocast the projection's products run in the autocast dtype, as
    project_context's do. Returns B x M x d'."""
    return _banded(q, history.detach(), x, weight, pos, heads, span_mask, persistent, dropout, training)


def _banded(q, history, x, weight, pos, heads, span_mask, persistent, dropout, training) -> Tensor:
    """The banded Function on [history ; x] (projected by `weight` if given), in fp32."""
    device = q.device.type
    if torch.is_autocast_enabled(device):
        project_dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device, enabled=False):
            pers = None if persistent is None else (_fp32(persistent[0]), _fp32(persistent[1]))
            rows = x if weight is not None else _fp32(x)
            return _banded_fp32(_fp32(q), history, rows, weight, _fp32(pos), heads, _fp32(span_mask), pers, dropout, training, project_dtype)
    return _banded_fp32(q, history, x, weight, pos, heads, span_mask, persistent, dropout, training, None)


def _banded_fp32(q, history, x, weight, pos, heads, span_mask, persistent, dropout, training, project_dtype) -> Tensor:
    """`_banded` once its inputs are fp32: positions and mask reversed into a window's key order."""
    kept = (x.shape[1] if history is None else history.shape[1] + x.shape[1]) - q.shape[1]
    pos_rev = pos[:, :kept].flip(-1)  # d_h x K: column u = distance K - u, the order of a window's keys
    mask_rev = None if span_mask is None else span_mask.flip(-1)  # H x K, same order
    keys, values = persistent if persistent is not None else (None, None)
    return _BandedAttention.apply(q, history, x, weight, project_dtype, pos_rev, mask_rev, keys, values, heads,
                                  dropout if training else 0.0)


class _Recycled:
    """Large buffers recycled within the process. Every step allocates and frees the same big
    tensors (head-major keys/values, scores, their gradients), and glibc hands blocks over
    32 MB back to the OS on free, so a fresh one costs a page fault per 4 KB page: about half
    a millisecond per MB on a VM (recycling made span-2048 steps 1.3x faster there). A buffer
    is given back when nothing can read it any more: at the end of the call that used it, or
    when the autograd context that saved it is released (after backward; at once without
    gradient)."""

    def __init__(self, keep: int):
        self._free: list[Tensor] = []
        self._keep = keep  # free buffers kept at most (the newest)
        self._lock = threading.Lock()

    def take(self, like: Tensor, *shape: int) -> Tensor:
        """An uninitialised tensor of `shape`, `like`'s dtype and device: the smallest free
        buffer that holds it, or a new one."""
        numel = math.prod(shape)
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if b.numel() >= numel and b.dtype == like.dtype and b.device == like.device]
            buf = self._free.pop(min(fits, key=lambda i: self._free[i].numel())) if fits else like.new_empty(numel)
        return buf[:numel].view(shape)

    def give(self, *tensors: Tensor) -> None:
        """Give back tensors from `take` that nothing will read again."""
        with self._lock:
            self._free.extend(t._base for t in tensors)
            del self._free[: -self._keep]


_BUFFERS = _Recycled(keep=64)  # about 4 live per layer until its backward: 16 layers kept warm


class _Band:
    """Shapes and chunking of one call, the head-major copies in and out, and the views that
    place a chunk's window, its persistent slots and its distances."""

    def __init__(self, q: Tensor, rows: int, heads: int, pers_keys: Tensor | None):
        self.batch, self.block, width = q.shape
        self.heads, self.d_head = heads, width // heads
        self.groups = heads * self.batch  # G
        self.rows = rows  # T
        self.kept = self.rows - self.block  # K
        self.num_pers = 0 if pers_keys is None else pers_keys.shape[-1]
        self.height = chunk_height(self.block, self.kept, self.num_pers, q.device)  # c
        self.chunks = self.block // self.height  # n
        self.width = self.kept + self.height  # W
        self.row = self.width + self.num_pers  # R

    def to_chunks(self, x: Tensor, out: Tensor, scale: float = 1.0) -> Tensor:
        """B x M x d' -> `out`, n x G x c x d_h, head-major, times `scale` (one copy)."""
        parts = x.reshape(self.batch, self.chunks, self.height, self.heads, self.d_head).permute(1, 3, 0, 2, 4)
        torch.mul(parts, scale, out=out.view(parts.shape))  # n x H x B x c x d_h
        return out

    def from_chunks(self, x: Tensor, scale: float = 1.0) -> Tensor:
        """n x G x c x d_h -> B x M x d', times `scale` (one copy): the inverse of `to_chunks`."""
        parts = x.view(self.chunks, self.heads, self.batch, self.height, self.d_head).permute(2, 0, 3, 1, 4)
        out = torch.mul(parts, scale, out=x.new_empty(parts.shape))  # B x n x c x H x d_h
        return out.view(self.batch, self.block, -1)

    def split_context(self, parts: list[tuple[slice, Tensor]], pers_keys: Tensor | None, pers_values: Tensor | None,
                      out: Tensor) -> Tensor:
        """Keys and values into `out`, 2 x G x (T + N) x d_h: each (rows, kv B x rows x 2d') part
        of the T rows, then the persistent slots (the same for every batch element)."""
        view = out.view(2, self.heads, self.batch, self.rows + self.num_pers, self.d_head)
        for rows, kv in parts:
            view[..., rows, :] = kv.reshape(self.batch, -1, 2, self.heads, self.d_head).permute(2, 3, 0, 1, 4)
        if pers_keys is not None:
            view[0, ..., self.rows :, :] = pers_keys.transpose(1, 2).unsqueeze(1)  # H x 1 x N x d_h
            view[1, ..., self.rows :, :] = pers_values.unsqueeze(1)
        return out

    def merge_context(self, grad: Tensor, parts: list[tuple[slice, Tensor]]) -> tuple[Tensor | None, Tensor | None]:
        """Gradient of `split_context`'s output -> d kv of each (rows, out B x rows x 2d') part,
        written into its `out`; returns (d keys H x d_h x N, d values H x N x d_h), the persistent
        slots' gradients summed over the batch."""
        grad = grad.view(2, self.heads, self.batch, self.rows + self.num_pers, self.d_head)
        for rows, out in parts:
            out.view(self.batch, -1, 2, self.heads, self.d_head).copy_(grad[..., rows, :].permute(2, 3, 0, 1, 4))
        if self.num_pers == 0:
            return None, None
        d_pers = grad[..., self.rows :, :].sum(2)  # 2 x H x N x d_h
        return d_pers[0].transpose(1, 2), d_pers[1]

    def kv_parts(self, rows: list[Tensor], width: int, like: Tensor) -> list[tuple[slice, Tensor]]:
        """(key rows, recycled B x rows x `width` buffer of `like`'s dtype) for each of
        [history ; x]'s parts."""
        bounds = [0, *itertools.accumulate(part.shape[1] for part in rows)]
        return [(slice(a, b), _BUFFERS.take(like, self.batch, b - a, width)) for a, b in zip(bounds, bounds[1:])]

    def parts(self, chunk: int) -> list[tuple[slice, slice]]:
        """(columns of the chunk's scores, the key/value rows they read): its window, then the
        persistent slots; one part when they are adjacent (the last chunk, or N = 0)."""
        start = chunk * self.height
        if start + self.width == self.rows or self.num_pers == 0:
            return [(slice(None), slice(start, start + self.row))]
        return [(slice(0, self.width), slice(start, start + self.width)), (slice(self.width, None), slice(self.rows, None))]

    def fresh_rows(self, chunk: int) -> slice:
        """Key rows that the chunk's window reaches first (all of its window for chunk 0)."""
        end = chunk * self.height + self.width
        return slice(0 if chunk == 0 else end - self.height, end)

    def distances(self, scores: Tensor) -> Tensor:
        """A chunk's G x c x R (unit column stride) -> G x c x K: column u of row r is distance
        K - u, at window column r + u (a view)."""
        lead, row_stride, _ = scores.stride()
        return scores.as_strided((self.groups, self.height, self.kept), (lead, row_stride + 1, 1), scores.storage_offset())

    def by_head(self, x: Tensor) -> Tensor:
        """G x ... -> H x B x ... (a view)."""
        return x.view(self.heads, self.batch, *x.shape[1:])

    def off_band(self, device: torch.device) -> Tensor:
        """A chunk's c x R scores before its products are added: -inf at the window columns
        outside the band, 0 elsewhere (cached per shape)."""
        return _off_band(self.height, self.width, self.kept, self.row, device)


@functools.lru_cache(maxsize=32)
def _off_band(height: int, width: int, kept: int, row: int, device: torch.device) -> Tensor:
    """`_Band.off_band`: c x R, -inf where window column col < r or col >= r + K for query row r."""
    r = torch.arange(height, device=device).unsqueeze(1)  # c x 1
    col = torch.arange(row, device=device)  # R
    outside = (col < width) & ((col < r) | (col >= r + kept))
    return torch.zeros(height, row, device=device).masked_fill_(outside, float("-inf"))


class _Chunk:
    """What one chunk's forward pass keeps for the backward pass (G x c x R each)."""

    def __init__(self, probs: Tensor, renormed: Tensor, norm: Tensor | None, keep: Tensor | None):
        self.probs = probs  # the softmax output
        self.renormed = renormed  # after the span mask and renormalisation (or `probs`)
        self.norm = norm  # G x c x 1: renormalisation sum + eps (adaptive span), or None
        self.keep = keep  # dropout's keep mask, or None


class _BandedAttention(torch.autograd.Function):
    """`context_attention` on reversed positions/mask, with a hand-written backward; with a
    weight, the keys/values are first projected from [history ; x] (projected_context_attention)."""

    @staticmethod
    def forward(ctx, q, history, x, weight, project_dtype, pos_rev, mask_rev, pers_keys, pers_values, heads, dropout):
        # kv B x T x 2d' (context_attention), or the keys/values of history and of x, projected apart
        # (two products, no [history ; x] copy; d x is then the block part's gradient times the weight)
        band = _Band(q, x.shape[1] + (0 if history is None else history.shape[1]), heads, pers_keys)
        qs = band.to_chunks(q, _BUFFERS.take(q, band.chunks, band.groups, band.height, band.d_head), band.d_head**-0.5)
        parts = [(slice(0, band.rows), x)] if weight is None else _project([history, x], weight, project_dtype, band)
        context = band.split_context(parts, pers_keys, pers_values, _BUFFERS.take(q, 2, band.groups, band.rows + band.num_pers, band.d_head))
        if weight is not None:
            _BUFFERS.give(*(kv for _, kv in parts))
        probs = _BUFFERS.take(q, band.chunks, band.groups, band.height, band.row)  # n x G x c x R
        out = _BUFFERS.take(q, *qs.shape)  # n x G x c x d_h
        off_band, saved = band.off_band(q.device), []
        for i in range(band.chunks):
            _scores(band, i, qs[i], context[0], pos_rev, off_band, probs[i])
            torch.ops.aten._softmax.out(probs[i], -1, False, out=probs[i])  # in place
            renormed, norm = _renormalise(band, probs[i], mask_rev)
            keep, used = _drop(renormed, dropout)
            _output(band, i, used, context[1], out[i])
            saved.append(_Chunk(probs[i], renormed, norm, keep))
        ctx.band, ctx.saved, ctx.dropout, ctx.qs, ctx.context = band, saved, dropout, qs, context
        ctx.project_dtype, ctx.x_dtype = project_dtype, x.dtype
        ctx.save_for_backward(pos_rev, mask_rev, *((history, x, weight) if weight is not None else ()))
        weakref.finalize(ctx, _BUFFERS.give, qs, context, probs)
        result = band.from_chunks(out)
        _BUFFERS.give(out)
        return result

    @staticmethod
    def backward(ctx, grad_out):
        band, qs, context = ctx.band, ctx.qs, ctx.context
        pos_rev, mask_rev, *projection = ctx.saved_tensors  # (history, x, weight) if it projected
        d_out = band.to_chunks(grad_out, _BUFFERS.take(qs, *qs.shape))  # n x G x c x d_h
        grads = _Grads(band, qs, mask_rev)
        for i, state in enumerate(ctx.saved):
            d_used = grads.add_values(i, state, d_out[i], context[1], ctx.dropout)  # G x c x R
            d_scores = _scores_grad(band, state, d_used, mask_rev, grads)
            grads.add_scores(i, d_scores, qs[i], context[0], pos_rev)
        d_q = band.from_chunks(grads.q, band.d_head**-0.5)
        width = 2 * band.heads * band.d_head  # d kv: the call's own buffers if it projected
        parts = band.kv_parts(projection[:2], width, qs) if projection else [(slice(0, band.rows), qs.new_empty(band.batch, band.rows, width))]
        d_pers_keys, d_pers_values = band.merge_context(grads.context, parts)
        _BUFFERS.give(d_out, grads.context, grads.q, grads.d_used, grads.d_pos)
        d_x, d_weight = parts[-1][1], None
        if projection:
            d_x, d_weight = _project_grad([d_kv for _, d_kv in parts], *projection, ctx.project_dtype, ctx.x_dtype)
            _BUFFERS.give(*(d_kv for _, d_kv in parts))
        return d_q, None, d_x, d_weight, None, grads.pos, grads.mask, d_pers_keys, d_pers_values, None, None


def _project(rows: list[Tensor], weight: Tensor, dtype: torch.dtype | None, band: _Band) -> list[tuple[slice, Tensor]]:
    """Keys/values of [history ; x] (B x K x d, B x M x d) by weight (2d' x d): one product per
    part, each into a recycled buffer, in `dtype` if given; returns `_Band.kv_parts`."""
    with torch.profiler.record_function(PROJECTION):
        if dtype is not None:
            rows, weight = [part.to(dtype) for part in rows], weight.to(dtype)
        parts = band.kv_parts(rows, weight.shape[0], rows[0])
        for part, (_, out) in zip(rows, parts):
            torch.mm(_rows(part), weight.t(), out=_rows(out))
        return parts


def _project_grad(d_kv: list[Tensor], history: Tensor, x: Tensor, weight: Tensor, dtype: torch.dtype | None,
                  x_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(d x B x M x d, d weight 2d' x d) of `_project` from the parts' d kv (B x K x 2d',
    B x M x 2d'); the detached history gets none."""
    weight_dtype = weight.dtype
    with torch.profiler.record_function(PROJECTION):
        if dtype is None:
            d_weight = _rows(d_kv[0]).t() @ _rows(history)  # 2d' x d
            d_weight.addmm_(_rows(d_kv[1]).t(), _rows(x))
        else:  # one product, rounded to `dtype` once, as project_context's backward
            d_kv, weight = [d.to(dtype) for d in d_kv], weight.to(dtype)
            d_weight = _rows(torch.cat(d_kv, dim=1)).t() @ _rows(torch.cat([history, x], dim=1).to(dtype))
        d_x = d_kv[1] @ weight  # B x M x d
        return d_x.to(x_dtype), d_weight.to(weight_dtype)


def _scores(band: _Band, chunk: int, queries: Tensor, keys: Tensor, pos_rev: Tensor, off_band: Tensor, out: Tensor) -> None:
    """Chunk scores into `out` (G x c x R): its window's keys and the persistent slots, plus
    the position term on the band, -inf off the band."""
    # The products add onto the -inf/0 pattern (beta = 1): one pass over the scores instead of
    # a zeroing pass inside the GEMM (beta = 0) and then an index fill of the -inf cells.
    out.copy_(off_band)
    for cols, rows in band.parts(chunk):
        out[..., cols].baddbmm_(queries, keys[:, rows].transpose(1, 2))
    # One product for all groups (the band's rows have no common stride), then added in place.
    pos_scores = torch.mm(queries.view(-1, band.d_head), pos_rev, out=_BUFFERS.take(out, band.groups * band.height, band.kept))
    band.distances(out).add_(pos_scores.view(band.groups, band.height, band.kept))
    _BUFFERS.give(pos_scores)


def _renormalise(band: _Band, probs: Tensor, mask_rev: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Adaptive span: context probabilities times the mask by distance, then all of them over
    their sum + eps (the probabilities off the band are 0 already)."""
    if mask_rev is None:
        return probs, None
    out = probs.clone()  # G x c x R
    band.by_head(band.distances(out)).mul_(mask_rev[:, None, None])  # H x B x c x K
    norm = out.sum(-1, keepdim=True).add_(SPAN_EPS)  # G x c x 1
    return out.div_(norm), norm


def _drop(probs: Tensor, rate: float) -> tuple[Tensor | None, Tensor]:
    """Dropout on probabilities: (keep mask or None, the probabilities as used)."""
    if rate == 0.0:
        return None, probs
    keep = torch.empty_like(probs, dtype=torch.bool).bernoulli_(1.0 - rate)
    return keep, _apply_keep(probs, keep, rate)


def _apply_keep(x: Tensor, keep: Tensor, rate: float) -> Tensor:
    return x.mul(keep).mul_(1.0 / (1.0 - rate))


def _output(band: _Band, chunk: int, used: Tensor, values: Tensor, out: Tensor) -> None:
    """Probabilities as used (G x c x R) times the values of the window and the persistent
    slots, into `out` (G x c x d_h)."""
    for k, (cols, rows) in enumerate(band.parts(chunk)):
        out.baddbmm_(used[..., cols], values[:, rows], beta=0.0 if k == 0 else 1.0)


def _scores_grad(band: _Band, state: _Chunk, d_used: Tensor, mask_rev: Tensor | None, grads: "_Grads") -> Tensor:
    """From the gradient of the probabilities as used to that of the scores (in place)."""
    if state.norm is not None:
        # renormed = masked / norm, masked = probs * m: d_masked = (d_renormed - <d_renormed, renormed>) / norm
        dot = (d_used * state.renormed).sum(-1, keepdim=True)  # G x c x 1
        d_used = d_used.sub_(dot).div_(state.norm)
        grads.add_mask(d_used, state.probs)
        band.by_head(band.distances(d_used)).mul_(mask_rev[:, None, None])
    return torch.ops.aten._softmax_backward_data.out(d_used, state.probs, -1, d_used.dtype, grad_input=d_used)


class _Grads:
    """Gradient accumulators of one backward pass (key/value windows overlap across chunks)."""

    def __init__(self, band: _Band, qs: Tensor, mask_rev: Tensor | None):
        self.band = band
        self.context = _BUFFERS.take(qs, 2, band.groups, band.rows + band.num_pers, band.d_head)  # as split_context
        self.q = _BUFFERS.take(qs, *qs.shape)  # n x G x c x d_h
        self.d_used = _BUFFERS.take(qs, band.groups, band.height, band.row)  # one chunk's, G x c x R
        self.d_pos = _BUFFERS.take(qs, band.groups * band.height, band.kept)  # one chunk's position scores
        self.pos = qs.new_zeros(band.d_head, band.kept)  # d_h x K
        self.mask = None if mask_rev is None else torch.zeros_like(mask_rev)  # H x K

    def _accumulate(self, which: int, chunk: int, a: Tensor, b: Tensor) -> None:
        """context[which] rows of each part += a[..., cols]^T b; the chunk's fresh rows start from 0."""
        beta = 0.0 if chunk == 0 else 1.0
        if chunk > 0:
            self.context[which][:, self.band.fresh_rows(chunk)].zero_()
        for cols, rows in self.band.parts(chunk):
            self.context[which][:, rows].baddbmm_(a[..., cols].transpose(1, 2), b, beta=beta)

    def add_values(self, chunk: int, state: _Chunk, d_out: Tensor, values: Tensor, rate: float) -> Tensor:
        """Value gradients of one chunk; returns the gradient of its probabilities as used."""
        used = state.renormed if state.keep is None else _apply_keep(state.renormed, state.keep, rate)
        self._accumulate(1, chunk, used, d_out)
        for cols, rows in self.band.parts(chunk):
            torch.bmm(d_out, values[:, rows].transpose(1, 2), out=self.d_used[..., cols])
        return self.d_used if state.keep is None else _apply_keep(self.d_used, state.keep, rate)

    def add_mask(self, d_masked: Tensor, probs: Tensor) -> None:
        """d mask(dist): sum over batch and queries of d_masked * probs at that distance."""
        band = self.band
        per_cell = band.distances(d_masked) * band.distances(probs)  # G x c x K
        self.mask += band.by_head(per_cell).sum((1, 2))

    def add_scores(self, chunk: int, d_scores: Tensor, queries: Tensor, keys: Tensor, pos_rev: Tensor) -> None:
        """Key, query and position gradients of one chunk from its score gradients (G x c x R)."""
        band, d_q = self.band, self.q[chunk]
        self._accumulate(0, chunk, d_scores, queries)
        for k, (cols, rows) in enumerate(band.parts(chunk)):
            d_q.baddbmm_(d_scores[..., cols], keys[:, rows], beta=0.0 if k == 0 else 1.0)
        self.d_pos.view(band.groups, band.height, band.kept).copy_(band.distances(d_scores))
        d_pos_scores = self.d_pos  # (G c) x K: one product each for queries and positions
        d_q.view(-1, band.d_head).addmm_(d_pos_scores, pos_rev.t())
        self.pos.addmm_(queries.view(-1, band.d_head).t(), d_pos_scores)


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
