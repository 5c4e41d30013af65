"""Size and cost of a run's model:  python -m experiments.summary CONFIG.yaml [--json] [--set key=value ...]

Parameters (total, non-embedding, persistent), model FLOPs per training token and an
activation-memory estimate per micro-batch; the counts are `model.summary`'s.
"""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from experiments.cli import run_cli
from experiments.run_config import load_run_config
from model.summary import summarize


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.summary", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="run config YAML")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args(argv)
    cfg = load_run_config(args.config, args.set)
    per_gpu_batch = cfg.train.batch_size // max(1, cfg.slurm.gpus_per_node * cfg.slurm.nodes) // cfg.train.batch_split
    facts = {"name": cfg.name, "variant": cfg.model.variant,
             **summarize(cfg.model, max(1, per_gpu_batch), cfg.train.block_size)}
    if args.json:
        print(json.dumps(facts))
        return 0
    print(f"{cfg.name} ({cfg.model.variant}, {cfg.model.num_layers} layers, d {cfg.model.d_model}, "
          f"N {cfg.model.num_persistent}, span {cfg.model.attn_span})")
    print(f"  parameters      {_human(facts['params_total'])} total, {_human(facts['params_non_embedding'])} "
          f"non-embedding, {_human(facts['params_persistent'])} persistent")
    print(f"  FLOPs / token   {_human(facts['flops_per_token'])} (training)")
    print(f"  activations     {facts['activation_bytes'] / 2**30:.2f} GiB per micro-batch of {max(1, per_gpu_batch)} rows (estimate)")
    return 0


if __name__ == "__main__":
    run_cli(main)
