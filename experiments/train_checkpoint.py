"""What a training checkpoint holds, and putting it back (the files: experiments/checkpoint.py).

`shared.pt` = {"model": state dict, "optimizer": state dict, "state": TrainState as a
dict, "config_hash": the run config's hash}; `rank_<r>.pt` = {"caches": that rank's
micro-batch caches, "rng": its RNG states}. Everything the next step depends on is
there, so a run killed at any instant and resumed ends bit-identical on CPU.
"""
from __future__ import annotations

from pathlib import Path

import torch

from experiments import checkpoint
from experiments.distributed import DistContext
from experiments.train_state import TrainState
from experiments.train_step import Caches
from model.errors import UserError


class Checkpointer:
    """Saves and restores one run's model, optimizer, progress, caches and RNG states, collectively."""

    def __init__(self, root: Path, config_hash: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 ctx: DistContext):
        self.root, self.config_hash, self.model, self.optimizer, self.ctx = root, config_hash, model, optimizer, ctx
        self.last_step: int | None = None
        """Step of the checkpoint this process last saved or restored."""

    def save(self, state: TrainState, caches: Caches) -> None:
        """Write the checkpoint of `state.step` (every rank calls this)."""
        shared = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                  "state": state.to_dict(), "config_hash": self.config_hash}
        per_rank = {"caches": caches, "rng": checkpoint.rng_state()}
        checkpoint.save(self.root, state.step, shared, per_rank, self.ctx)
        self.last_step = state.step

    def restore(self) -> tuple[TrainState, Caches] | None:
        """Load the newest checkpoint every rank can read into the model, optimizer and RNGs;
        returns its progress and this rank's caches, or None when there is none.
        Raises UserError when the checkpoints belong to another config."""
        loaded = checkpoint.load_latest(self.root, self.ctx)
        if loaded is None:
            return None
        shared, per_rank = loaded
        if shared.get("config_hash") != self.config_hash:
            raise UserError(f"checkpoints in {self.root} belong to another config; move them away to restart")
        self.model.load_state_dict(shared["model"])
        self.optimizer.load_state_dict(shared["optimizer"])
        state = TrainState.from_dict(shared["state"])
        caches = [[c.to(self.ctx.device) for c in cache] for cache in per_rank["caches"]]
        checkpoint.set_rng_state(per_rank["rng"])
        self.last_step = state.step
        return state, caches
