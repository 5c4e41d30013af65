"""A/B of the banded attention in one process:  python -m experiments.benchmark_ab CONFIG.yaml --old FILE [--set k=v ...] [--rounds N]

Times the trainer's step (experiments/train_step.py TrainStep, as experiments.benchmark does)
with two versions of model/attention.py: the one in FILE (for example `git show
REV:model/attention.py > /tmp/old_attention.py`) and this tree's. Two models with the same
seed and tokens step alternately, old/new then new/old, in one process, so that a noisy
machine slows both alike; prints the median of the per-round time ratios old/new (above 1:
this tree is faster) with its quartiles, and the largest loss difference between the two
(0 when the math is bit-identical; training on random tokens amplifies rounding
differences step by step, so only the first steps' differences are small).
Why: on shared VMs tokens/s of separate runs swing by 1.5x within minutes
(results/benchmarks/README.md), far more than a change of a few percent.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

import model.layers
from experiments.benchmark import bench_config, random_tokens
from experiments.cli import run_cli
from experiments.distributed import DistContext
from experiments.run_config import RunConfig
from experiments.train_state import TrainState
from experiments.train_step import TrainStep
from model import build_model
from model.errors import UserError

WARMUP_ROUNDS = 2


def load_attention(path: Path) -> Callable:
    """`projected_context_attention` of the model/attention.py at `path`, as model/layers.py wraps it.
    Raises UserError if the file is missing or has no such function."""
    if not path.is_file():
        raise UserError(f"--old: no file {path}")
    spec = importlib.util.spec_from_file_location("old_attention", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "projected_context_attention"):
        raise UserError(f"--old: {path} has no projected_context_attention (not a model/attention.py?)")
    return torch.compiler.disable(module.projected_context_attention)


def alternate(cfg: RunConfig, versions: dict[str, Callable], rounds: int) -> dict[str, list[float]]:
    """Seconds and losses of each version's step, `rounds` + WARMUP_ROUNDS rounds, order swapped
    every round; the warm-up rounds are dropped. Returns {version: [seconds...], version + ' loss': [...]}."""
    device = torch.device("cpu")
    steps = {}
    for name in versions:
        torch.manual_seed(cfg.train.seed)
        steps[name] = (TrainStep(cfg, build_model(cfg.model), random_tokens(cfg, rounds + WARMUP_ROUNDS + 1),
                                 DistContext(rank=0, world_size=1, device=device)), TrainState())
    out: dict[str, list[float]] = {key: [] for name in versions for key in (name, name + " loss")}
    names = list(versions)
    for i in range(rounds + WARMUP_ROUNDS):
        for name in names if i % 2 == 0 else names[::-1]:
            model.layers._banded_attention = versions[name]
            update, state = steps[name]
            start = time.perf_counter()
            loss = update(state, 1.0)
            if i >= WARMUP_ROUNDS:
                out[name].append(time.perf_counter() - start)
                out[name + " loss"].append(float(loss))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.benchmark_ab", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="run config YAML (CPU)")
    parser.add_argument("--old", type=Path, required=True, help="another tree's model/attention.py")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--rounds", type=int, default=16, help="timed rounds (one step of each version)")
    args = parser.parse_args(argv)
    if args.rounds < 4:
        raise UserError("--rounds must be >= 4 (quartiles)")
    cfg = bench_config(args.config, args.set)
    versions = {"old": load_attention(args.old), "new": model.layers._banded_attention}
    try:
        times = alternate(cfg, versions, args.rounds)
    finally:
        model.layers._banded_attention = versions["new"]
    ratios = [old / new for old, new in zip(times["old"], times["new"])]
    low, _, high = statistics.quantiles(ratios, n=4)
    loss_diff = max(abs(a - b) for a, b in zip(times["old loss"], times["new loss"]))
    print(f"{cfg.name}, span {cfg.model.attn_span}: old {1e3 * statistics.median(times['old']):.1f} ms/step, "
          f"new {1e3 * statistics.median(times['new']):.1f} ms/step; old/new per round: median "
          f"{statistics.median(ratios):.3f} (quartiles {low:.3f}-{high:.3f}, {args.rounds} rounds); "
          f"largest loss difference {loss_diff:.2e} ({torch.get_num_threads()} threads)")
    return 0


if __name__ == "__main__":
    run_cli(main)
