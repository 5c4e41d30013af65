"""Model config: every ignored or inconsistent field is a ConfigError; paper parameter counts."""
from __future__ import annotations

import pytest
import torch

from model import AdaptiveSpanConfig, ModelConfig, build_model
from model.errors import ConfigError

BASE = dict(variant="all_attention", vocab_size=10, num_layers=1, d_model=8, num_heads=2, attn_span=16, num_persistent=4)


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(ffn_size=32), "ffn_size"),  # all_attention has no FFN
        (dict(variant="transformer"), "num_persistent"),  # transformer has no persistent vectors
        (dict(variant="transformer", num_persistent=0), "ffn_size"),  # ... and needs a width
        (dict(variant="attention_only"), "num_persistent"),
        (dict(variant="ffn_attn", ffn_size=8), "ffn_size"),
        (dict(num_persistent=0), "num_persistent"),
        (dict(variant="head_split", num_heads=1), "num_heads"),
        (dict(num_heads=3), "num_heads"),
        (dict(adaptive_cutoffs=[4]), "adaptive_cutoffs"),  # ignored by output: softmax
        (dict(adaptive_div_value=2.0), "adaptive_div_value"),
        (dict(output="adaptive"), "adaptive_cutoffs"),
        (dict(output="adaptive", adaptive_cutoffs=[4]), "adaptive_div_value"),
        (dict(output="adaptive", adaptive_cutoffs=[4, 4], adaptive_div_value=2.0), "adaptive_cutoffs"),
        (dict(output="adaptive", adaptive_cutoffs=[4, 6, 8], adaptive_div_value=4.0), "adaptive_div_value"),
        (dict(adaptive_span=AdaptiveSpanConfig(enabled=True, ramp=32)), "adaptive_span.ramp"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_model_config_errors(changes, field):
    with pytest.raises(ConfigError) as err:
        ModelConfig(**{**BASE, **changes})
    assert err.value.field == field


@pytest.mark.parametrize("name, value", [("loss_coef", 1e-6), ("ramp", 16), ("init", 0.5), ("trim_memory", False)])
def test_span_settings_without_adaptive_span_are_errors(name, value):
    with pytest.raises(ConfigError) as err:
        AdaptiveSpanConfig(**{name: value})
    assert err.value.field == name


def count(**fields) -> int:
    with torch.device("meta"):
        model = build_model(ModelConfig(**fields))
    return sum(p.numel() for p in model.parameters())


PAPER = dict(variant="all_attention", d_model=512, num_heads=8, dropout=0.3)
SPAN = AdaptiveSpanConfig(enabled=True, loss_coef=1e-7)


@pytest.mark.parametrize(
    "fields, expected",
    [
        (dict(vocab_size=204, num_layers=18, num_persistent=1024, attn_span=8192), 38.50e6),  # enwik8 small
        (dict(vocab_size=204, num_layers=36, num_persistent=2048, attn_span=8192), 114.02e6),  # enwik8 large
        (dict(vocab_size=28, num_layers=18, num_persistent=1024, attn_span=8192), 38.32e6),  # text8 small
        (dict(vocab_size=28, num_layers=36, num_persistent=2048, attn_span=8192), 113.84e6),  # text8 large
        (dict(vocab_size=267735, num_layers=36, num_persistent=2048, attn_span=2048, emb_dropout=0.1, output="adaptive",
              adaptive_cutoffs=[20000, 40000, 200000], adaptive_div_value=4.0), 132.5e6),  # WikiText-103
    ],
    ids=["enwik8-small", "enwik8-large", "text8-small", "text8-large", "wikitext-103"],
)
def test_paper_parameter_counts(fields, expected):
    """Within 1% of the authors' code for the same geometry (in fact within 0.01%)."""
    assert count(**PAPER, adaptive_span=SPAN, **fields) == pytest.approx(expected, rel=1e-3)
