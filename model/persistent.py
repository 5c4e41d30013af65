"""Persistent memory: N learned key/value vectors that every query can attend to.

Symbols: B batch, M block, N persistent vectors, H heads, d_h head width,
d model width, G groups (H per-head sets, or 1 for the single d-dimensional set
of single_head / ffn_attn), D width of one group's vectors (d_h or d).

Reparametrisation (authors' code): keys are stored ~N(0, 1/D) and used as
keys * sqrt(D); values are stored ~N(0, 1/N) and used as values * sqrt(N). The
forward function is the same as storing the scaled vectors, but the effective
Adagrad step on them differs, so the stored scale is part of the recipe.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PersistentMemory(nn.Module):
    """N persistent vectors per group.

    Per-head sets (`groups=H`): keys H x d_h x N, values H x N x d_h.
    One d-dimensional set (`groups=None`): keys d x N, values N x d.
    """

    def __init__(self, num: int, dim: int, groups: int | None):
        super().__init__()
        self.num, self.dim = num, dim
        lead = () if groups is None else (groups,)
        self.keys = nn.Parameter(torch.randn(*lead, dim, num) / math.sqrt(dim))
        self.values = nn.Parameter(torch.randn(*lead, num, dim) / math.sqrt(num))

    def scaled(self) -> tuple[Tensor, Tensor]:
        """The vectors as used: keys G x D x N (times sqrt(D)), values G x N x D (times sqrt(N))."""
        keys = self.keys * math.sqrt(self.dim)
        values = self.values * math.sqrt(self.num)
        if keys.dim() == 2:
            return keys.unsqueeze(0), values.unsqueeze(0)
        return keys, values

    def attend(self, q: Tensor, dropout: float, training: bool) -> Tensor:
        """Softmax attention of queries over the persistent slots only (scores scaled 1/sqrt(D)).

        q: B x M x (G D), the groups side by side (as the projections produce them);
        returns B x M x (G D).
        """
        keys, values = self.scaled()  # G x D x N, G x N x D
        batch, block, width = q.shape
        rows = q.reshape(batch * block, keys.shape[0], self.dim).transpose(0, 1)  # G x (B M) x D
        scores = torch.bmm(rows, keys) / math.sqrt(self.dim)  # G x (B M) x N
        # The softmax in at least float32: under bf16 autocast the scores are bf16.
        probs = F.dropout(torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)),
                          dropout, training)
        return torch.bmm(probs, values).transpose(0, 1).reshape(batch, block, width)
