"""The datasets `prepare` knows: every module of `experiments/data/datasets/` that defines `DATASET`.

Adding a corpus means adding one module there:

    DATASET = Dataset(name="mycorpus", help="...", add_arguments=..., prepare=...)

`prepare(args, work)` returns an `encoding.Prepared` (build it with
`char_corpus` or `word_corpus`); the command line, the scratch directory, the
atomic publish and meta.json are shared. `data.dataset` in a run config accepts
exactly these names.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Callable

import experiments.data.datasets as package
from experiments.data.encoding import Prepared


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _source_option(args: argparse.Namespace) -> list[Path]:
    # Whatever a local --source names: a dataset that forgets to declare its sources is still guarded.
    source = getattr(args, "source", None)
    return [Path(source)] if source and "://" not in source else []


@dataclass(frozen=True)
class Dataset:
    name: str
    """The name on the command line (`prepare NAME`), in `data.dataset` and in meta.json."""
    help: str
    """One line for `prepare --help`."""
    prepare: Callable[[argparse.Namespace, Path], Prepared]
    """Build the corpus from the parsed arguments; `work` is a scratch directory (downloads go there)."""
    add_arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments
    """The dataset's own options (--out and --force are added for every dataset)."""
    default_out: Callable[[argparse.Namespace], str] | None = None
    """Folder name under data/ when --out is not given (default: the dataset's name)."""
    source_paths: Callable[[argparse.Namespace], list[Path]] = _source_option
    """The local files and folders preparation reads (default: what --source names, if local); --out may
    not be, hold or lie in any of them (command.py)."""
    official_vocab: int | None = None
    """The vocabulary size that preparation of the official (pinned) archive gives: the paper configs' vocab_size."""
    official_sizes: dict[str, int] | None = None
    """Tokens per split that preparation of the official archive gives."""


@cache
def datasets() -> dict[str, Dataset]:
    """Every registered dataset by name, in module order."""
    found: dict[str, Dataset] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        dataset = getattr(module, "DATASET", None)
        if not isinstance(dataset, Dataset):
            raise TypeError(f"{module.__name__} defines no DATASET = Dataset(...)")
        if dataset.name in found:
            raise TypeError(f"{module.__name__}: dataset name {dataset.name!r} is already registered")
        found[dataset.name] = dataset
    return found


def names() -> tuple[str, ...]:
    return tuple(datasets())


def get(name: str) -> Dataset:
    return datasets()[name]
