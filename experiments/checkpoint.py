"""Checkpoints on disk: atomic, per-rank, the last two good ones kept, damaged ones skipped.

Layout: `checkpoints/step_<N>/shared.pt` (model, optimizer, progress, the config's
identity and the process layout that wrote it: written by rank 0 alone) and
`rank_<r>.pt` (that rank's layer caches, unless `train.checkpoint_caches: none`, and
its RNG states: written by each rank). Every rank writes its files into
`step_<N>.partial/`, each atomically, then all meet at one barrier, after which
rank 0 alone renames the folder while the others train on. A folder without
`.partial` is therefore complete, and a crash at any instant leaves the previous
checkpoint intact.

Reading: a checkpoint written by another layout (another number of processes, or
another `train.batch_split`) is not damaged: its shared state is loaded and its
rank files are simply not needed (the caller starts the layer caches empty).
"Unreadable" is reserved for damaged files: a shared.pt that does not load, or,
on the same layout, a rank file that does not. Pruning keeps the KEEP newest
checkpoints this process wrote or loaded (`verified`): a damaged newest checkpoint
never causes an older good one to be deleted.
"""
from __future__ import annotations

import logging
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

import numpy as np
import torch

from experiments.atomic import atomic_write, fsync_dir
from experiments.distributed import DistContext

KEEP = 2
_COMPLETE = re.compile(r"^step_(\d+)$")
_RANK_FILE = re.compile(r"^rank_(\d+)\.pt$")
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


def step_of(folder: Path) -> int:
    return int(folder.name.split("_", 1)[1].split(".", 1)[0])


class CheckpointIncomplete(RuntimeError):
    """Another rank failed to write its part of a checkpoint (this rank's part was written)."""


def save(root: Path, step: int, shared: dict[str, Any] | None, per_rank: dict[str, Any], ctx: DistContext,
         verified: Collection[int] = ()) -> Path:
    """Write checkpoint `step` collectively (every rank calls this; `shared` matters on rank 0 only);
    returns its final folder. `verified`: steps of checkpoints known good, for pruning."""
    partial = root / f"step_{step:09d}.partial"
    final = root / f"step_{step:09d}"
    error: OSError | None = None
    try:
        partial.mkdir(parents=True, exist_ok=True)  # every rank: no barrier before writing
        atomic_write(partial / f"rank_{ctx.rank}.pt", lambda f: torch.save(per_rank, f))
        if ctx.is_main:
            atomic_write(partial / "shared.pt", lambda f: torch.save(shared, f))
    except OSError as err:  # e.g. a full disk: every rank must learn it, none may wait for the others
        error = err
    if not ctx.all_agree(error is None):  # the one barrier: every rank's file is in place
        if error is not None:
            raise error
        raise CheckpointIncomplete(f"another rank could not write its part of checkpoint {final.name} "
                                   "(its error line says why); the previous checkpoint stays")
    if ctx.is_main:
        _drop_leftovers(partial, ctx.world_size)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        fsync_dir(root)
        prune(root, step, {*verified, step})
    return final


def _drop_leftovers(partial: Path, world_size: int) -> None:
    """Files a crashed earlier attempt at this step left: temporary files, rank files of a larger layout."""
    for path in partial.iterdir():
        match = _RANK_FILE.match(path.name)
        if path.name.endswith(".tmp") or (match and int(match.group(1)) >= world_size):
            path.unlink(missing_ok=True)


def prune(root: Path, current: int, verified: Collection[int]) -> None:
    """Delete the checkpoints older than the KEEP newest verified ones, and stale partial folders."""
    good = 0
    for folder in complete_checkpoints(root):
        if good >= KEEP:
            shutil.rmtree(folder, ignore_errors=True)
        elif step_of(folder) in verified:
            good += 1
    for stale in root.glob("step_*.partial"):
        if step_of(stale) < current:  # a later one may be in progress on another rank
            shutil.rmtree(stale, ignore_errors=True)


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders, newest first."""
    found = [p for p in root.glob("step_*") if p.is_dir() and _COMPLETE.match(p.name)] if root.exists() else []
    return sorted(found, key=step_of, reverse=True)


def written_layout(folder: Path, shared: dict[str, Any]) -> dict[str, Any]:
    """{"world_size", "batch_split", "caches"} of the run that wrote a checkpoint. Checkpoints from
    before layouts were recorded: the number of rank files, batch_split unknown (None), caches exact."""
    layout = shared.get("layout")
    if isinstance(layout, dict):
        return dict(layout)
    ranks = sum(1 for p in folder.iterdir() if _RANK_FILE.match(p.name))
    return {"world_size": ranks, "batch_split": None, "caches": "exact"}


@dataclass
class Loaded:
    """A checkpoint read back: its shared state, and this rank's file when it was written by this layout."""

    folder: Path
    shared: dict[str, Any]
    per_rank: dict[str, Any] | None
    """This rank's caches and RNG states; None when another layout wrote the checkpoint."""
    layout: dict[str, Any]
    """The layout that wrote it (`written_layout`)."""

    @property
    def step(self) -> int:
        return step_of(self.folder)


def load_latest(root: Path, ctx: DistContext, batch_split: int) -> tuple[Loaded | None, list[Path]]:
    """The newest checkpoint every rank can read, or None; and the damaged ones skipped on the way
    (newest first). A checkpoint of another layout (processes, batch_split) is read without its
    rank files, never skipped."""
    damaged: list[Path] = []
    for folder in complete_checkpoints(root):
        loaded = _try_load(folder, ctx, batch_split)
        if ctx.all_agree(loaded is not None):
            if not ctx.all_agree(loaded.per_rank is not None):
                loaded.per_rank = None
            return loaded, damaged
        log.warning("skipping unreadable checkpoint %s", folder)
        damaged.append(folder)
    return None, damaged


def _try_load(folder: Path, ctx: DistContext, batch_split: int) -> Loaded | None:
    shared = _load(folder / "shared.pt")
    if not isinstance(shared, dict) or "model" not in shared:
        return None
    layout = written_layout(folder, shared)
    if layout.get("world_size") != ctx.world_size or layout.get("batch_split") not in (None, batch_split):
        return Loaded(folder, shared, None, layout)
    per_rank = _load(folder / f"rank_{ctx.rank}.pt")
    if not isinstance(per_rank, dict):
        return None  # the layout that wrote it had this rank: its file is damaged or missing
    if layout.get("batch_split") is None:  # written before layouts were recorded: one cache per micro-batch
        caches = per_rank.get("caches")
        layout["batch_split"] = len(caches) if isinstance(caches, list) else None
        if layout["batch_split"] != batch_split:
            return Loaded(folder, shared, None, layout)
    return Loaded(folder, shared, per_rank, layout)


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file means "skip this checkpoint"
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        log.warning("checkpoint %s cannot be read: %s", path.parent, text)
        return None
