"""Tied adaptive input embeddings and adaptive softmax, as the authors' code computes them.

Symbols: B batch, M block, n = B*M positions, d model width, V vocabulary,
S number of tail clusters, V_i and d_i the size and width of cluster i,
c_0 the shortlist size.

The vocabulary (ids sorted by decreasing frequency) is cut at the cutoffs into
cluster 0 (the head shortlist, ids [0, c_0)) and tail clusters i = 1..S
(ids [c_{i-1}, c_i), c_S = V). Cluster i has a table V_i x d_i with
d_i = d // div**i and a projection P_i (d x d_i); both are shared by the input
and the output (tied), as in the authors' `--adapt-io-tied` runs (their
AdaptiveEmbedding and ProjectedAdaptiveLogSoftmax, arXiv 1809.10853 and 1609.04309):

    input    emb(t)     = sqrt(d) * P_i table_i[t - c_{i-1}]               t in cluster i
    head     head(h)    = log_softmax([table_0 ; cluster.weight] (P_0^T h) + [bias_0 ; cluster.bias])
                          c_0 + S columns: the shortlist, then the S cluster logits
    tail     tail_i(h)  = log_softmax(table_i (P_i^T h) + bias_i)          V_i columns
    output   log p(t)   = head(h)[t]                                       t in cluster 0
                        = head(h)[c_0 + S - i] + tail_i(h)[t - c_{i-1}]    t in cluster i

The cluster logits act on the *projected* head state P_0^T h, next to the
shortlist rows, in one matrix product; and tail cluster i reads head column
c_0 + S - i, counted from the end (the last column is cluster 1), so row j of
`cluster.weight` scores cluster S - j. Output biases and the cluster logits are not tied.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AdaptiveIO(nn.Module):
    """The tied adaptive input and softmax. Parameters (their names in the authors' layout):

        tables.i        V_i x d_i   in_emb.emb_layers.i.weight = out_emb.out_layers.i.weight
        projs.i         d x d_i     in_emb.emb_projs.i = out_emb.out_projs.i
        biases.i        V_i         out_emb.out_layers.i.bias
        cluster.weight  S x d_0     out_emb.cluster_proj.weight (row j scores tail cluster S - j)
        cluster.bias    S           out_emb.cluster_proj.bias
    """

    def __init__(self, vocab: int, d: int, cutoffs: list[int], div_value: float):
        super().__init__()
        self.d = d
        self.bounds = [0, *cutoffs, vocab]
        widths = [int(d // (div_value**i)) for i in range(len(self.bounds) - 1)]
        sizes = [hi - lo for lo, hi in zip(self.bounds, self.bounds[1:])]
        # the authors' inits: nn.Embedding tables N(0, 1); nn.Linear(d_i, .) weights and biases
        self.tables = nn.ParameterList(nn.Parameter(torch.randn(n, w)) for n, w in zip(sizes, widths))
        self.projs = nn.ParameterList(nn.Parameter(_uniform((d, w), w)) for w in widths)
        self.biases = nn.ParameterList(nn.Parameter(_uniform((n,), w)) for n, w in zip(sizes, widths))
        self.cluster = nn.Linear(widths[0], len(sizes) - 1)

    @property
    def shortlist(self) -> int:
        """c_0: the number of head words."""
        return self.bounds[1]

    @property
    def num_tails(self) -> int:
        """S: the number of tail clusters."""
        return len(self.bounds) - 2

    def head_column(self, i: int) -> int:
        """The head column holding log p(cluster i) of tail cluster i (1..S): counted from the end."""
        return self.shortlist + self.num_tails - i

    def _clusters(self, ids: Tensor):
        """(cluster index, positions in it, ids relative to the cluster) for non-empty clusters."""
        for i, (lo, hi) in enumerate(zip(self.bounds, self.bounds[1:])):
            where = ((ids >= lo) & (ids < hi)).nonzero().squeeze(1)
            if where.numel():
                yield i, where, ids[where] - lo

    def embed(self, tokens: Tensor) -> Tensor:
        """tokens B x M -> embeddings B x M x d: sqrt(d) * P_i table_i[t - c_{i-1}]."""
        flat = tokens.reshape(-1)  # n
        out = self.projs[0].new_zeros(flat.numel(), self.d)  # n x d
        for i, where, rel in self._clusters(flat):
            out = out.index_copy(0, where, F.linear(F.embedding(rel, self.tables[i]), self.projs[i]))  # n_i x d
        return (out * math.sqrt(self.d)).view(*tokens.shape, self.d)

    def _logits(self, h: Tensor, weight: Tensor, bias: Tensor, proj: Tensor) -> Tensor:
        """weight (P^T h) + bias; h: n x d, proj: d x d_i, weight: k x d_i -> n x k.
        P^T h as the authors form it (a linear layer with the contiguous transpose of P)."""
        projected = F.linear(h, proj.t().contiguous())  # n x d_i
        return F.linear(projected, weight, bias)

    def _head_log_probs(self, h: Tensor) -> Tensor:
        """h: n x d -> n x (c_0 + S): the shortlist words, then the tail clusters S..1."""
        weight = torch.cat([self.tables[0], self.cluster.weight])  # (c_0 + S) x d_0
        bias = torch.cat([self.biases[0], self.cluster.bias])  # c_0 + S
        return _log_softmax(self._logits(h, weight, bias, self.projs[0]))

    def _tail_log_probs(self, h: Tensor, i: int) -> Tensor:
        """Within-cluster log-probabilities of tail cluster i; h: n x d -> n x V_i."""
        return _log_softmax(self._logits(h, self.tables[i], self.biases[i], self.projs[i]))

    def nll(self, h: Tensor, targets: Tensor) -> Tensor:
        """Exact negative log-likelihood (nats); h: B x M x d, targets: B x M -> B x M
        (at least float32)."""
        h, flat = h.reshape(-1, self.d), targets.reshape(-1)
        head = self._head_log_probs(h)  # n x (c_0 + S)
        nll = head.new_zeros(flat.numel())  # n
        for i, where, rel in self._clusters(flat):
            if i == 0:
                logp = head[where, rel]
            else:
                tail = self._tail_log_probs(h[where], i)  # n_i x V_i
                logp = head[where, self.head_column(i)] + tail.gather(1, rel[:, None]).squeeze(1)
            nll = nll.index_copy(0, where, -logp)
        return (nll + self._zero_touch()).view(targets.shape)

    def _zero_touch(self) -> Tensor:
        """0 * (one entry of every table, projection and output bias): zero in value, but every
        one of those tensors gets a (zero) gradient even when its cluster is absent from the
        batch, as the authors' `compute_dummy_loss` does. With Adam a zero gradient still moves
        a parameter (its moments decay), so this keeps the updates identical to theirs."""
        entries = [t[0, 0] for t in self.tables] + [p[0, 0] for p in self.projs] + [b[0] for b in self.biases]
        return 0 * torch.stack(entries).sum()

    def log_probs(self, h: Tensor) -> Tensor:
        """The full distribution in vocabulary order, for checks and small vocabularies; h: n x d -> n x V."""
        head = self._head_log_probs(h)  # n x (c_0 + S)
        parts = [head[:, : self.shortlist]]
        for i in range(1, self.num_tails + 1):
            column = self.head_column(i)
            parts.append(head[:, column : column + 1] + self._tail_log_probs(h, i))
        return torch.cat(parts, dim=-1)


def _log_softmax(logits: Tensor) -> Tensor:
    """In at least float32 (the authors cast to float32): half-precision log-probabilities of rare
    words are too coarse. A float64 model stays float64."""
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)


def _uniform(shape: tuple[int, ...], fan_in: int) -> Tensor:
    """PyTorch's nn.Linear default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as the authors got it."""
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound)
