"""Full evaluation as the paper reports it, and a command to evaluate any checkpoint.

The authors' batching: the token stream is cut into `batch_size` contiguous rows,
read in blocks of `train.block_size` with the cache carried from zeros, and the
last incomplete block is dropped. bpc = loss / ln 2, ppl = exp(loss).

    python -m experiments.evaluate CONFIG.yaml --checkpoint CKPT [--text FILE] [--batch-size 8]

CKPT is a training checkpoint folder (`checkpoints/step_N`) or a `.pt` file holding
{"model": state_dict} (e.g. from model.convert_official). With `--text`, the
file's bytes are mapped to tokens exactly as the config's prepared corpus was
(`experiments.data.encode_text`: same symbols, same ids, a newline is `<eos>`);
without it, the prepared valid and test splits are evaluated.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from experiments.batches import TokenStream
from experiments.distributed import DistContext
from model.errors import ConfigError, UserError
from experiments.cli import run_cli

SPLITS = ("valid", "test")


@dataclass
class EvalConfig:
    """The `eval:` section: the final full evaluation written to eval.json."""

    batch_size: int = 8
    """Rows of the evaluation batch (the authors use 8)."""
    splits: list[str] = field(default_factory=lambda: list(SPLITS))
    """Splits evaluated at the end of training."""
    max_tokens: int | None = None
    """Cap on tokens per split for quick CPU runs; null = whole split (the paper's numbers)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {self.batch_size}")
        for split in self.splits:
            if split not in SPLITS:
                raise ConfigError("splits", f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError("max_tokens", f"must be >= 1 or null, got {self.max_tokens}")


def unit_value(loss: float, unit: str) -> float:
    return loss / math.log(2) if unit == "bpc" else math.exp(loss)


class EvaluationStopped(Exception):
    """`stop()` said a signal arrived: a full evaluation can outlast a job's time limit."""


@torch.no_grad()
def evaluate_stream(model: torch.nn.Module, stream: TokenStream, ctx: DistContext, max_blocks: int | None = None,
                    stop: Callable[[], bool] | None = None) -> tuple[float, int]:
    """(mean nll in nats, tokens) over the stream's blocks from offset 0, caches from zeros.
    `stop` is asked before each block; when it says so, EvaluationStopped is raised."""
    was_training = model.training
    model.eval()
    cache = model.init_cache(stream.rows.shape[0], device=ctx.device)
    total, count = 0.0, 0
    blocks = stream.num_blocks if max_blocks is None else min(max_blocks, stream.num_blocks)
    try:
        for index in range(blocks):
            if stop is not None and stop():
                raise EvaluationStopped
            inputs, targets = stream.block(index * stream.block_size, ctx.device)
            nll, cache = model(inputs, cache, targets)
            total += nll.double().sum().item()
            count += nll.numel()
    finally:
        model.train(was_training)
    total, count = ctx.all_reduce_sum([total, float(count)])
    return total / max(count, 1.0), int(count)


def evaluate_tokens(model: torch.nn.Module, tokens: np.ndarray, block_size: int, batch_size: int,
                    ctx: DistContext, unit: str, max_tokens: int | None = None,
                    stop: Callable[[], bool] | None = None) -> dict:
    """The full-evaluation record of one split: loss, bpc or ppl, tokens."""
    stream = TokenStream(tokens, batch_size, block_size, ctx.rows(batch_size))
    max_blocks = None if max_tokens is None else max(1, max_tokens // (batch_size * block_size))
    loss, count = evaluate_stream(model, stream, ctx, max_blocks, stop)
    return {"loss": loss, unit: unit_value(loss, unit), "tokens": count, "full": max_tokens is None}


def load_model_weights(path: Path) -> dict:
    """The model state dict of a training checkpoint folder or of a {"model": ...} file."""
    from model.convert_official import read_model_state

    return read_model_state(path / "shared.pt" if path.is_dir() else path)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="run config YAML")
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder or .pt file")
    parser.add_argument("--text", type=Path, help="raw text file to evaluate instead of the prepared splits")
    parser.add_argument("--batch-size", type=int, help="evaluation rows (default: eval.batch_size)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from experiments.data import encode_text, load_corpus
    from experiments.run_config import load_run_config
    from experiments.train import data_path
    from model import build_model

    args = _parse_args(argv)
    cfg = load_run_config(args.config, args.set)
    corpus = load_corpus(data_path(cfg), cfg.data.dataset)
    model = build_model(cfg.model)
    try:
        model.load_state_dict(load_model_weights(args.checkpoint))
    except RuntimeError as err:
        raise UserError(f"checkpoint does not fit the config: {str(err).splitlines()[1].strip()}") from None
    ctx = DistContext(rank=0, world_size=1, device=torch.device("cpu"))
    batch = args.batch_size or cfg.eval.batch_size
    sources = {"text": encode_text(args.text, corpus.meta)} if args.text else {s: corpus.split(s) for s in SPLITS}
    for name, tokens in sources.items():
        record = evaluate_tokens(model, tokens, cfg.train.block_size, batch, ctx, corpus.unit)
        print(json.dumps({"split": name, **record}))
    return 0


if __name__ == "__main__":
    run_cli(main)
