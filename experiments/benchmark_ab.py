"""A/B of the banded attention in one process:  python -m experiments.benchmark_ab CONFIG.yaml --old FILE [--set k=v ...] [--rounds N]

Times the trainer's step (experiments/train_step.py TrainStep, as experiments.benchmark does)
with two versions of model/attention.py: the one in FILE (for example `git show
REV:model/attention.py > /tmp/old_attention.py`) and this tree's. Two models with the same
seed and tokens step alternately, old/new then new/old, in one process, so that a noisy
machine slows both alike; prints the median of the per-round time ratios old/new (above 1:
this tree is faster) with its quartiles, and the two versions' loss difference at step 1 and
its largest (0 when the math is bit-identical, dropout included: each version keeps its own
random-number state; training on random tokens amplifies rounding differences step by step,
so only the first steps' differences stay at rounding level). CPU only, and the banded
attention only (the function swapped).
Why: on shared VMs tokens/s of separate runs swing by 1.5x within minutes
(results/benchmarks/README.md), far more than a change of a few percent.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import inspect
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

import model.layers
from experiments.benchmark import attention_used, bench_config, new_step
from experiments.cli import ArgumentParser, at_least, run_cli
from experiments.run_config import RunConfig
from model import attention
from model.errors import UserError

WARMUP_ROUNDS = 2
MIN_ROUNDS = 8
"""Fewer rounds give quartiles too wide to read on a shared VM (4 rounds of one file against
itself gave medians of 0.69 and 1.49 there)."""


def load_attention(path: Path) -> Callable:
    """`projected_context_attention` of the model/attention.py at `path`, as model/layers.py wraps it.
    Raises UserError if the file is missing, fails to import, or has no such function with
    this tree's parameters."""
    if not path.is_file():
        raise UserError(f"--old: no file {path}")
    loader = importlib.machinery.SourceFileLoader("old_attention", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    try:
        loader.exec_module(module)
    except (Exception, SystemExit) as err:  # anything the file raises is the file's problem
        first = (str(err).splitlines() or [""])[0]
        raise UserError(f"--old: {path} fails to import: {type(err).__name__}: {first}") from None
    fn = getattr(module, "projected_context_attention", None)
    if not callable(fn):
        raise UserError(f"--old: {path} has no function projected_context_attention (not a model/attention.py?)")
    theirs, ours = list(inspect.signature(fn).parameters), list(inspect.signature(attention.projected_context_attention).parameters)
    if theirs != ours:
        raise UserError(f"--old: {path}'s projected_context_attention takes ({', '.join(theirs)}), "
                        f"this tree's ({', '.join(ours)})")
    return torch.compiler.disable(fn)


def check_config(cfg: RunConfig) -> None:
    """Raises UserError unless the step runs the banded attention on CPU (the only path the
    swapped function is in)."""
    if cfg.train.device != "cpu":
        raise UserError(f"benchmark_ab times the CPU step: train.device is {cfg.train.device} (add --set train.device=cpu)")
    used = attention_used(cfg, torch.device("cpu"))
    if used != "banded":
        raise UserError(f"benchmark_ab swaps the banded attention, but model.attention is {used} (the step would not call it)")


def alternate(cfg: RunConfig, versions: dict[str, Callable], rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(seconds, losses) of each version's steps: `rounds` + WARMUP_ROUNDS rounds, the order
    swapped every round; the warm-up rounds' seconds are dropped, their losses kept. Each
    version keeps its own random-number state (dropout), so one file against itself gives
    identical losses."""
    steps, rng = {}, {}
    for name in versions:
        steps[name] = new_step(cfg, torch.device("cpu"), rounds + WARMUP_ROUNDS + 1)
        rng[name] = torch.get_rng_state()
    seconds: dict[str, list[float]] = {name: [] for name in versions}
    losses: dict[str, list[float]] = {name: [] for name in versions}
    names = list(versions)
    for i in range(rounds + WARMUP_ROUNDS):
        for name in names if i % 2 == 0 else names[::-1]:
            model.layers._banded_attention = versions[name]
            update, state = steps[name]
            torch.set_rng_state(rng[name])
            start = time.perf_counter()
            loss = update(state, 1.0)
            rng[name] = torch.get_rng_state()
            if i >= WARMUP_ROUNDS:
                seconds[name].append(time.perf_counter() - start)
            losses[name].append(float(loss))
    return seconds, losses


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m experiments.benchmark_ab", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="run config YAML (CPU)")
    parser.add_argument("--old", type=Path, required=True, help="another tree's model/attention.py")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--rounds", type=at_least(MIN_ROUNDS), default=16, help=f"timed rounds (one step of each version), >= {MIN_ROUNDS}")
    args = parser.parse_args(argv)
    cfg = bench_config(args.config, args.set)
    check_config(cfg)
    versions = {"old": load_attention(args.old), "new": model.layers._banded_attention}
    try:
        times, losses = alternate(cfg, versions, args.rounds)
    finally:
        model.layers._banded_attention = versions["new"]
    ratios = [old / new for old, new in zip(times["old"], times["new"])]
    low, _, high = statistics.quantiles(ratios, n=4)
    loss_diff = [abs(a - b) for a, b in zip(losses["old"], losses["new"])]
    print(f"{cfg.name}, span {cfg.model.attn_span}: old {1e3 * statistics.median(times['old']):.1f} ms/step, "
          f"new {1e3 * statistics.median(times['new']):.1f} ms/step; old/new per round: median "
          f"{statistics.median(ratios):.3f} (quartiles {low:.3f}-{high:.3f}, {args.rounds} rounds); "
          f"loss difference at step 1 {loss_diff[0]:.2e}, largest {max(loss_diff):.2e} over {len(loss_diff)} steps "
          f"({torch.get_num_threads()} threads)")
    return 0


if __name__ == "__main__":
    run_cli(main)
