"""Evaluate any checkpoint as the paper reports it (the loops: experiments/evaluation.py).

    python -m experiments.evaluate CONFIG.yaml --checkpoint CKPT [--text FILE] [--batch-size 8] [--dtype float64]
                                   [--device auto|cpu|cuda] [--max-tokens N] [--threads N]

CKPT is a training checkpoint folder (`checkpoints/step_N`) or a `.pt` file holding
{"model": state_dict} (e.g. from model.convert_official). With `--text`, the
file's bytes are mapped to tokens exactly as the config's prepared corpus was
(`experiments.data.encode_text`: same symbols, same ids, a newline is `<eos>`);
without it, the prepared valid and test splits are evaluated. One JSON line per
split on stdout. Before a model is built, the config is checked against its prepared
data as `experiments.train` checks it (the dataset, the vocabulary size, ids by frequency
for adaptive output: experiments/contract.py), and every split (or the text) must fill the
batch's rows with a block; each refusal is one line naming the field or flag. A training
checkpoint carries the hash of the config it was trained with: evaluating it with another
config is refused in one line, unless `--allow-config-mismatch` says it is intended (every
line then records both hashes).
`--device auto` (the default) evaluates on the GPU when one is visible;
`--max-tokens` caps the tokens read per split (whole blocks; the record then says
"full": false, not comparable with published numbers); `--threads` sets torch's CPU threads.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from experiments.batches import TokenStream
from experiments.cli import ArgumentParser, at_least, run_cli
from experiments import strict_json
from experiments.contract import check_model_fits_data
from experiments.data import META, Corpus, encode_text, load_corpus
from experiments.distributed import DistContext, resolve_device
from experiments.evaluation import SPLITS, evaluate_tokens
from experiments.run_config import data_path, load_run_config
from model import build_model
from experiments.train_checkpoint import config_mismatch
from experiments.train_config import MAX_THREADS, threads_flag
from model.convert_official import in_their_layout, read_checkpoint, read_model_state
from model.errors import ConfigError, UserError


DTYPES = {"float32": torch.float32, "float64": torch.float64}
"""--dtype choices: float64 evaluates the same weights in double precision (e.g. against reference numbers)."""


def load_model_weights(path: Path) -> dict:
    """The model state dict of a training checkpoint folder or of a {"model": ...} file."""
    return read_model_state(path / "shared.pt" if path.is_dir() else path)


def _config_identity(cfg, payload: dict, allow_mismatch: bool) -> dict:
    """The hashes of the config given and of the one the checkpoint was trained with (recorded in
    every output line); a checkpoint trained with another config is refused unless `allow_mismatch`."""
    trained = payload.get("config_hash")
    if trained is None:  # not a training checkpoint of this harness (e.g. converted from the authors')
        return {}
    mismatch = config_mismatch(cfg, payload)
    if mismatch and not allow_mismatch:
        raise UserError(f"the checkpoint was trained with another config ({mismatch}); evaluate it with its own "
                        "config, or pass --allow-config-mismatch if this is intended")
    return {"config_hash": cfg.config_hash, "checkpoint_config_hash": trained, "config_mismatch": bool(mismatch)}


def _refuse_their_layout(state: dict, args: argparse.Namespace) -> None:
    """A one-line UserError for a state dict of the authors' layout: convert it first."""
    if in_their_layout(state):
        raise UserError(f"{args.checkpoint} is a checkpoint of the authors' code: convert it first, "
                        f"python -m experiments.convert {args.checkpoint} --config {args.config} --out OURS.pt")


def _load_model(cfg, state: dict) -> torch.nn.Module:
    """`cfg`'s model with `state` loaded; a one-line UserError for a state that does not fit."""
    model = build_model(cfg.model)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        problem = str(err).splitlines()[1].strip()
        raise UserError(f"checkpoint does not fit the config: {problem[:300]}{'...' if len(problem) > 300 else ''}") from None
    return model


def open_data(cfg) -> Corpus:
    """The config's prepared corpus, held to the data contract as train's preflight holds it
    (experiments/contract.py check_model_fits_data): the dataset, `model.vocab_size` against the
    vocabulary (a model of another vocabulary fails deep inside the embedding otherwise), ids
    by frequency for adaptive output. Reads meta.json only. Raises ConfigError naming the field."""
    try:
        corpus = load_corpus(data_path(cfg), cfg.data.dataset)
    except ConfigError as err:
        raise err.under("data") from None
    check_model_fits_data(cfg, corpus.meta, corpus.path / META)  # the split sizes: fitting_sources
    return corpus


def fitting_sources(corpus: Corpus, text: Path | None, batch: int, block: int) -> dict[str, np.ndarray]:
    """The token streams to evaluate (the `--text` file, else the valid and test splits), each
    long enough for `batch` rows of `block` + 1 tokens: checked before a model is built (a short
    split used to be found only after it, and without its name). Raises UserError."""
    sources = {"text": encode_text(text, corpus.meta)} if text else {s: corpus.split(s) for s in SPLITS}
    for name, tokens in sources.items():
        try:
            TokenStream(tokens, batch, block)  # views of the memory map: nothing is read
        except UserError as err:
            raise UserError(f"{name}: {err} (rows: --batch-size, default eval.batch_size)") from None
    return sources


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m experiments.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="run config YAML")
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder or .pt file")
    parser.add_argument("--text", type=Path, help="raw text file to evaluate instead of the prepared splits")
    parser.add_argument("--batch-size", type=at_least(1), help="evaluation rows (default: eval.batch_size)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="precision of the weights, caches and arithmetic (default: float32)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to evaluate (default: auto, the GPU when one is visible)")
    parser.add_argument("--max-tokens", type=at_least(1), help="tokens per split at most (default: the whole split)")
    parser.add_argument("--threads", type=threads_flag, default=0,
                        help=f"torch CPU threads, at most {MAX_THREADS} (default: torch's choice)")
    parser.add_argument("--allow-config-mismatch", action="store_true",
                        help="evaluate a checkpoint trained with another config (both hashes are recorded)")
    args = parser.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device, 0)
    cfg = load_run_config(args.config, args.set)
    payload = read_checkpoint(args.checkpoint / "shared.pt" if args.checkpoint.is_dir() else args.checkpoint)
    _refuse_their_layout(payload["model"], args)
    identity = _config_identity(cfg, payload, args.allow_config_mismatch)
    # the data contract before a model is built (tests/test_convert_official.py: the file is judged first)
    corpus = open_data(cfg)
    batch = args.batch_size or cfg.eval.batch_size
    sources = fitting_sources(corpus, args.text, batch, cfg.train.block_size)
    model = _load_model(cfg, payload["model"]).to(device=device, dtype=DTYPES[args.dtype])
    ctx = DistContext(rank=0, world_size=1, device=device)
    for name, tokens in sources.items():
        record = evaluate_tokens(model, tokens, cfg.train.block_size, batch, ctx, corpus.unit, args.max_tokens)
        if not math.isfinite(record["loss"]):
            print(f"note: {name}: the loss is {record['loss']} (are the weights finite?); "
                  "the line says null", file=sys.stderr)
        print(strict_json.dumps({"split": name, **record, **identity}))
    return 0


if __name__ == "__main__":
    run_cli(main)
