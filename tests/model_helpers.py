"""Small random models of every variant for the model tests."""
from __future__ import annotations

import torch

from model import AdaptiveSpanConfig, ModelConfig, build_model

VARIANT_FIELDS = {
    "transformer": {"ffn_size": 12},
    "all_attention": {"num_persistent": 5},
    "attention_only": {},
    "attn_split": {"num_persistent": 5},
    "head_split": {"num_persistent": 5},
    "single_head": {"num_persistent": 5},
    "ffn_attn": {"num_persistent": 5},
}
VARIANTS = tuple(VARIANT_FIELDS)


def make_model(variant: str, *, span: bool = False, attn_span: int = 6, ramp: int = 2, trim: bool = False,
               d_model: int = 8, num_heads: int = 2, seed: int = 0, **overrides) -> torch.nn.Module:
    """A float64 model in eval mode; with `span`, every z is set to a distinct value in (0.05, 0.6)
    so the soft mask has ones, a ramp and zeros inside the window."""
    adaptive = AdaptiveSpanConfig(enabled=True, loss_coef=1e-3, ramp=ramp, trim_memory=trim) if span else AdaptiveSpanConfig()
    fields = dict(variant=variant, vocab_size=11, num_layers=2, d_model=d_model, num_heads=num_heads,
                  attn_span=attn_span, dropout=0.3, adaptive_span=adaptive, **VARIANT_FIELDS[variant])
    fields.update(overrides)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**fields)).double().eval()
    if span:
        with torch.no_grad():
            for layer in model.layers:
                layer.attn.span.z.uniform_(0.05, 0.6)
    return model


def random_cache(model, batch: int, length: int | None = None, seed: int = 1) -> list[torch.Tensor]:
    """Non-zero caches (B x C x d per layer), C = the model's attn_span unless given."""
    gen = torch.Generator().manual_seed(seed)
    length = model.cfg.attn_span if length is None else length
    return [torch.randn(batch, length, model.cfg.d_model, generator=gen, dtype=torch.float64) for _ in model.layers]


def random_tokens(model, batch: int, block: int, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(model.cfg.vocab_size, (batch, block + 1), generator=gen)
    return tokens[:, :-1], tokens[:, 1:]
