"""Convert checkpoints between the authors' released code and this project, both ways:

    python -m experiments.convert AUTHORS.pt --config CONFIG.yaml --out OURS.pt [--force]
    python -m experiments.convert --to-authors OURS --config CONFIG.yaml --out THEIRS.pt [--force]

--out is a new file: an existing one is replaced only with --force, and never an input.

Import: their file (from their `save_checkpoint`) -> `{"model": state_dict}` that
`experiments.evaluate CONFIG --checkpoint OURS.pt` and the trainer load.
Export: OURS is a `{"model": ...}` .pt file or a training checkpoint folder
(`runs/.../checkpoints/step_N`); THEIRS is what their `load_checkpoint` reads:
`iter_no`, `model` (keys `module.`-prefixed, tied tensors shared), `logger`,
`optimizer` (their optimiser's state dict: the run's Adagrad accumulators or
Adam moments when OURS is a training checkpoint, a fresh optimiser otherwise)
and `scheduler_iter` (updates done). The key mapping is `model.convert_official`'s;
this command adds the run config (geometry and optimiser) and the atomic write.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from experiments.atomic import atomic_write
from experiments.cli import ArgumentParser, output_file, run_cli
from experiments.config import config_files
from experiments.optim import learning_rate
from experiments.run_config import RunConfig, load_run_config
from model.convert_official import (authors_parameter_order, convert, our_parameter_names, read_checkpoint,
                                    read_their_checkpoint, their_tensor, to_authors)
from model.errors import UserError

AUTHORS_BATCHES_PER_ITER = 1000
"""Their `--nbatches`, the same in every released script: `iter_no` counts blocks of this many updates."""


def import_authors(path: Path, cfg: RunConfig) -> dict[str, Tensor]:
    """Their checkpoint file -> our model state dict."""
    return convert(read_their_checkpoint(path), cfg.model)


def read_ours(path: Path) -> tuple[dict[str, Tensor], dict | None, int]:
    """(model state, optimizer state or None, updates done) of our .pt file or checkpoint folder."""
    payload = read_checkpoint(path / "shared.pt" if path.is_dir() else path)
    _check_payload(payload, path)
    step = int(payload.get("state", {}).get("step", 0)) if isinstance(payload.get("state"), dict) else 0
    return payload["model"], payload.get("optimizer"), step


def _check_payload(payload: dict, path: Path) -> None:
    """UserError naming the first entry of our checkpoint that is not what training writes: every
    model entry a tensor, the optimizer state a {"state": dict, "param_groups": [dict, ...]}."""
    for name, value in payload["model"].items():
        if not isinstance(value, Tensor):
            raise UserError(f"{path}: model entry {name} is a {type(value).__name__}, not a tensor (a damaged file?)")
    optimizer = payload.get("optimizer")
    if optimizer is None:
        return
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state", {}), dict) and isinstance(groups, list)
            and all(isinstance(group, dict) for group in groups)):
        raise UserError(f"{path}: the optimizer state is not an optimizer's state_dict (a damaged file?)")


def export_authors(ours: dict[str, Tensor], optimizer: dict | None, step: int, cfg: RunConfig) -> dict:
    """Our checkpoint -> the dict their `save_checkpoint` writes."""
    return {"iter_no": step // AUTHORS_BATCHES_PER_ITER - 1, "model": to_authors(ours, cfg.model), "logger": {},
            "optimizer": authors_optimizer_state(ours, optimizer, step, cfg), "scheduler_iter": step}


def authors_optimizer_state(ours: dict[str, Tensor], optimizer: dict | None, step: int, cfg: RunConfig) -> dict:
    """Their optimiser's state dict: parameters indexed in their order, their group fields
    (Adagrad's `grad_clip`, the scheduler's `initial_lr`), our state when we have one."""
    order = authors_parameter_order(cfg.model)
    params = [torch.nn.Parameter(their_tensor(name, ours[name].detach()).clone()) for _, name in order]
    scale = 1.0 if step <= cfg.train.steps else cfg.train.finetune_lr_scale
    lr_now = learning_rate(cfg.optim, step, scale) if cfg.optim.warmup_steps else cfg.optim.lr * scale
    if cfg.optim.name == "adagrad":
        fresh = torch.optim.Adagrad(params, lr=lr_now, lr_decay=0, weight_decay=0, initial_accumulator_value=0).state_dict()
        fresh["param_groups"][0]["grad_clip"] = cfg.optim.clip if cfg.optim.clip_mode == "per_tensor" else 0.0
    else:
        fresh = torch.optim.Adam(params, lr=lr_now, betas=tuple(cfg.optim.adam_betas)).state_dict()
    if cfg.optim.warmup_steps:  # their LambdaLR records the base learning rate
        fresh["param_groups"][0]["initial_lr"] = cfg.optim.lr * scale
    if optimizer is not None and optimizer.get("state"):
        fresh["state"] = _their_optimizer_entries(optimizer, order, step, cfg)
    return fresh


def _their_optimizer_entries(optimizer: dict, order: list[tuple[str, str]], step: int, cfg: RunConfig) -> dict:
    """Our optimiser state (indexed in our parameter order) re-indexed and re-laid in theirs."""
    names = our_parameter_names(cfg.model)
    groups = optimizer.get("param_groups", [])
    indices = [i for group in groups for i in group.get("params", [])]
    if len(indices) != len(names):
        raise UserError(f"the optimizer state covers {len(indices)} tensors, the model has {len(names)}")
    state_of = {name: optimizer["state"].get(index) for name, index in zip(names, indices)}
    entries = {}
    for index, (_, name) in enumerate(order):
        state = state_of[name]
        if state is None:
            continue
        if not isinstance(state, dict) or (cfg.optim.name == "adagrad" and not isinstance(state.get("sum"), Tensor)):
            raise UserError(f"the optimizer state of {name} is not the {cfg.optim.name} state training writes "
                            "(a damaged file, or another optimizer?)")
        relaid = {k: their_tensor(name, v) if isinstance(v, Tensor) and v.dim() else v for k, v in state.items()}
        if cfg.optim.name == "adagrad":  # theirs also counts the updates of each tensor
            relaid = {"step": torch.tensor(float(step)), "sum": relaid["sum"]}
        entries[index] = relaid
    return entries


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m experiments.convert", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, help="the authors' checkpoint (.pt) to import")
    parser.add_argument("--to-authors", type=Path, metavar="OURS",
                        help="export instead: our .pt file or checkpoint folder, written in the authors' layout")
    parser.add_argument("--config", required=True, help="our run config of the same geometry")
    parser.add_argument("--out", required=True, type=Path, help="converted file to write (a new file, or --force)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    if (args.checkpoint is None) == (args.to_authors is None):
        raise UserError("give either the authors' checkpoint to import, or --to-authors OURS to export")
    output_file(args.out, "--out", inputs=(args.checkpoint, args.to_authors, *config_files(args.config)),
                force=args.force)
    cfg = load_run_config(args.config)
    if args.to_authors is not None:
        theirs = export_authors(*read_ours(args.to_authors), cfg)
        atomic_write(args.out, lambda f: torch.save(theirs, f))
        print(f"wrote {len(theirs['model'])} entries in the authors' layout into {args.out}")
        return 0
    state = import_authors(args.checkpoint, cfg)
    atomic_write(args.out, lambda f: torch.save({"model": state}, f))
    print(f"converted {len(state)} tensors into {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
