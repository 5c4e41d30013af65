"""Typed, validated configuration of the language model (DESIGN §2).

Every field is explicit: a variant never infers another field (no "N > 0 removes
the FFN"), and a field the chosen variant ignores is rejected when it is set.
Errors are `ConfigError`s naming the field; the YAML loader prefixes the section.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from model.errors import ConfigError

VARIANTS = (
    "transformer",     # LN(x + Attn(x)); LN(x + FFN(x)): the baseline
    "all_attention",   # one joint softmax over [context ; persistent] per head
    "attention_only",  # LN(x + Attn(x)): no FFN, no persistent vectors
    "attn_split",      # separate softmaxes over context and persistent, outputs added
    "head_split",      # half the heads see context only, half persistent only
    "single_head",     # one d-dimensional persistent attention added before W_o
    "ffn_attn",        # a second sublayer: single-head attention over persistent vectors
)
PERSISTENT_VARIANTS = ("all_attention", "attn_split", "head_split", "single_head", "ffn_attn")
OUTPUTS = ("softmax", "adaptive")
ATTENTION_IMPLEMENTATIONS = ("banded", "fused", "auto")
MIN_VOCAB = 2
"""Fewest symbols a model (and a corpus: `experiments.data` refuses smaller) may have: with one,
every next token is certain, so there is nothing to learn."""
MAX_SIZE = 2**30
"""Largest size field: every weight spans at most two of them, so its size in bytes stays within
int64 (beyond it, building the model fails with an overflow, even on the meta device)."""
MAX_LAYERS = 1024
"""Most layers a model may have. Each layer is its own Python module, built one by one even on the
meta device (summary, the memory check): 20,000 layers took 48 s and 0.9 GB before anything ran,
and 10^6 never finished. The paper's deepest model has 36 layers, so 1024 refuses only mistakes."""
MAX_CUTOFFS = 32
"""Most adaptive_cutoffs (tail clusters): each cluster is its own table, projection and bias
(Python objects, built one by one), and a div_value near 1 does not narrow them away. The paper's
WikiText-103 model has 3, so 32 refuses only mistakes."""


@dataclass
class AdaptiveSpanConfig:
    """Adaptive attention span (Sukhbaatar et al. 2019a), one learned span per head."""

    enabled: bool = False
    """Learn a span z*L per head with a soft mask; off means every head sees attn_span."""
    loss_coef: float = 0.0
    """Span penalty coef * attn_span * mean(z), summed over layers (paper: 1e-7 char, 5e-7 word)."""
    ramp: int = 32
    """Length R of the soft mask's linear ramp, in positions."""
    init: float = 0.0
    """Initial z in [0, 1]; the authors start at 0 (span = the ramp)."""
    trim_memory: bool = True
    """Drop keys beyond the largest current span (rounded to 64) and shrink the cache; output unchanged."""

    def __post_init__(self) -> None:
        if self.ramp < 1:
            raise ConfigError("ramp", f"must be >= 1, got {self.ramp}")
        if not 0.0 <= self.init <= 1.0:
            raise ConfigError("init", f"must be in [0, 1], got {self.init}")
        if self.loss_coef < 0:
            raise ConfigError("loss_coef", f"must be >= 0, got {self.loss_coef}")
        if not self.enabled:
            # a span setting that differs from its default would be silently ignored
            for spec in fields(self):
                if spec.name != "enabled" and getattr(self, spec.name) != spec.default:
                    raise ConfigError(spec.name, "is set but adaptive_span.enabled is false")


@dataclass
class ModelConfig:
    """Geometry and variant of the sequential transformer of the paper."""

    variant: str
    """Layer variant, one of VARIANTS (see DESIGN §2)."""
    vocab_size: int
    """Number of token ids V; must equal the prepared data's vocabulary."""
    num_layers: int
    """Number of layers, at most MAX_LAYERS."""
    d_model: int
    """Model width d."""
    num_heads: int
    """Attention heads H; must divide d_model."""
    attn_span: int
    """Attention span L: each query sees the L previous positions (itself excluded)."""
    dropout: float = 0.0
    """Dropout on attention probabilities (context and persistent) and on FFN hidden units."""
    num_persistent: int = 0
    """Persistent vectors N: per head for all_attention/attn_split/head_split, per layer
    (dimension d) for single_head/ffn_attn. Must be 0 for transformer and attention_only."""
    ffn_size: int | None = None
    """FFN hidden width F; only for the transformer variant."""
    emb_dropout: float = 0.0
    """Dropout on input embeddings and on the final hidden state (WikiText-103: 0.1)."""
    adaptive_span: AdaptiveSpanConfig = field(default_factory=AdaptiveSpanConfig)
    """Adaptive span settings."""
    output: str = "softmax"
    """'softmax': full linear + log-softmax (characters); 'adaptive': tied adaptive input/softmax (words)."""
    adaptive_cutoffs: list[int] = field(default_factory=list)
    """Cluster boundaries of the adaptive softmax (WikiText-103: [20000, 40000, 200000]): strictly
    increasing (so no duplicate), at most MAX_CUTOFFS."""
    adaptive_div_value: float | None = None
    """Each adaptive cluster's width is d / div_value**i (WikiText-103: 4)."""
    attention: str = "auto"
    """Implementation of the context attention, same math: 'banded' (hand-written band, the CPU
    path and the reference: model/attention.py), 'fused' (PyTorch's scaled_dot_product_attention
    with an additive bias: model/fused_attention.py), 'auto' (fused on CUDA, banded elsewhere).
    Not part of the run id."""

    def __post_init__(self) -> None:
        self._check_geometry()
        self._check_variant_fields()
        self._check_output()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def uses_persistent(self) -> bool:
        return self.variant in PERSISTENT_VARIANTS

    def attention_on(self, device_type: str) -> str:
        """The implementation the context attention runs on `device_type` ('cuda', 'cpu', ...):
        `attention`, with 'auto' resolved (fused on CUDA, banded elsewhere)."""
        if self.attention != "auto":
            return self.attention
        return "fused" if device_type == "cuda" else "banded"

    def _check_geometry(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError("variant", f"unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        for name in ("vocab_size", "num_layers", "d_model", "num_heads", "attn_span"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.vocab_size < MIN_VOCAB:
            raise ConfigError("vocab_size", f"must be >= {MIN_VOCAB}, got {self.vocab_size}")
        for name in ("vocab_size", "d_model", "num_heads", "attn_span", "num_persistent", "ffn_size"):
            if (getattr(self, name) or 0) > MAX_SIZE:
                raise ConfigError(name, f"must be <= {MAX_SIZE} (a tensor dimension), got {getattr(self, name)}")
        if self.num_layers > MAX_LAYERS:
            raise ConfigError("num_layers", f"must be <= {MAX_LAYERS} (each layer is built as its own module; "
                                            f"the paper's deepest model has 36), got {self.num_layers}")
        if self.d_model % self.num_heads:
            raise ConfigError("num_heads", f"{self.num_heads} does not divide d_model={self.d_model}")
        for name in ("dropout", "emb_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(name, f"must be in [0, 1), got {getattr(self, name)}")

    def _check_variant_fields(self) -> None:
        if self.num_persistent < 0:
            raise ConfigError("num_persistent", f"must be >= 0, got {self.num_persistent}")
        if self.uses_persistent and self.num_persistent == 0:
            raise ConfigError("num_persistent", f"must be >= 1 for variant {self.variant}")
        if not self.uses_persistent and self.num_persistent != 0:
            raise ConfigError("num_persistent", f"must be 0 for variant {self.variant} (it has no persistent vectors)")
        if self.variant == "transformer":
            if self.ffn_size is None or self.ffn_size < 1:
                raise ConfigError("ffn_size", "must be set to a width >= 1 for variant transformer")
        elif self.ffn_size is not None:
            raise ConfigError("ffn_size", f"is ignored by variant {self.variant} (only transformer has an FFN); remove it")
        if self.variant == "head_split" and self.num_heads % 2:
            raise ConfigError("num_heads", f"must be even for head_split, got {self.num_heads}")
        if self.adaptive_span.enabled and self.adaptive_span.ramp > self.attn_span:
            raise ConfigError("adaptive_span.ramp", f"{self.adaptive_span.ramp} exceeds attn_span={self.attn_span}")

    def _check_output(self) -> None:
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ConfigError("attention", f"unknown implementation {self.attention!r}; choose one of {', '.join(ATTENTION_IMPLEMENTATIONS)}")
        if self.output not in OUTPUTS:
            raise ConfigError("output", f"unknown output {self.output!r}; choose one of {', '.join(OUTPUTS)}")
        if self.output == "softmax":
            if self.adaptive_cutoffs:
                raise ConfigError("adaptive_cutoffs", "is ignored with output: softmax; remove it")
            if self.adaptive_div_value is not None:
                raise ConfigError("adaptive_div_value", "is ignored with output: softmax; remove it")
            return
        cutoffs = self.adaptive_cutoffs
        if not cutoffs:
            raise ConfigError("adaptive_cutoffs", "must list at least one cutoff with output: adaptive")
        if len(cutoffs) > MAX_CUTOFFS:
            raise ConfigError("adaptive_cutoffs", f"must list at most {MAX_CUTOFFS} cutoffs (each is a cluster built "
                                                  f"as its own tensors; the paper uses 3), got {len(cutoffs)}")
        if any(b <= a for a, b in zip(cutoffs, cutoffs[1:])) or cutoffs[0] < 1 or cutoffs[-1] >= self.vocab_size:
            raise ConfigError("adaptive_cutoffs", f"must increase strictly within (0, vocab_size={self.vocab_size}), got {cutoffs}")
        if self.adaptive_div_value is None or self.adaptive_div_value < 1.0:
            raise ConfigError("adaptive_div_value", "must be set to a value >= 1 with output: adaptive")
        narrowest = self.d_model // self.adaptive_div_value ** len(cutoffs)
        if narrowest < 1:
            raise ConfigError("adaptive_div_value", f"{self.adaptive_div_value} leaves the last cluster of width 0 (d_model={self.d_model})")
