"""Evaluation as the paper reports it: the `eval:` config and the loops over a token stream.

The authors' batching: the token stream is cut into `batch_size` contiguous rows,
read in blocks of `train.block_size` with the cache carried from zeros, and the
last incomplete block is dropped. Losses are mean negative log-likelihoods in
nats per token; bpc = loss / ln 2, ppl = exp(loss). The trainer calls these during
and after training; `experiments/evaluate.py` is the command for any checkpoint.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from experiments.batches import TokenStream
from experiments.distributed import DistContext
from model.errors import ConfigError

SPLITS = ("valid", "test")


@dataclass
class EvalConfig:
    """The `eval:` section: the final full evaluation written to eval.json."""

    batch_size: int = 8
    """Rows of the evaluation batch (the authors use 8)."""
    splits: list[str] = field(default_factory=lambda: list(SPLITS))
    """Splits evaluated at the end of training, each once."""
    max_tokens: int | None = None
    """Cap on tokens per split for quick CPU runs; null = whole split (the paper's numbers)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {self.batch_size}")
        if not self.splits:
            raise ConfigError("splits", f"must name at least one of {', '.join(SPLITS)} (the analysis reads the final evaluation)")
        for split in self.splits:
            if split not in SPLITS:
                raise ConfigError("splits", f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        # a repeat would evaluate the split twice and give the run another id than the same list without it
        repeated = sorted({split for split in self.splits if self.splits.count(split) > 1})
        if repeated:
            raise ConfigError("splits", f"lists {', '.join(repeated)} more than once; name each split once")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError("max_tokens", f"must be >= 1 or null, got {self.max_tokens}")


UNITS = ("bpc", "ppl")
"""The units of results: bits per character (character-level corpora) and word perplexity
(word-level); eval.json's `unit` is one of them."""


def unit_value(loss: float, unit: str) -> float:
    """`loss` (nats per token) in the corpus's unit: bits per character ('bpc') or perplexity ('ppl');
    a perplexity past the float range (loss > 709.78 nats) is inf, where math.exp raises."""
    if unit == "bpc":
        return loss / math.log(2)
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


class EvaluationStopped(Exception):
    """`stop()` said a signal arrived: a full evaluation can outlast a job's time limit."""


@torch.no_grad()
def evaluate_stream(model: torch.nn.Module, stream: TokenStream, ctx: DistContext, max_blocks: int | None = None,
                    stop: Callable[[], bool] | None = None) -> tuple[float, int]:
    """(mean nll in nats, tokens) over the stream's blocks from offset 0, caches from zeros,
    summed over every rank. `stop` is asked before each block; when it says so,
    EvaluationStopped is raised. The model's training mode is restored either way.
    The spans are decided once (the weights do not change) and the loss is summed on the
    device, read once at the end: the host never waits for the device in between."""
    was_training = model.training
    model.eval()
    spans = model.decide_spans()
    cache = model.init_cache(stream.rows.shape[0], device=ctx.device, spans=spans)
    total, count = torch.zeros((), dtype=torch.float64, device=ctx.device), 0
    blocks = stream.num_blocks if max_blocks is None else min(max_blocks, stream.num_blocks)
    try:
        for index in range(blocks):
            if stop is not None and stop():
                raise EvaluationStopped
            inputs, targets = stream.block(index * stream.block_size, ctx.device)
            nll, cache = model(inputs, cache, targets, spans)
            total += nll.double().sum()
            count += nll.numel()
    finally:
        model.train(was_training)
    total, count = ctx.all_reduce_sum([total.item(), float(count)])
    return total / max(count, 1.0), int(count)


def evaluate_tokens(model: torch.nn.Module, tokens: np.ndarray, block_size: int, batch_size: int,
                    ctx: DistContext, unit: str, max_tokens: int | None = None,
                    stop: Callable[[], bool] | None = None) -> dict:
    """The full-evaluation record of one split: {"loss" (nats), unit, "tokens", "full"}.
    `max_tokens` caps the tokens read (whole blocks, at least one); "full" says the cap, if any,
    left out no block of the split (a cap larger than the split evaluates all of it)."""
    stream = TokenStream(tokens, batch_size, block_size, ctx.rows(batch_size))
    max_blocks = None if max_tokens is None else max(1, max_tokens // (batch_size * block_size))
    loss, count = evaluate_stream(model, stream, ctx, max_blocks, stop)
    full = max_blocks is None or max_blocks >= stream.num_blocks
    return {"loss": loss, unit: unit_value(loss, unit), "tokens": count, "full": full}
