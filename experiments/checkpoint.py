"""Checkpoints: atomic, per-rank, the last two kept, incomplete ones skipped.

Layout: `checkpoints/step_<N>/shared.pt` (model, optimizer, counters: written by
rank 0) and `rank_<r>.pt` (that rank's caches and RNG states). Files are first
written into `step_<N>.partial/`, each atomically; after every rank is done,
rank 0 renames the folder. A folder without `.partial` is therefore complete,
and a crash at any instant leaves the previous checkpoint intact.
"""
from __future__ import annotations

import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.atomic import atomic_write, fsync_dir
from experiments.distributed import DistContext

KEEP = 2
_COMPLETE = re.compile(r"^step_(\d+)$")
log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """Every RNG the training step may touch, in a form torch.load(weights_only) accepts."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[-2], tuple(py[:-2]), py[-1]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(root: Path, step: int, shared: dict[str, Any], per_rank: dict[str, Any], ctx: DistContext) -> Path:
    """Write checkpoint `step` collectively; returns its final folder."""
    partial = root / f"step_{step:09d}.partial"
    final = root / f"step_{step:09d}"
    if ctx.is_main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    ctx.barrier()
    atomic_write(partial / f"rank_{ctx.rank}.pt", lambda f: torch.save(per_rank, f))
    ctx.barrier()
    if ctx.is_main:
        atomic_write(partial / "shared.pt", lambda f: torch.save(shared, f))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        fsync_dir(root)
        _prune(root)
    ctx.barrier()
    return final


def _prune(root: Path) -> None:
    for old in complete_checkpoints(root)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob("step_*.partial"):
        shutil.rmtree(stale, ignore_errors=True)


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders, newest first."""
    found = [p for p in root.glob("step_*") if p.is_dir() and _COMPLETE.match(p.name)]
    return sorted(found, key=lambda p: int(_COMPLETE.match(p.name).group(1)), reverse=True)


def load_latest(root: Path, ctx: DistContext) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(shared, this rank's state) of the newest checkpoint every rank can read, or None."""
    for folder in complete_checkpoints(root) if root.exists() else []:
        loaded = _try_load(folder, ctx)
        if ctx.all_agree(loaded is not None):
            return loaded
        log.warning("skipping unreadable checkpoint %s", folder)
    return None


def _try_load(folder: Path, ctx: DistContext) -> tuple[dict[str, Any], dict[str, Any]] | None:
    try:
        shared = torch.load(folder / "shared.pt", map_location="cpu", weights_only=True)
        per_rank = torch.load(folder / f"rank_{ctx.rank}.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file means "skip this checkpoint"
        log.warning("checkpoint %s cannot be read: %s", folder, str(err).splitlines()[0] if str(err) else err)
        return None
    return shared, per_rank
