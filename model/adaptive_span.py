"""Adaptive attention span: one learned span z*L per head, a soft mask, trimming.

Symbols: B batch, M block, L attention span (attn_span), K kept span (keys
actually attended after trimming, K <= L), C cache length, H heads (here: the
heads that attend to the context), R ramp length.

The mask multiplies the context attention probabilities after the softmax:
    m(dist) = clamp((R + z*L - (dist - 1)) / R, 0, 1),   dist = 1..L
so m is 1 up to distance z*L + 1, falls linearly to 0 over R positions, and is
exactly 0 beyond distance z*L + R. Keys past that point contribute nothing,
which is what makes trimming them (and shrinking the cache) output-preserving.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from model.config import AdaptiveSpanConfig

TRIM_GRANULARITY = 64
"""Kept spans are multiples of this: re-sizing buffers every step would defeat the allocator."""
CACHE_MARGIN = 64
"""Extra cached positions beyond the kept span, so a span that grows in the next update still
finds real layer inputs (as the authors' code does) instead of the zero padding."""


class AdaptiveSpan(nn.Module):
    """Learned per-head span; `z` is stored H x 1 x 1 as in the authors' code."""

    def __init__(self, cfg: AdaptiveSpanConfig, num_heads: int, attn_span: int):
        super().__init__()
        self.max_span = attn_span
        self.ramp = cfg.ramp
        self.loss_coef = cfg.loss_coef
        self.trim_memory = cfg.trim_memory
        self.z = nn.Parameter(torch.full((num_heads, 1, 1), float(cfg.init)))

    def mask(self, kept: int) -> Tensor:
        """Soft mask per head for distances 1..kept (column dist-1); H x K, differentiable in z."""
        dist = torch.arange(1, kept + 1, device=self.z.device, dtype=self.z.dtype)  # K
        z = self.z.view(-1, 1)  # H x 1
        return ((self.ramp + z * self.max_span - (dist - 1)) / self.ramp).clamp(0, 1)  # H x K

    def needed_span(self) -> int:
        """Largest distance any head can still see: m(dist) > 0 iff dist - 1 < R + z*L."""
        reach = math.ceil(self.z.detach().max().item() * self.max_span) + self.ramp
        return max(1, min(self.max_span, reach))

    def kept_span(self) -> int:
        """K: the keys kept per query; trimming rounds the needed span UP to a multiple of 64."""
        if not self.trim_memory:
            return self.max_span
        return min(self.max_span, _round_up(self.needed_span(), TRIM_GRANULARITY))

    def cache_size(self) -> int:
        """C: cached layer inputs to keep for the next block (the kept span plus a margin)."""
        if not self.trim_memory:
            return self.max_span
        return min(self.max_span, self.kept_span() + CACHE_MARGIN)

    def loss(self) -> Tensor:
        """coef * L * mean(z): the span penalty of this layer (added to the training loss only)."""
        return self.loss_coef * self.max_span * self.z.mean()

    @torch.no_grad()
    def clamp_(self) -> None:
        self.z.clamp_(0.0, 1.0)

    def spans(self) -> Tensor:
        """Current span of each head in positions, ramp included, within [0, L]; H."""
        return (self.z.detach().view(-1) * self.max_span + self.ramp).clamp(0, self.max_span)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
