"""The all-attention language model of Sukhbaatar et al. (2019) and its ablation variants."""
from model.config import AdaptiveSpanConfig, ModelConfig
from model.transformer import TransformerLM, build_model

__all__ = ["AdaptiveSpanConfig", "ModelConfig", "TransformerLM", "build_model"]
