"""Train one run:  python -m experiments.train CONFIG.yaml [--set key=value ...] [--run-dir DIR]

The run directory (default `runs/<grid or "single">/<run_id>`) is created or
resumed: running the same command again after a crash continues from the last
checkpoint. Exit status: 0 done, 1 failed, 2 bad input, 128+N stopped by signal N
(a checkpoint was written first).
"""
from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path
from typing import Sequence

import torch

from experiments.atomic import atomic_write_text
from experiments.cli import run_cli
from experiments.data import load_corpus
from experiments.distributed import DistContext, init_distributed, shutdown_distributed
from experiments.run_config import RunConfig, data_path, load_run_config
from experiments.run_dir import PROJECT_ROOT, RunDir
from experiments.train_step import NonFiniteLoss
from experiments.trainer import Trainer
from model.errors import ConfigError, UserError

log = logging.getLogger("train")


def default_run_dir(cfg: RunConfig, root: Path | None = None) -> Path:
    return (root or PROJECT_ROOT / "runs") / (cfg.grid or "single") / cfg.run_id


def prepare_run_dir(cfg: RunConfig, run_dir: RunDir) -> None:
    """Write config.yaml, or check that the existing one is this config."""
    if run_dir.config.exists():
        existing = load_run_config(run_dir.config)
        if existing.config_hash != cfg.config_hash:
            raise UserError(f"{run_dir.path} holds a different config ({existing.run_id}); choose another --run-dir")
        return
    atomic_write_text(run_dir.config, cfg.to_yaml())


def setup_logging(rank: int) -> None:
    """Plain timestamped lines on stderr: they read well in SLURM log files."""
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr, force=True,
                        format=f"%(asctime)s [rank {rank}] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")


def run_training(cfg: RunConfig, run_dir: RunDir) -> int:
    """Train (or resume) `cfg` in `run_dir`; the exit status of the run.

    Any error after start-up marks the run FAILED in status.json (with the error
    tail that `slurm.status --tail` shows) before it propagates.
    """
    ctx = init_distributed(cfg.train.device)
    setup_logging(ctx.rank)
    try:
        trainer = _start(cfg, run_dir, ctx)
        trainer.run()
    except NonFiniteLoss as err:
        _fail(run_dir, ctx.is_main, str(err))
        return 1
    except UserError as err:
        _fail(run_dir, ctx.is_main, str(err))
        raise
    except Exception:
        _fail(run_dir, ctx.is_main, traceback.format_exc()[-3000:])
        raise
    finally:
        shutdown_distributed()
    stopped = trainer.interrupt.stopped_by
    return 128 + stopped if stopped else 0


def _start(cfg: RunConfig, run_dir: RunDir, ctx: DistContext) -> Trainer:
    """Check the data against the config, write the run directory, build the trainer."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    try:
        corpus = load_corpus(data_path(cfg), cfg.data.dataset)
    except ConfigError as err:
        raise err.under("data") from None
    if len(corpus.vocab) != cfg.model.vocab_size:
        raise UserError(f"model.vocab_size={cfg.model.vocab_size} but the data at {cfg.data.path} has "
                        f"{len(corpus.vocab)} symbols; set model.vocab_size: {len(corpus.vocab)}")
    if ctx.is_main:
        run_dir.path.mkdir(parents=True, exist_ok=True)
        prepare_run_dir(cfg, run_dir)
        run_dir.record_provenance(int(run_dir.read_status().get("attempt") or 0) + 1)
    return Trainer(cfg, run_dir, corpus, ctx)


def _fail(run_dir: RunDir, is_main: bool, error: str) -> None:
    if is_main and run_dir.path.exists():
        run_dir.write_status("FAILED", error=error)
    log.error("run failed: %s", error.strip().splitlines()[-1])


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.train", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="run config YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set model.num_persistent=256 (repeatable)")
    parser.add_argument("--run-dir", type=Path, help="run directory (default runs/<grid>/<run_id>)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    cfg = load_run_config(args.config, args.set)
    run_dir = RunDir(args.run_dir or default_run_dir(cfg))
    return run_training(cfg, run_dir)


if __name__ == "__main__":
    run_cli(main)
