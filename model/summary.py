"""Size and cost of a model (the command is `python -m experiments.summary CONFIG.yaml`):

- parameters: total, non-embedding (everything but the token embeddings and the
  output layer), persistent (the persistent key/value vectors);
- model FLOPs per training token = 6 x non-embedding params + 12 x layers x d x L
  (the usual 6N rule plus the attention over L context positions, forward and
  backward; persistent slots are already in the 6N term);
- an activation-memory estimate for one training batch (fp32).
The model is built on the 'meta' device, so the 132M-parameter configs cost no memory.
"""
from __future__ import annotations

from typing import Any

import torch

from model.config import ModelConfig
from model.transformer import build_model

BYTES_FP32 = 4
# Tensors kept per token and layer for the backward pass, in units of d: the layer
# input, q, k, v, the attention output, W_o output, residual sum, LayerNorm (x2),
# plus FFN hidden (counted separately). An estimate, not a measurement.
ACTIVATIONS_PER_TOKEN = 9


def is_embedding(name: str) -> bool:
    """Token embedding and output-layer parameters (the adaptive input/softmax tables too)."""
    return name.split(".")[0] in ("embed", "out", "adaptive")


def is_persistent(name: str) -> bool:
    return "persistent" in name


def count_parameters(cfg: ModelConfig) -> dict[str, int]:
    with torch.device("meta"):
        model = build_model(cfg)
    named = [(n, p.numel()) for n, p in model.named_parameters()]
    total = sum(n for _, n in named)
    embedding = sum(n for name, n in named if is_embedding(name))
    return {"params_total": total, "params_non_embedding": total - embedding,
            "params_persistent": sum(n for name, n in named if is_persistent(name))}


def flops_per_token(cfg: ModelConfig, params_non_embedding: int) -> int:
    return 6 * params_non_embedding + 12 * cfg.num_layers * cfg.d_model * cfg.attn_span


def activation_bytes(cfg: ModelConfig, batch_size: int, block_size: int, attention: str) -> int:
    """Rough fp32 activation memory of one training batch, caches included, in bytes.

    `attention` is the path that runs (ModelConfig.attention_on): the banded one keeps each head's
    probabilities and their dropout mask, B x H x M x (K + M + N) values each; the fused one only
    its additive bias of that size (model/fused_attention.py). ValueError for another name."""
    if attention not in ("banded", "fused"):
        raise ValueError(f"attention must be 'banded' or 'fused', got {attention!r}")
    tokens = batch_size * block_size
    slots = cfg.attn_span + block_size + cfg.num_persistent
    per_layer = tokens * cfg.d_model * ACTIVATIONS_PER_TOKEN
    per_layer += (1 if attention == "fused" else 2) * tokens * cfg.num_heads * slots
    per_layer += 2 * tokens * (cfg.ffn_size or 0)
    cache = batch_size * cfg.attn_span * cfg.d_model
    return BYTES_FP32 * cfg.num_layers * (per_layer + cache)


def summarize(cfg: ModelConfig, batch_size: int | None = None, block_size: int | None = None,
              attention: str = "banded") -> dict[str, Any]:
    facts: dict[str, Any] = count_parameters(cfg)
    facts["flops_per_token"] = flops_per_token(cfg, facts["params_non_embedding"])
    if batch_size and block_size:
        facts["activation_bytes"] = activation_bytes(cfg, batch_size, block_size, attention)
    return facts


if __name__ == "__main__":  # a library module; naming the command needs no import of experiments/ (model/ is below it)
    raise SystemExit("error: model.summary is a library, not a command; the summary of a run config is "
                     "python -m experiments.summary CONFIG.yaml [--json] [--set key=value ...]")
