"""What a training checkpoint holds, and putting it back (the files: experiments/checkpoint.py).

`shared.pt` = {"model": state dict, "optimizer": state dict, "state": TrainState as a
dict, "config_hash": the run config's hash, "config": the resolved config, "layout":
{"world_size", "batch_split", "caches"}}; `rank_<r>.pt` = {"caches": that rank's
micro-batch caches (left out with `train.checkpoint_caches: none`), "rng": its RNG states}.

Resuming on the layout that wrote the checkpoint restores everything, so a run
killed at any instant and resumed ends bit-identical on CPU. Resuming on another
layout (another number of processes or `train.batch_split`) is elastic: the model,
optimizer and progress are restored, each rank's data position follows from the
global one (`TrainState.offset` is the same column of every row, whatever rank
reads which rows), the layer caches start empty and the RNGs are seeded from
(seed, rank, step); the run continues from the same step, not bit-identically.
"""
from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

import numpy as np
import torch

from experiments import checkpoint
from experiments.distributed import DistContext
from experiments.run_config import NOT_HASHED, RunConfig, _without, load_run_config
from experiments.run_dir import RunDir
from experiments.train_state import TrainState
from experiments.train_step import Caches
from model.errors import UserError

log = logging.getLogger("train")


class CheckpointsUnreadable(UserError):
    """Checkpoints exist but none can be read: no silent restart from step 0."""


@dataclass
class Restored:
    """What `Checkpointer.restore` put back."""

    state: TrainState
    caches: Caches | None
    """This rank's caches; None when they start empty (another layout, or caches not saved)."""
    note: str | None
    """Why the resume is not exact, in words; None when it is."""
    resume: dict[str, Any]
    """The record of this resume for provenance.json and status.json."""


class Checkpointer:
    """Saves and restores one run's model, optimizer, progress, caches and RNG states, collectively."""

    def __init__(self, root: Path, config_hash: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 ctx: DistContext, *, batch_split: int = 1, caches: str = "exact", seed: int = 0,
                 accepted_hashes: Collection[str] = (), config: dict[str, Any] | None = None):
        self.root, self.config_hash, self.model, self.optimizer, self.ctx = root, config_hash, model, optimizer, ctx
        self.batch_split, self.caches_mode, self.seed, self.config = batch_split, caches, seed, config
        self.accepted_hashes = {config_hash, *accepted_hashes}
        """Hashes a checkpoint of this run may carry: the config's, and its legacy hashes (run_config.py)."""
        self.last_step: int | None = None
        """Step of the checkpoint this process last saved or restored."""
        self.verified: set[int] = set()
        """Steps of the checkpoints this process wrote or read back: the only ones pruning counts as good."""

    @property
    def layout(self) -> dict[str, Any]:
        return {"world_size": self.ctx.world_size, "batch_split": self.batch_split, "caches": self.caches_mode}

    def save(self, state: TrainState, caches: Caches) -> None:
        """Write the checkpoint of `state.step` (every rank calls this; rank 0 alone writes the shared state)."""
        shared = None
        if self.ctx.is_main:
            shared = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                      "state": state.to_dict(), "config_hash": self.config_hash, "layout": self.layout}
            if self.config is not None:
                shared["config"] = self.config
        per_rank: dict[str, Any] = {"rng": checkpoint.rng_state()}
        if self.caches_mode == "exact":
            per_rank["caches"] = caches
        checkpoint.save(self.root, state.step, shared, per_rank, self.ctx, self.verified)
        self.verified.add(state.step)
        self.last_step = state.step

    def restore(self, skip_damaged: bool = False) -> Restored | None:
        """Load the newest checkpoint every rank can read into the model, optimizer and RNGs; None
        when there is none. Raises UserError when the checkpoints belong to another config, and
        CheckpointsUnreadable when checkpoints exist but none can be read (unless `skip_damaged`)."""
        loaded, damaged = checkpoint.load_latest(self.root, self.ctx, self.batch_split)
        if loaded is None:
            if damaged and not skip_damaged:
                names = ", ".join(p.name for p in damaged)
                raise CheckpointsUnreadable(
                    f"every checkpoint in {self.root} is unreadable ({names}); not restarting from step 0 "
                    "silently: move them away, or pass --restart to start the run over")
            return None
        shared = loaded.shared
        trained = shared.get("config_hash")
        if not isinstance(trained, str) or trained not in self.accepted_hashes:
            raise UserError(f"checkpoints in {self.root} belong to another config; move them away to restart")
        self.model.load_state_dict(shared["model"])
        self.optimizer.load_state_dict(shared["optimizer"])
        state = TrainState.from_dict(shared["state"])
        self.last_step = state.step
        self.verified.add(loaded.step)
        written = loaded.layout
        resume = {"step": state.step, "checkpoint": loaded.folder.name, "written_by": written, "layout": self.layout,
                  "skipped_unreadable": [p.name for p in damaged]}
        per_rank = loaded.per_rank
        if per_rank is None:
            self._seed_rngs(state.step)
            resume["caches"] = "empty"
            resume["exact"] = False
            note = (f"checkpoint {loaded.folder.name} was written by {_describe(written)}; this attempt runs "
                    f"{_describe(self.layout)}: model, optimizer and step restored, each rank's data position "
                    "taken from the global one, layer caches start empty (not bit-identical to an "
                    "uninterrupted run)")
            return Restored(state, None, note, resume)
        checkpoint.set_rng_state(per_rank["rng"])
        if "caches" not in per_rank:
            resume["caches"] = "empty"
            resume["exact"] = False
            note = (f"checkpoint {loaded.folder.name} holds no layer caches (train.checkpoint_caches: none): "
                    "they start empty (not bit-identical to an uninterrupted run)")
            return Restored(state, None, note, resume)
        caches = [[c.to(self.ctx.device) for c in cache] for cache in per_rank["caches"]]
        resume["caches"] = "restored"
        resume["exact"] = True
        return Restored(state, caches, None, resume)

    def _seed_rngs(self, step: int) -> None:
        """RNGs for an elastic resume: a function of (seed, rank, step), different on every rank."""
        seeds = np.random.SeedSequence([self.seed, self.ctx.rank, step]).generate_state(2)
        torch.manual_seed(int(seeds[0]))
        np.random.seed(int(seeds[1]))
        random.seed(int(seeds[1]))


def _describe(layout: dict[str, Any]) -> str:
    world, split = layout.get("world_size"), layout.get("batch_split")
    processes = f"{world} process{'es' if world != 1 else ''}"
    return processes if split is None else f"{processes} (batch_split {split})"


def accepted_hashes(cfg: RunConfig, run_dir: RunDir) -> set[str]:
    """Config hashes the checkpoints of `cfg`'s run may carry: its hash, and the legacy hash
    (run_config.py) of the config its run directory was made with, for checkpoints written before
    the cadence fields left the hash (that run may since have been resumed with another cadence)."""
    hashes = set(cfg.known_hashes())
    named = re.fullmatch(r".+-([0-9a-f]{8})", run_dir.path.name)
    if named:
        hashes.add(named.group(1))
    if run_dir.config.is_file():
        try:
            hashes |= load_run_config(run_dir.config).known_hashes()
        except (UserError, OSError):
            pass
    return hashes


def config_mismatch(cfg: RunConfig, shared: dict[str, Any]) -> str | None:
    """Why a checkpoint's `shared` payload was not trained with `cfg` (its config hash differs), in
    words naming the differing fields when the checkpoint holds its config; None when it matches or
    carries no hash (e.g. a converted file of the authors). A hash that is not a string is a
    damaged file's, never a match."""
    trained = shared.get("config_hash")
    if trained is None:
        return None
    if not isinstance(trained, str):
        return f"its config hash {trained!r} is not a hash: a damaged or foreign file"
    if trained in cfg.known_hashes():
        return None
    theirs = shared.get("config")
    if not isinstance(theirs, dict):
        return f"config hash {trained} in the checkpoint, {cfg.config_hash} here"
    ours, theirs = _flat(_without(cfg.to_dict(), NOT_HASHED)), _flat(_without(theirs, NOT_HASHED))
    differ = [f"{key}: {theirs.get(key)!r} in the checkpoint, {ours.get(key)!r} here"
              for key in sorted(set(ours) | set(theirs)) if ours.get(key) != theirs.get(key)]
    return "; ".join(differ[:4]) + ("; ..." if len(differ) > 4 else "") if differ else \
        f"config hash {trained} in the checkpoint, {cfg.config_hash} here"


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
