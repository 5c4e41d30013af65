"""Command-line inputs of the analysis tools: run folders or grid files -> run directories.

Every analysis command accepts the same inputs (DESIGN §4): a run directory, any
folder above run directories (a grid's folder, a whole results root), or a
GRID.yaml whose runs are looked up where the submitter put them.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from model.errors import UserError

RUN_MARKER = "config.yaml"
GRID_SUFFIXES = (".yaml", ".yml")


def add_inputs_argument(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """Add the positional DIR_OR_GRID... argument shared by the analysis commands."""
    parser.add_argument(
        "inputs", nargs="+" if required else "*", metavar="DIR_OR_GRID",
        help="run directory, folder of run directories (searched recursively), or GRID.yaml",
    )


def resolve_run_dirs(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The run directories named by `inputs`, each once, in input order."""
    found: dict[Path, None] = {}
    for item in inputs:
        for run_dir in _run_dirs_of(Path(item)):
            found.setdefault(run_dir.resolve(), None)
    return list(found)


def scan_run_dirs(root: Path) -> list[Path]:
    """Folders under `root` (itself included) holding config.yaml, sorted."""
    found = []
    for current, subdirs, files in os.walk(root):
        if RUN_MARKER in files:
            found.append(Path(current))
            subdirs.clear()  # a run's own folders (checkpoints/, slurm/) hold no runs
    return sorted(found)


def _run_dirs_of(path: Path) -> list[Path]:
    if path.suffix in GRID_SUFFIXES:
        if not path.is_file():
            raise UserError(f"{path}: no such grid file")
        dirs = _grid_run_dirs(path)
        if not dirs:
            raise UserError(f"{path}: none of this grid's runs has a run directory yet (submit it first)")
        return dirs
    if not path.is_dir():
        raise UserError(f"{path}: no such directory (expected run directories or a GRID.yaml)")
    dirs = scan_run_dirs(path)
    if not dirs:
        raise UserError(f"{path}: no run directories (folders holding {RUN_MARKER}) under it")
    return dirs


def _grid_run_dirs(grid: Path) -> list[Path]:
    # Imported here so that analysing result folders never needs the submission side.
    try:
        from experiments.grid import grid_run_dirs
    except ImportError as err:
        raise UserError(f"{grid}: reading a grid file needs experiments.grid ({err}); "
                        "pass the grid's results folder instead") from err
    return [d for d in grid_run_dirs(grid) if (Path(d) / RUN_MARKER).is_file()]
