"""One results root, many grids: a configuration is trained once, whichever grids hold it.

Run directories are `<root>/<grid>/<folder>/` (DESIGN §4, the folder named by the run id).
Two grids of one root may hold the same configuration: Figure 2's N = 2048 point, its
right panel's all-attention bar and `experiments/paper/text8_large.yaml` are one config
(one config hash) under three names, so three run ids. What is trained is the config
hash, so a grid's run is looked up in the other grid folders of its root by that hash (a
`<name>-<hash>` folder whose config.yaml has it), not by the run id, whose name part is
the grid's label for it.

When another grid holds the run, this grid's entry `<root>/<grid>/<run_id>` becomes a
relative symbolic link to that directory (`claim`, at submission): the job, `slurm.status`,
the manifest's readers and the analysis commands then all read and write the one
directory through whichever grid names it. A directory already in the grid's own folder
stays its own (runs made before runs were shared are not moved); among directories of
other grids, a DONE one is preferred.

Claims of the whole root are serialised by an exclusive flock on `<root>/.store.lock`, so
that of two grids submitted at once the second links to the directory the first made. The
link itself is made with symlink(2) on its final name, atomic and refused (EEXIST) when
anything took the name meanwhile, which then wins; a temporary name and rename(2) would
silently replace a link made meanwhile and leave a stray name behind after a crash.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from experiments.atomic import atomic_write_text
from experiments.run_config import RunConfig, find_run_dir, load_run_config
from experiments.run_dir import RunDir
from model.errors import UserError

LOCK = ".store.lock"


@dataclass(frozen=True)
class Placement:
    """Where a grid's run of one config lives, and which other grids see the same directory."""

    entry: Path
    """`<root>/<grid>/<folder>`: the run as this grid names it (a link when another grid holds it;
    not made yet before the grid's first submission of it)."""
    directory: Path
    """The real directory (symbolic links resolved) the run is read from and trained in; may not exist yet."""
    sharers: tuple[str, ...]
    """The other grids of the root whose folder holds this directory or links to it."""

    @property
    def holder(self) -> str:
        """The grid whose folder holds the real directory."""
        return self.directory.parent.name

    @property
    def elsewhere(self) -> bool:
        """Whether another grid's folder holds the directory (this grid's entry is, or will be, a link)."""
        return self.directory.parent != Path(os.path.realpath(self.entry.parent))

    @property
    def folder_name(self) -> str:
        """The `<name>` of the directory's `<name>-<hash>`: its holder's name for the run."""
        return self.directory.name.rsplit("-", 1)[0]


def locate(root: str | os.PathLike, grid_name: str, cfg: RunConfig) -> Placement:
    """Where `grid_name`'s run of `cfg` lives (module docstring); writes nothing."""
    root = Path(root)
    entry = find_run_dir(root / grid_name, cfg)
    candidates = _entries(root, cfg)
    if os.path.lexists(entry):
        directory = entry
    else:
        directory = _held_elsewhere(candidates, grid_name, cfg) or entry
    real = Path(os.path.realpath(directory))
    sharers = sorted({p.parent.name for p in candidates
                      if p.parent.name != grid_name and os.path.realpath(p) == str(real)})
    return Placement(entry, real, tuple(sharers))


def claim(root: str | os.PathLike, grid_name: str, cfg: RunConfig) -> Placement:
    """Make `grid_name`'s entry for `cfg`'s run, once for the whole root: a link to the directory
    another grid holds, else a new directory with its config.yaml (so that the other grids find it).
    An entry that exists already (directory or link) is kept as it is, but a link whose directory
    is gone (its grid's folder deleted) is claimed afresh: retraining through it would recreate
    the deleted grid's folder."""
    root = Path(root)
    with _root_locked(root):
        placement = locate(root, grid_name, cfg)
        if placement.entry.is_symlink() and not placement.entry.exists():
            placement.entry.unlink()
            placement = locate(root, grid_name, cfg)
        if os.path.lexists(placement.entry):
            return placement
        placement.entry.parent.mkdir(parents=True, exist_ok=True)
        if placement.elsewhere:
            target = os.path.relpath(placement.directory, os.path.realpath(placement.entry.parent))
            try:
                os.symlink(target, placement.entry)
            except FileExistsError:  # taken meanwhile outside the store (a training by hand): that one wins
                pass
        else:
            placement.entry.mkdir(exist_ok=True)
            atomic_write_text(RunDir(placement.entry).config, cfg.to_yaml())
        return locate(root, grid_name, cfg)


def _entries(root: Path, cfg: RunConfig) -> list[Path]:
    """Every grid folder's entries (directories or links) named `<name>-<hash>` with one of the
    config's hashes (current or legacy: run_config.py), in path order."""
    if not root.is_dir():
        return []
    grids = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [entry for grid in grids for hash_ in sorted(cfg.known_hashes()) for entry in sorted(grid.glob(f"*-{hash_}"))]


def _held_elsewhere(candidates: list[Path], grid_name: str, cfg: RunConfig) -> Path | None:
    """A real directory of `cfg` in another grid's folder: a DONE one first, else the first in path order."""
    held = [p for p in candidates if p.parent.name != grid_name and not p.is_symlink() and _holds(p, cfg)]
    return min(held, key=lambda p: (not RunDir(p).is_done(), str(p)), default=None)


def _holds(folder: Path, cfg: RunConfig) -> bool:
    """Whether `folder` is a run directory of this config (its config.yaml has the same hash)."""
    try:
        return RunDir(folder).config.is_file() and load_run_config(RunDir(folder).config).config_hash == cfg.config_hash
    except (UserError, OSError):  # a damaged config.yaml is not this run's
        return False


@contextmanager
def _root_locked(root: Path) -> Iterator[None]:
    """Serialise claims in one results root, between the grids submitted to it."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
