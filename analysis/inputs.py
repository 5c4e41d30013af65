"""Command-line inputs of the analysis tools: run folders or grid files -> run directories.

Every analysis command accepts the same inputs (DESIGN §4): a run directory, any
folder above run directories (a grid's folder, a whole results root), or a
GRID.yaml whose runs are those its manifest (`<root>/<grid>/manifest.json`) records
as submitted, by every `slurm.submit` of it. `--set`/`--only`, as given to
`slurm.submit`, narrow a GRID.yaml to the runs of that expansion; `--root` is where
it was submitted. Each GRID.yaml input says on stderr, in one line, which
submission(s) its runs come from.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from experiments.grid import DEFAULT_ROOT
from experiments.cli import folder
from experiments.manifest import FILENAME, add_selection_arguments, select
from model.errors import UserError

RUN_MARKER = "config.yaml"
GRID_SUFFIXES = (".yaml", ".yml")


def add_inputs_argument(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """Add the positional DIR_OR_GRID... argument shared by the analysis commands, with the
    --root, --set and --only that select a GRID.yaml's runs."""
    parser.add_argument(
        "inputs", nargs="+" if required else "*", metavar="DIR_OR_GRID",
        help="run directory, folder of run directories (searched recursively), or GRID.yaml (its submitted runs)",
    )
    parser.add_argument("--root", type=folder, default=None,
                        help="results root a GRID.yaml was submitted to (default: runs/ in the project)")
    add_selection_arguments(parser, purpose="analyse")


def selection(args: argparse.Namespace) -> dict[str, Any]:
    """The --root/--set/--only parsed by add_inputs_argument, as keywords of resolve_run_dirs."""
    return {"root": args.root, "overrides": args.set, "only": args.only}


def resolve_run_dirs(inputs: Sequence[str | os.PathLike], root: str | os.PathLike | None = None,
                     overrides: Sequence[str] | None = None, only: Sequence[str] | None = None) -> list[Path]:
    """The run directories named by `inputs`, each once, in input order.

    `root` (default runs/), `overrides` (--set) and `only` (--only) select the runs of
    GRID.yaml inputs; folders are read whole. Raises UserError for a missing input, or
    --set/--only given with no GRID.yaml input.
    """
    paths = [Path(item) for item in inputs]
    overrides, only = list(overrides or []), list(only or [])
    if (overrides or only) and not any(path.suffix in GRID_SUFFIXES for path in paths):
        raise UserError("--set and --only select the runs of a GRID.yaml input; folders are read whole "
                        "(name the grid file instead)")
    found: dict[Path, Path] = {}
    for path in paths:
        for run_dir in _run_dirs_of(path, root, overrides, only):
            # once per real directory, under the path it was found at: a run a grid shares through a
            # link (experiments/store.py) is labelled by the grid it was found in (analysis.collect)
            found.setdefault(run_dir.resolve(), run_dir.absolute())
    return list(found.values())


def scan_run_dirs(root: Path) -> list[Path]:
    """Folders under `root` (itself included) holding config.yaml, sorted."""
    found = []
    for current, subdirs, files in os.walk(root, followlinks=True):  # a grid's link to a run another grid trains
        if RUN_MARKER in files:
            found.append(Path(current))
            subdirs.clear()  # a run's own folders (checkpoints/, slurm/) hold no runs
        else:  # hidden folders (.replaced/ of --force, .submitit/) hold no runs to analyse
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
    return sorted(found)


def _run_dirs_of(path: Path, root: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                 only: Sequence[str] = ()) -> list[Path]:
    if path.suffix in GRID_SUFFIXES:
        if not path.is_file():
            raise UserError(f"{path}: no such grid file")
        return _grid_run_dirs(path, root, overrides, only)
    if not path.is_dir():
        raise UserError(f"{path}: no such directory (expected run directories or a GRID.yaml)")
    dirs = scan_run_dirs(path)
    if not dirs:
        raise UserError(f"{path}: no run directories (folders holding {RUN_MARKER}) under it")
    return dirs


def _grid_run_dirs(grid: Path, root: str | os.PathLike | None, overrides: Sequence[str],
                   only: Sequence[str]) -> list[Path]:
    """The submitted runs of a grid (those its manifest records), narrowed by --set/--only."""
    selection = select(grid, Path(root) if root is not None else DEFAULT_ROOT, overrides, only)
    grid_dir = selection.manifest.grid_dir
    if selection.manifest.exists:
        dirs = [r.run_dir for r in selection.submitted_runs()]
        note = selection.summary() + "".join(f"; note: {n}" for n in selection.notes)
    else:  # never submitted through slurm.submit (runs placed there by hand): the grid's expansion
        dirs = [r.run_dir for r in selection.runs]
        note = f"{selection.grid_name}: no {FILENAME} in {grid_dir}: the grid file's runs found there"
    absent = [d.name for d in dirs if not (d / RUN_MARKER).is_file()]
    dirs = [d for d in dirs if (d / RUN_MARKER).is_file()]
    print(note, file=sys.stderr)
    if absent:  # a run writes its config.yaml when it starts
        print(f"note: {len(absent)} of the runs have no {RUN_MARKER} in {grid_dir} (not started yet, or removed: "
              f"slurm.submit writes a finished run's again), "
              f"left out: {', '.join(absent[:5])}{', ...' if len(absent) > 5 else ''}", file=sys.stderr)
    if not dirs:
        flags = f" matching {selection.selection_flags()}" if selection.filtered else ""
        raise UserError(f"{grid}: no run directory in {grid_dir} for the submitted runs{flags} "
                        f"(submit it first, or check --root/--set/--only)")
    return dirs
