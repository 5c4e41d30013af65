"""The sequential transformer language model of the paper (all variants).

Symbols: B batch, M block, L attention span, C cache length, d model width,
H heads, d_h = d / H, N persistent vectors, V vocabulary.

Parameters (names are a contract with the checkpoint converter):
    pos_emb                        d_h x L   relative positions, column dist-1 = distance dist,
                                             shared by all heads and layers
    embed.weight                   V x d     (output 'softmax')
    out.weight, out.bias           V x d, V  untied output layer (output 'softmax')
    adaptive.*                     tied adaptive input/softmax (output 'adaptive', see adaptive_io)
    layers.i.attn.w_q|w_k|w_v|w_o.weight     d x d, no bias (head_split: w_k, w_v are d/2 x d)
    layers.i.attn.span.z           H x 1 x 1 (head_split: H/2 x 1 x 1), adaptive span only
    layers.i.attn.persistent.keys|values     H x d_h x N | H x N x d_h   all_attention, attn_split
                                             H/2 x d_h x N | H/2 x N x d_h  head_split
                                             d x N | N x d              single_head
    layers.i.norm1.weight|bias     d
    layers.i.ffn.fc1.weight|bias   F x d, F;  layers.i.ffn.fc2.weight|bias  d x F, d   (transformer)
    layers.i.ffn.persistent.keys|values      d x N | N x d              (ffn_attn)
    layers.i.norm2.weight|bias     d         (transformer, ffn_attn)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.adaptive_io import AdaptiveIO
from model.config import ModelConfig
from model.layers import Layer

SpanPlan = list[tuple[int, int]]
"""Per layer: (K keys each query sees, C cached positions kept for the next block)."""


class TransformerLM(nn.Module):
    """Token ids in, per-token negative log-likelihood out, with a per-layer cache of layer inputs."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, vocab = cfg.d_model, cfg.vocab_size
        if cfg.output == "adaptive":
            self.adaptive = AdaptiveIO(vocab, d, cfg.adaptive_cutoffs, cfg.adaptive_div_value)
        else:
            self.embed = nn.Embedding(vocab, d)  # N(0, 1), PyTorch's default
            self.out = nn.Linear(d, vocab)
        self.pos_emb = nn.Parameter(torch.randn(cfg.head_dim, cfg.attn_span))  # d_h x L
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))

    def init_cache(self, batch_size: int, device=None, dtype=None, spans: SpanPlan | None = None) -> list[Tensor]:
        """Zero caches, one B x C x d per layer, C the layer's current cache length (from `spans`
        when given: see decide_spans)."""
        dtype = dtype or self.pos_emb.dtype
        device = device or self.pos_emb.device
        spans = self.decide_spans() if spans is None else spans
        return [torch.zeros(batch_size, size, self.cfg.d_model, device=device, dtype=dtype) for _, size in spans]

    def decide_spans(self) -> SpanPlan:
        """(kept span K, cache length C) of every layer for the current span parameters z.

        With adaptive-span trimming, K and C are sizes that depend on z, so they must be read
        from the device: here all layers' max z are read at once (one host sync; none without
        trimming). z changes only at an optimizer step, so the trainer decides once per update
        and passes the plan to every forward of that update; a forward given none decides itself."""
        spans = [layer.attn.span for layer in self.layers]
        trimmed = [span for span in spans if span is not None and span.trim_memory]
        maxima = iter(torch.stack([span.z.detach().max() for span in trimmed]).tolist() if trimmed else [])
        plan = []
        for span in spans:
            if span is None:
                plan.append((self.cfg.attn_span, self.cfg.attn_span))
            elif not span.trim_memory:
                plan.append((span.kept_span(), span.cache_size()))  # L, L: nothing read
            else:
                z_max = next(maxima)
                plan.append((span.kept_span(z_max), span.cache_size(z_max)))
        return plan

    def forward(self, tokens: Tensor, cache: list[Tensor], targets: Tensor,
                spans: SpanPlan | None = None) -> tuple[Tensor, list[Tensor]]:
        """tokens, targets: B x M. Returns (nll B x M float32 in nats, next caches B x C' x d, detached).

        `spans`: the layers' (K, C) from `decide_spans` for the current z (decided here when
        None). A cache shorter than a layer needs is left-padded with zeros (see layers.last_positions)."""
        if len(cache) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} layer caches, got {len(cache)}")
        spans = self.decide_spans() if spans is None else spans
        h = self._embed(tokens)  # B x M x d
        next_cache = []
        for layer, layer_cache, span in zip(self.layers, cache, spans):
            h, layer_next = layer(h, layer_cache, self.pos_emb, span)
            next_cache.append(layer_next)
        h = F.dropout(h, self.cfg.emb_dropout, self.training)
        return self._nll(h, targets), next_cache

    def _embed(self, tokens: Tensor) -> Tensor:
        h = self.adaptive.embed(tokens) if self.cfg.output == "adaptive" else self.embed(tokens)
        return F.dropout(h, self.cfg.emb_dropout, self.training)

    def _nll(self, h: Tensor, targets: Tensor) -> Tensor:
        if self.cfg.output == "adaptive":
            return self.adaptive.nll(h, targets)
        logits = self.out(h)  # B x M x V
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half models: float32 nll
        return F.cross_entropy(logits.flatten(0, 1), targets.reshape(-1), reduction="none").view(targets.shape)

    def _spans(self):
        return [layer.attn.span for layer in self.layers if layer.attn.span is not None]

    def span_loss(self) -> Tensor:
        """Sum over layers of coef * L * mean(z); a zero tensor without adaptive span."""
        losses = [span.loss() for span in self._spans()]
        return torch.stack(losses).sum() if losses else self.pos_emb.new_zeros(())

    def clamp_span_(self) -> None:
        """Keep every z in [0, 1]; call after each optimizer step."""
        for span in self._spans():
            span.clamp_()

    def span_stats(self) -> tuple[float, float]:
        """(mean, max) span in positions over all heads and layers, ramp included, capped at L."""
        spans = self._spans()
        if not spans:
            return float(self.cfg.attn_span), float(self.cfg.attn_span)
        values = torch.cat([span.spans() for span in spans])
        return values.mean().item(), values.max().item()


def build_model(cfg: ModelConfig) -> TransformerLM:
    return TransformerLM(cfg)
