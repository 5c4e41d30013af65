"""Size and cost of a run's model:  python -m experiments.summary CONFIG.yaml [--json] [--set key=value ...]

Parameters (total, non-embedding, persistent), model FLOPs per training token, an
activation-memory estimate per micro-batch (the counts are `model.summary`'s), and
the size of one checkpoint: the model and optimizer state (shared.pt, written by rank
0) plus every rank's layer caches (rank_<r>.pt; none with `train.checkpoint_caches:
none`), for the processes the `slurm:` section starts. Two checkpoints are kept.
"""
from __future__ import annotations

from typing import Sequence

import torch

from experiments.cli import ArgumentParser, run_cli
from experiments import strict_json
from experiments.contract import planned_device_type, planned_processes
from experiments.run_config import RunConfig, load_run_config
from model import build_model
from model.summary import summarize


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def checkpoint_bytes(cfg: RunConfig) -> dict[str, int]:
    """Bytes of one checkpoint of `cfg`'s run (experiments/train_checkpoint.py), from the model built on
    the meta device: fp32 weights and buffers, the optimizer's state (Adagrad: one sum per weight; Adam:
    two moments), and the caches of every micro-batch of every rank (batch_size rows in all, attn_span
    positions of d_model floats per layer: an upper bound where adaptive span trims the caches)."""
    weights, params = _weights_and_params(cfg)
    optimizer = 4 * params * _optimizer_slots(cfg)
    ranks = planned_processes(cfg)
    caches = 4 * cfg.train.batch_size * cfg.model.num_layers * cfg.model.attn_span * cfg.model.d_model
    caches = caches if cfg.train.checkpoint_caches == "exact" else 0
    return {"model": weights, "optimizer": optimizer, "caches": caches, "caches_per_rank": caches // ranks,
            "ranks": ranks, "total": weights + optimizer + caches}


def state_bytes(cfg: RunConfig) -> int:
    """Bytes a training process holds at least: fp32 weights and buffers, the weights' gradients
    and the optimizer's state (activations and caches come on top)."""
    weights, params = _weights_and_params(cfg)
    return weights + 4 * params * (1 + _optimizer_slots(cfg))


def _weights_and_params(cfg: RunConfig) -> tuple[int, int]:
    """(bytes of the state dict, trainable parameters) of the model built on the meta device."""
    with torch.device("meta"):
        model = build_model(cfg.model)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return weights, sum(p.numel() for p in model.parameters() if p.requires_grad)


def _optimizer_slots(cfg: RunConfig) -> int:
    """fp32 values the optimizer keeps per weight: Adagrad one sum, Adam two moments."""
    return 2 if cfg.optim.name == "adam" else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m experiments.summary", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="run config YAML")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args(argv)
    cfg = load_run_config(args.config, args.set)
    per_gpu_batch = cfg.train.batch_size // max(1, cfg.slurm.gpus_per_node * cfg.slurm.nodes) // cfg.train.batch_split
    facts = {"name": cfg.name, "variant": cfg.model.variant,
             **summarize(cfg.model, max(1, per_gpu_batch), cfg.train.block_size,
                         cfg.model.attention_on(planned_device_type(cfg)))}
    facts["checkpoint_bytes"] = checkpoint_bytes(cfg)
    if args.json:
        print(strict_json.dumps(facts))
        return 0
    print(f"{cfg.name} ({cfg.model.variant}, {cfg.model.num_layers} layers, d {cfg.model.d_model}, "
          f"N {cfg.model.num_persistent}, span {cfg.model.attn_span})")
    print(f"  parameters      {_human(facts['params_total'])} total, {_human(facts['params_non_embedding'])} "
          f"non-embedding, {_human(facts['params_persistent'])} persistent")
    print(f"  FLOPs / token   {_human(facts['flops_per_token'])} (training)")
    print(f"  activations     {facts['activation_bytes'] / 2**30:.2f} GiB per micro-batch of {max(1, per_gpu_batch)} rows (estimate)")
    size = facts["checkpoint_bytes"]
    caches = (f"caches {size['caches_per_rank'] / 2**30:.2f} GiB per rank x {size['ranks']} ranks"
              + (" at most (adaptive span trims them)" if cfg.model.adaptive_span.enabled else "")
              if cfg.train.checkpoint_caches == "exact" else "no caches (train.checkpoint_caches: none)")
    print(f"  checkpoint      {size['total'] / 2**30:.2f} GiB: model {size['model'] / 2**30:.2f} + optimizer "
          f"{size['optimizer'] / 2**30:.2f} GiB (rank 0) + {caches}; 2 kept")
    return 0


if __name__ == "__main__":
    run_cli(main)
