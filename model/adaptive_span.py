"""Adaptive attention span: one learned span z*L per head, a soft mask, trimming.

Symbols: B batch, M block, L attention span (attn_span), K kept span (keys
actually attended after trimming, K <= L), C cache length, H heads (here: the
heads that attend to the context), R ramp length, s the needed span.

The mask multiplies the context attention probabilities after the softmax,
computed in the authors' order of operations (their AdaptiveMask, with the
constant template 1 - dist):
    m(dist) = clamp(((1 - dist) + z*L) / R + 1, 0, 1),   dist = 1..L
so m is 1 up to distance z*L + 1, falls linearly to 0 over R positions, and is
exactly 0 beyond distance z*L + R + 1. Keys past that point contribute nothing
(up to the 1e-8 of the joint renormalisation), which is what makes trimming them
and shrinking the cache output-preserving.

Trimming and cache length follow the authors' `get_trim_len` / `get_cache_size`:
    s       = min(L, ceil(L * max_h z_h) + R)        (their get_current_max_size)
    trimmed = 64 * floor(min(L - 1, L - s) / 64)     oldest keys dropped (whole groups of 64,
                                                     counted from the far end of the span)
    K       = L - trimmed
    C       = min(L, K + 64)                         cached layer inputs for the next block
For L not a multiple of 64 this keeps K = L - 64*floor((L - s)/64), not round_up(s, 64).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from model.config import AdaptiveSpanConfig

TRIM_GRANULARITY = 64
"""Keys are dropped in whole groups of this many (the authors' value): re-sizing buffers every
step would defeat the allocator."""
CACHE_MARGIN = 64
"""Extra cached positions beyond the kept span, so a span that grows in the next update still
finds real layer inputs (as the authors' code does) instead of the zero padding."""


class AdaptiveSpan(nn.Module):
    """Learned per-head span; `z` is stored H x 1 x 1 as in the authors' code
    (their `adaptive_span._mask.current_val`)."""

    def __init__(self, cfg: AdaptiveSpanConfig, num_heads: int, attn_span: int):
        super().__init__()
        self.max_span = attn_span
        self.ramp = cfg.ramp
        self.loss_coef = cfg.loss_coef
        self.trim_memory = cfg.trim_memory
        self.z = nn.Parameter(torch.full((num_heads, 1, 1), float(cfg.init)))

    def mask(self, kept: int) -> Tensor:
        """Soft mask per head for distances 1..kept (column dist-1); H x K, differentiable in z."""
        one_minus_dist = -torch.arange(kept, device=self.z.device, dtype=self.z.dtype)  # K: 1 - dist
        z = self.z.view(-1, 1)  # H x 1
        return ((one_minus_dist + z * self.max_span) / self.ramp + 1).clamp(0, 1)  # H x K

    def needed_span(self, z_max: float | None = None) -> int:
        """s: the largest distance any head can still see, ramp included, in [0, L].

        `z_max` is max_h z_h as a Python float when the caller has read it already
        (`TransformerLM.decide_spans` reads every layer's at once); without it, it is read
        here: a host sync, which is why the training step decides the spans once per update."""
        if z_max is None:
            z_max = self.z.detach().max().item()
        reach = math.ceil(z_max * self.max_span) + self.ramp
        return max(0, min(self.max_span, reach))

    def trim_length(self, z_max: float | None = None) -> int:
        """Oldest keys dropped: whole groups of 64 that lie beyond s (0 without trimming)."""
        if not self.trim_memory:
            return 0
        droppable = min(self.max_span - 1, self.max_span - self.needed_span(z_max))
        return math.floor(droppable / TRIM_GRANULARITY) * TRIM_GRANULARITY

    def kept_span(self, z_max: float | None = None) -> int:
        """K = L - trimmed: the keys each query sees (`z_max`: see needed_span)."""
        return self.max_span - self.trim_length(z_max)

    def cache_size(self, z_max: float | None = None) -> int:
        """C: cached layer inputs to keep for the next block (the kept span plus a margin of 64)."""
        if not self.trim_memory:
            return self.max_span
        return min(self.max_span, self.kept_span(z_max) + CACHE_MARGIN)

    def loss(self) -> Tensor:
        """coef * L * mean(z): the span penalty of this layer (added to the training loss only)."""
        return self.loss_coef * self.max_span * self.z.mean()

    @torch.no_grad()
    def clamp_(self) -> None:
        self.z.clamp_(0.0, 1.0)

    def spans(self) -> Tensor:
        """Current span of each head in positions, ramp included, within [0, L]; H."""
        return (self.z.detach().view(-1) * self.max_span + self.ramp).clamp(0, self.max_span)
