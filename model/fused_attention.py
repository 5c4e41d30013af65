"""Context attention through PyTorch's fused `scaled_dot_product_attention` (the CUDA path).

Same math and signature as `model.attention.context_attention` (the banded CPU path and
the reference): query t of the block sits at key row K + t of [cache ; block] and sees
the K rows t .. t + K - 1 (distances K .. 1, itself excluded), with the score
    q_t . (k + P[:, dist - 1]) / sqrt(d_h)
and, in the joint variant, the persistent slots in the same softmax. Everything that is
not q . k goes into one additive bias per head, B x H x M x (K + M + N):
    the position term q_t . P[:, dist - 1] / sqrt(d_h) on the band,
    log m(dist) of the adaptive-span mask on the band (0 where the mask is 1),
    -inf outside the band, 0 on the persistent slots.
SDPA never keeps the probabilities for backward (its memory-efficient and flash kernels
recompute them), so the per-head probability matrix, its renormalised copy and its
dropout mask of the banded path are gone; the bias is the one B x H x M x (K + M + N)
tensor left, in the compute dtype (bf16 under autocast).

The one difference from the banded path: with an adaptive span the authors renormalise
the masked probabilities by (sum + 1e-8) (`model.attention.SPAN_EPS`); a softmax over
s + log m divides by the sum alone. The two differ by a relative 1e-8 / sum(p m), i.e.
about 1e-8, far below bf16 and fp32 rounding of the scores.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def fused_context_attention(
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

    Arguments and result as `model.attention.context_attention`: q B x M x d' (heads side by
    side), kv B x (K + M) x 2d' (keys then values over [cache ; block]), pos d_h x L,
    span_mask H x K by distance (column dist - 1) or None, persistent (keys H x d_h x N,
    values H x N x d_h) sharing the softmax, dropout on all probabilities. Returns B x M x d'.
    """
    batch, block, width = q.shape
    kept = kv.shape[1] - block
    d_head = width // heads
    qh = q.view(batch, block, heads, d_head).transpose(1, 2)  # B x H x M x d_h
    keys, values = kv.view(batch, kept + block, 2, heads, d_head).permute(2, 0, 3, 1, 4)  # each B x H x T x d_h
    bias = band_bias(qh, pos[:, :kept], span_mask)  # B x H x M x T
    if persistent is not None:
        keys, values, bias = _with_persistent(keys, values, bias, persistent)
    out = F.scaled_dot_product_attention(qh, keys, values, attn_mask=bias.to(qh.dtype),
                                         dropout_p=dropout if training else 0.0, scale=1.0 / math.sqrt(d_head))
    return out.transpose(1, 2).reshape(batch, block, width)


def band_bias(qh: Tensor, pos: Tensor, span_mask: Tensor | None) -> Tensor:
    """The additive bias over the T = K + M key rows: B x H x M x T.

    qh: B x H x M x d_h; pos: d_h x K (column dist - 1); span_mask: H x K or None.
    Row t holds, at key row t + u (u = 0..K-1, distance K - u), the position score
    q_t . P[:, K - 1 - u] / sqrt(d_h) plus log m(K - u), and -inf at every other row.
    """
    batch, heads, block, d_head = qh.shape
    kept = pos.shape[1]
    rev = torch.matmul(qh, pos.flip(-1).to(qh.dtype)) / math.sqrt(d_head)  # B x H x M x K, column u = dist K - u
    if span_mask is not None:
        rev = rev + _log_mask(span_mask.flip(-1)).to(rev.dtype).unsqueeze(1)  # H x 1 x K
    return skew(rev, block + kept)


def skew(rev: Tensor, rows: int) -> Tensor:
    """... x M x K -> ... x M x T (T = rows >= K + M - 1): row t is -inf except rev[t] at columns t .. t + K - 1.

    Padding each row with T + 1 - K slots of -inf and reading the flat buffer with row
    length T instead of T + 1 shifts row t right by t (one copy, no index tensor).
    """
    *lead, block, kept = rev.shape
    padded = torch.cat([rev, rev.new_full((*lead, block, rows + 1 - kept), float("-inf"))], dim=-1)
    return padded.flatten(-2)[..., : block * rows].view(*lead, block, rows)


def _log_mask(mask: Tensor) -> Tensor:
    """log of the soft span mask, -inf where it is 0, with a zero gradient there (not 0 x inf)."""
    return torch.where(mask > 0, mask.clamp_min(torch.finfo(mask.dtype).tiny).log(), float("-inf"))


def _with_persistent(keys: Tensor, values: Tensor, bias: Tensor, persistent: tuple[Tensor, Tensor]):
    """Append the N persistent slots to every row's keys/values, with a zero bias (no position term)."""
    pers_keys, pers_values = persistent  # H x d_h x N, H x N x d_h
    batch = keys.shape[0]
    pk = pers_keys.transpose(1, 2).to(keys.dtype).expand(batch, -1, -1, -1)  # B x H x N x d_h
    pv = pers_values.to(values.dtype).expand(batch, -1, -1, -1)  # B x H x N x d_h
    zeros = bias.new_zeros(*bias.shape[:-1], pk.shape[2])  # B x H x M x N
    return torch.cat([keys, pk], dim=2), torch.cat([values, pv], dim=2), torch.cat([bias, zeros], dim=-1)
