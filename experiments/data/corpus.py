"""The `data:` section of a run config, and loading a prepared corpus back."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NoReturn

import numpy as np

from experiments.data.registry import names as dataset_names
from experiments.data.format import (EOS, FORMAT_VERSION, META, MIN_VOCAB, PREPARED_FILES, SPLITS, dtype_name,
                                     numpy_dtype)
from model.errors import ConfigError, UserError

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class DataConfig:
    """The `data:` section of a run config: which prepared corpus a run reads."""

    dataset: str
    """Corpus name, one of enwik8, text8, wikitext-103, lexicon, text; must match the prepared meta.json."""
    path: str
    """Directory written by `python -m experiments.data prepare` (relative paths are taken from the project root)."""

    def __post_init__(self) -> None:
        names = dataset_names()
        if not isinstance(self.dataset, str) or self.dataset not in names:
            raise ConfigError("dataset", f"unknown dataset {self.dataset!r}; choose one of {', '.join(names)}")
        if not isinstance(self.path, str) or not self.path.strip():
            raise ConfigError("path", f"must be the directory of prepared data, got {self.path!r}")


@dataclass(frozen=True)
class Corpus:
    """A prepared corpus: its meta.json and its splits as memory-mapped token ids."""

    path: Path
    meta: dict[str, Any]

    @property
    def vocab(self) -> list[str]:
        return self.meta["vocab"]

    @property
    def level(self) -> str:
        return self.meta["level"]

    @property
    def unit(self) -> str:
        """How results are reported: bits per character, or word perplexity."""
        return "bpc" if self.level == "char" else "ppl"

    def split(self, name: str) -> np.memmap:
        """The ids of one split, read lazily from disk (no Python object per token)."""
        if name not in SPLITS:
            raise UserError(f"{self.path}: unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return np.memmap(self.path / f"{name}.bin", dtype=numpy_dtype(self.meta["dtype"]),
                         mode="r", shape=(self.meta["sizes"][name],))


def load_corpus(path: str | os.PathLike, dataset: str | None = None) -> Corpus:
    """Open prepared data; a missing or inconsistent directory is a one-line UserError.

    With `dataset`, the prepared corpus must be that one (a ConfigError on `dataset`).
    """
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root}: no prepared data there; run `python -m experiments.data prepare NAME --out {root}`")
    meta = read_meta(root)
    check_meta(root, meta)
    check_split_files(root, meta)
    if dataset is not None and meta["dataset"] != dataset:
        raise ConfigError("dataset", f"is {dataset!r} but {root} holds {meta['dataset']!r}")
    return Corpus(root, meta)


def read_meta(root: Path) -> dict[str, Any]:
    """meta.json as `prepare` writes it: a JSON object naming its format and dataset. Raises UserError
    otherwise; the advice is not --force, which replaces only what `prepare` wrote (is_prepared)."""
    meta_path = root / META
    not_prepared = "so it is not prepared data; prepare the corpus into a new folder (--out)"
    if not meta_path.is_file():
        raise UserError(f"{root}: no {META}, {not_prepared}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{meta_path}: unreadable ({err}), {not_prepared}") from None
    if not isinstance(meta, dict) or not {"format", "dataset"} <= meta.keys():
        raise UserError(f"{meta_path}: not a JSON object with a format and a dataset, {not_prepared}")
    return meta


def is_prepared(root: Path) -> bool:
    """Whether `root` is a folder `prepare` wrote: a readable meta.json and nothing but the split files.
    Only such a folder may be replaced by --force; anything else in it would be someone's files."""
    try:
        if not root.is_dir() or any(entry.name not in PREPARED_FILES for entry in root.iterdir()):
            return False
        read_meta(root)
    except (OSError, UserError):
        return False
    return True


def check_meta(root: Path, meta: Mapping[str, Any]) -> None:
    """The schema of meta.json (FORMAT_VERSION); `root` names the directory in messages."""
    def bad(problem: str) -> NoReturn:
        raise UserError(f"{root / META}: {problem}; prepare the data again with --force")

    if meta.get("format") != FORMAT_VERSION:
        bad(f"format {meta.get('format')!r}, this code reads format {FORMAT_VERSION}")
    if not isinstance(meta.get("dataset"), str):
        bad("dataset must be a corpus name")
    if meta.get("level") not in ("char", "word"):
        bad(f"level must be 'char' or 'word', got {meta.get('level')!r}")
    vocab = meta.get("vocab")
    if not isinstance(vocab, list) or len(vocab) < MIN_VOCAB or not all(isinstance(s, str) for s in vocab):
        bad(f"vocab must be a list of at least {MIN_VOCAB} strings")
    if meta.get("dtype") != dtype_name(len(vocab)):
        bad(f"dtype {meta.get('dtype')!r} does not fit a vocabulary of {len(vocab)}")
    sizes = meta.get("sizes")
    if not isinstance(sizes, dict) or not all(isinstance(sizes.get(s), int) and sizes[s] > 0 for s in SPLITS):
        bad(f"sizes must give a positive token count for each of {', '.join(SPLITS)}")
    if meta["level"] == "char" and not all(s == EOS or (len(s) == 1 and ord(s) < 256) for s in vocab):
        bad("a char-level vocabulary must hold single bytes and <eos>")


def check_split_files(root: Path, meta: Mapping[str, Any]) -> None:
    itemsize = numpy_dtype(meta["dtype"]).itemsize
    for split in SPLITS:
        path = root / f"{split}.bin"
        expected = meta["sizes"][split] * itemsize
        actual = path.stat().st_size if path.is_file() else None
        if actual != expected:
            found = "missing" if actual is None else f"{actual:,} bytes"
            raise UserError(f"{path}: {found}, meta.json says {meta['sizes'][split]:,} tokens of {meta['dtype']} "
                            f"({expected:,} bytes); prepare the data again with --force")
