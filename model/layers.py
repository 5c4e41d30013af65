"""The seven layer variants of DESIGN §2, built from shared sublayers.

Symbols: B batch, M block, L attention span, K kept span (<= L, adaptive-span
trimming), C cache length, d model width, H heads, d_h = d / H, N persistent
vectors, F FFN width.

Every layer is post-norm, x = LN(x + sublayer(x)):
    transformer     attention (context)         then FFN
    all_attention   attention (context + persistent, one joint softmax per head)
    attention_only  attention (context)
    attn_split      attention (context softmax + persistent softmax, outputs added per head)
    head_split      attention (first H/2 heads context only, last H/2 persistent only)
    single_head     attention (context per head + one d-dim persistent attention before W_o)
    ffn_attn        attention (context)         then persistent attention (an FFN whose ReLU is a softmax)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.adaptive_span import AdaptiveSpan
from model.attention import project_context, projected_context_attention
from model.config import ModelConfig
from model.fused_attention import fused_context_attention
from model.persistent import PersistentMemory

# The banded attention's hand-written autograd Function writes through strided views that
# torch.compile cannot trace: under `train.compile` it runs eagerly between the compiled
# graphs (the fused path, the one meant for GPUs, compiles whole).
_banded_attention = torch.compiler.disable(projected_context_attention)

# How each variant's attention sublayer uses its persistent vectors.
PERSISTENT_MODE = {
    "all_attention": "joint",
    "attn_split": "split",
    "head_split": "heads",
    "single_head": "single",
}


class SelfAttention(nn.Module):
    """Multi-head attention over [cache ; block] with relative positions, the layer's
    persistent memory per its variant, and the optional adaptive span."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, heads = cfg.d_model, cfg.num_heads
        self.mode = PERSISTENT_MODE.get(cfg.variant)
        self.heads, self.d_head, self.span_len = heads, cfg.head_dim, cfg.attn_span
        # head_split: only the first H/2 heads read the context, so only they have keys/values
        self.context_heads = heads // 2 if self.mode == "heads" else heads
        d_context = self.context_heads * self.d_head
        self.w_q = nn.Linear(d, d, bias=False)
        self.w_k = nn.Linear(d, d_context, bias=False)
        self.w_v = nn.Linear(d, d_context, bias=False)
        self.w_o = nn.Linear(d, d, bias=False)
        self.dropout = cfg.dropout
        self.config = cfg
        self.span = AdaptiveSpan(cfg.adaptive_span, self.context_heads, cfg.attn_span) if cfg.adaptive_span.enabled else None
        self.persistent = self._make_persistent(cfg)

    def _make_persistent(self, cfg: ModelConfig) -> PersistentMemory | None:
        if self.mode is None:
            return None
        if self.mode == "single":
            return PersistentMemory(cfg.num_persistent, cfg.d_model, groups=None)
        return PersistentMemory(cfg.num_persistent, self.d_head, groups=self.heads - self.context_heads if self.mode == "heads" else self.heads)

    def kept_span(self) -> int:
        return self.span.kept_span() if self.span is not None else self.span_len

    def cache_size(self) -> int:
        return self.span.cache_size() if self.span is not None else self.span_len

    def forward(self, x: Tensor, cache: Tensor, pos: Tensor, span: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """x: B x M x d, cache: B x C x d (earlier layer inputs), pos: d_h x L, span: (K, C') as
        decided for the current z (TransformerLM.decide_spans), else read here.
        Returns the sublayer output B x M x d and the next cache B x C' x d (detached)."""
        kept, cache_size = span if span is not None else (self.kept_span(), self.cache_size())
        history = left_fit(cache, kept)  # B x K x d
        next_cache = last_positions(cache, x.detach(), cache_size)  # B x C' x d
        q = self.w_q(x)  # B x M x d
        span_mask = self.span.mask(kept) if self.span is not None else None  # H' x K
        return self.w_o(self._attend(q, history, x, pos, span_mask)), next_cache

    def _attend(self, q: Tensor, history: Tensor, x: Tensor, pos: Tensor, span_mask: Tensor | None) -> Tensor:
        """Context attention over [history ; x] combined with the persistent memory as the
        variant says; B x M x d."""
        joint = self.persistent.scaled() if self.mode == "joint" else None
        d_context = self.context_heads * self.d_head
        w_kv = torch.cat([self.w_k.weight, self.w_v.weight])  # 2d' x d: keys, then values
        args = (pos, self.context_heads, span_mask, joint, self.dropout, self.training)
        if self._fused(q):
            ctx = fused_context_attention(q[..., :d_context], project_context(history, x, w_kv), *args)
        else:
            ctx = _banded_attention(q[..., :d_context], history, x, w_kv, *args)
        if self.mode in (None, "joint"):
            return ctx  # B x M x d
        if self.mode == "heads":  # context heads first, then the persistent-only heads
            return torch.cat([ctx, self.persistent.attend(q[..., d_context:], self.dropout, self.training)], dim=-1)
        # split: per head, added to the context output; single: one d-dim attention, added before W_o
        return ctx + self.persistent.attend(q, self.dropout, self.training)

    def _fused(self, q: Tensor) -> bool:
        return self.config.attention_on(q.device.type) == "fused"


class FeedForward(nn.Module):
    """FFN(x) = W2 drop(relu(W1 x + b1)) + b2 (transformer variant)."""

    def __init__(self, d: int, width: int, dropout: float):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, width), nn.Linear(width, d)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.dropout(F.relu(self.fc1(x)), self.dropout, self.training))


class PersistentFeedForward(nn.Module):
    """ffn_attn's second sublayer: single-head softmax attention of x itself over N
    d-dimensional persistent keys/values. No query/output projections: it is an FFN
    of width N whose ReLU is a softmax (keys ~ W1, values ~ W2, 2dN parameters)."""

    def __init__(self, d: int, num: int, dropout: float):
        super().__init__()
        self.persistent = PersistentMemory(num, d, groups=None)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        return self.persistent.attend(x, self.dropout, self.training)


class Layer(nn.Module):
    """One post-norm layer of the configured variant."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.ffn = _make_ffn(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model) if self.ffn is not None else None

    def forward(self, x: Tensor, cache: Tensor, pos: Tensor, span: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """x: B x M x d, cache: B x C x d -> (B x M x d, next cache B x C' x d); span: SelfAttention.forward."""
        out, next_cache = self.attn(x, cache, pos, span)
        x = self.norm1(x + out)
        if self.ffn is not None:
            x = self.norm2(x + self.ffn(x))
        return x, next_cache


def _make_ffn(cfg: ModelConfig) -> nn.Module | None:
    if cfg.variant == "transformer":
        return FeedForward(cfg.d_model, cfg.ffn_size, cfg.dropout)
    if cfg.variant == "ffn_attn":
        return PersistentFeedForward(cfg.d_model, cfg.num_persistent, cfg.dropout)
    return None


def left_fit(cache: Tensor, length: int) -> Tensor:
    """The last `length` positions of a B x C x d cache, zeros on the left if C < length (a cache
    shrunk by adaptive-span trimming before the spans grew): B x length x d."""
    batch, have, width = cache.shape
    if have >= length:
        return cache[:, have - length :]
    return torch.cat([cache.new_zeros(batch, length - have, width), cache], dim=1)


def last_positions(cache: Tensor, x: Tensor, length: int) -> Tensor:
    """A new B x length x d tensor: the last `length` positions of [cache ; x]."""
    block = x.shape[1]
    return torch.cat([left_fit(cache, max(0, length - block)), x[:, max(0, block - length) :]], dim=1)
