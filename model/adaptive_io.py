"""Tied adaptive input embeddings and adaptive softmax (the WikiText-103 setup).

Symbols: B batch, M block, n = B*M positions, d model width, V vocabulary,
S number of tail clusters, V_i and d_i the size and width of cluster i.

The vocabulary (ids sorted by decreasing frequency) is cut at the cutoffs into
cluster 0 (the head shortlist, ids [0, c_0)) and tail clusters i = 1..S
(ids [c_{i-1}, c_i), c_S = V). Cluster i has a table V_i x d_i with
d_i = d // div**i and a projection d x d_i; both are shared by the input and the
output (tied), as in the authors' `--adapt-io-tied` runs:
    input   emb(t)  = sqrt(d) * P_i table_i[t - c_{i-1}]
    output  log p(t) = log p_head(t)                                  t in cluster 0
                     = log p_head(cluster i) + log p_i(t - c_{i-1})   t in cluster i
with p_head = softmax over [c_0 shortlist logits ; S cluster logits] from
(P_0^T h) . table_0 + bias_0 and `cluster`(h), and p_i = softmax of
(P_i^T h) . table_i + bias_i. Output biases and the cluster logits are not tied.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AdaptiveIO(nn.Module):
    """Parameters: `tables.i` V_i x d_i, `projs.i` d x d_i, `biases.i` V_i,
    `cluster.weight` S x d and `cluster.bias` S (row i-1 scores tail cluster i)."""

    def __init__(self, vocab: int, d: int, cutoffs: list[int], div_value: float):
        super().__init__()
        self.d = d
        self.bounds = [0, *cutoffs, vocab]
        widths = [int(d // (div_value**i)) for i in range(len(self.bounds) - 1)]
        sizes = [hi - lo for lo, hi in zip(self.bounds, self.bounds[1:])]
        self.tables = nn.ParameterList(nn.Parameter(torch.randn(n, w)) for n, w in zip(sizes, widths))
        self.projs = nn.ParameterList(nn.Parameter(_uniform((d, w), w)) for w in widths)
        self.biases = nn.ParameterList(nn.Parameter(_uniform((n,), w)) for n, w in zip(sizes, widths))
        self.cluster = nn.Linear(d, len(sizes) - 1)

    def _clusters(self, ids: Tensor):
        """(cluster index, positions in it, ids relative to the cluster) for non-empty clusters."""
        for i, (lo, hi) in enumerate(zip(self.bounds, self.bounds[1:])):
            where = ((ids >= lo) & (ids < hi)).nonzero().squeeze(1)
            if where.numel():
                yield i, where, ids[where] - lo

    def embed(self, tokens: Tensor) -> Tensor:
        """tokens B x M -> embeddings B x M x d."""
        flat = tokens.reshape(-1)  # n
        out = self.projs[0].new_zeros(flat.numel(), self.d)  # n x d
        for i, where, rel in self._clusters(flat):
            out = out.index_copy(0, where, F.embedding(rel, self.tables[i]) @ self.projs[i].t())
        return (out * math.sqrt(self.d)).view(*tokens.shape, self.d)

    def _head_log_probs(self, h: Tensor) -> Tensor:
        """h: n x d -> n x (c_0 + S): shortlist tokens then tail clusters."""
        short = (h @ self.projs[0]) @ self.tables[0].t() + self.biases[0]  # n x c_0
        return _log_softmax(torch.cat([short, self.cluster(h)], dim=-1))

    def _tail_log_probs(self, h: Tensor, i: int) -> Tensor:
        """Within-cluster log-probabilities of tail cluster i; h: n x d -> n x V_i."""
        return _log_softmax((h @ self.projs[i]) @ self.tables[i].t() + self.biases[i])

    def nll(self, h: Tensor, targets: Tensor) -> Tensor:
        """Exact negative log-likelihood (nats); h: B x M x d, targets: B x M -> B x M float32."""
        h, flat = h.reshape(-1, self.d), targets.reshape(-1)
        head = self._head_log_probs(h)  # n x (c_0 + S)
        shortlist = self.bounds[1]
        nll = head.new_zeros(flat.numel())  # n
        for i, where, rel in self._clusters(flat):
            if i == 0:
                logp = head[where, rel]
            else:
                tail = self._tail_log_probs(h[where], i)  # n_i x V_i
                logp = head[where, shortlist + i - 1] + tail.gather(1, rel[:, None]).squeeze(1)
            nll = nll.index_copy(0, where, -logp)
        return nll.view(targets.shape)

    def log_probs(self, h: Tensor) -> Tensor:
        """The full distribution, for checks and small vocabularies; h: n x d -> n x V."""
        head = self._head_log_probs(h)
        shortlist = self.bounds[1]
        parts = [head[:, :shortlist]]
        for i in range(1, len(self.bounds) - 1):
            parts.append(head[:, shortlist + i - 1 : shortlist + i] + self._tail_log_probs(h, i))
        return torch.cat(parts, dim=-1)


def _log_softmax(logits: Tensor) -> Tensor:
    """In at least float32: half-precision log-probabilities of rare words are too coarse."""
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def _uniform(shape: tuple[int, ...], fan_in: int) -> Tensor:
    """PyTorch's nn.Linear default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as the authors got it."""
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound)
