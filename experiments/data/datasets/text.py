"""Any local train/valid/test text files, as bytes or as words (e.g. WikiText-2).

Vocabulary: character level, every distinct byte of the three splits with a
newline as `<eos>` (WikiText-2: 178); word level, every word plus `<eos>`
(WikiText-2: 33,278). Ids by first appearance, or by decreasing train count
with `--vocab-order frequency` (needed by the adaptive softmax).
"""
from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from experiments.data.archive import sha256_file
from experiments.data.encoding import Prepared, SplitSource, char_corpus, read_file, word_corpus
from experiments.data.format import SPLITS
from experiments.data.registry import Dataset
from model.errors import UserError

SPLIT_FILE_NAMES = ("{split}.txt", "wiki.{split}.tokens", "wiki.{split}.raw")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", required=True,
                        help="directory with train/valid/test files (" + ", ".join(SPLIT_FILE_NAMES) + ")")
    parser.add_argument("--level", choices=("char", "word"), required=True, help="bytes or whitespace-separated words")
    parser.add_argument("--vocab-order", choices=("appearance", "frequency"), default="appearance",
                        help="ids by first appearance, or by decreasing train count (adaptive softmax)")


def prepare(args: argparse.Namespace, work: Path) -> Prepared:
    root = Path(args.source)
    if not root.is_dir():
        raise UserError(f"source {root} is not a directory holding train/valid/test text files")
    files = {split: split_file(root, split) for split in SPLITS}
    record = {"dir": str(root.resolve()), "files": {
        split: {"file": f.name, "bytes": f.stat().st_size, "sha256": sha256_file(f)} for split, f in files.items()}}
    by_frequency = args.vocab_order == "frequency"
    if args.level == "char":
        return char_corpus({split: read_file(f) for split, f in files.items()}, by_frequency, {"source": record},
                           labels={split: str(f) for split, f in files.items()})
    sources = {split: SplitSource(str(f), partial(open, f, "rb")) for split, f in files.items()}
    return word_corpus(sources, by_frequency, {"source": record})


def split_file(root: Path, split: str) -> Path:
    """The one file of `split` in `root`; UserError when there is none, or more than one (WikiText's
    .tokens and .raw side by side differ in content: taking either silently would be a guess)."""
    candidates = [root / pattern.format(split=split) for pattern in SPLIT_FILE_NAMES]
    found = [candidate for candidate in candidates if candidate.is_file()]
    if len(found) > 1:
        raise UserError(f"{root}: {' and '.join(f.name for f in found)} both hold the {split} split; "
                        "point --source at a directory with one of them")
    if not found:
        raise UserError(f"{root}: no {split} split (looked for {', '.join(c.name for c in candidates)})")
    return found[0]


def default_out(args: argparse.Namespace) -> str:
    return f"{Path(args.source).resolve().name}-{args.level}"


DATASET = Dataset(name="text", help="a directory of train/valid/test text files", prepare=prepare,
                  add_arguments=add_arguments, default_out=default_out)
