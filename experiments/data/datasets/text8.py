"""text8: the first 10^8 characters of Wikipedia cleaned to lowercase a-z and single spaces.

Vocabulary: 27 symbols, the 26 letters and the space. The file holds no newline
(one line, no final newline), so no `<eos>` occurs: the 27 are exactly the bytes.
(The authors' loader closes each split's single line with an `<eos>`, which
would make 28; here splits are exactly the bytes of the standard split, as for
enwik8.) Ids in order of first appearance. Split: 90M / 5M / 5M.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from experiments.data.archive import (BYTE_SPLIT_SIZES, Archive, add_byte_archive_arguments, archive_sources,
                                      prepare_byte_archive)
from experiments.data.encoding import Prepared
from experiments.data.registry import Dataset
from model.errors import UserError

ARCHIVE = Archive("text8.zip", "http://mattmahoney.net/dc/text8.zip",
                  "a6640522afe85d1963ad56c05b0ede0a0c000dddc9671758a6cc09b7a38e5232", 31_344_016)
SYMBOLS = frozenset(b"abcdefghijklmnopqrstuvwxyz ")
VOCAB = len(SYMBOLS)


def check_symbols(data: bytes, path: Path) -> None:
    present = np.flatnonzero(np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256))
    strangers = [int(b) for b in present if int(b) not in SYMBOLS]
    if strangers:
        raise UserError(f"{path}: text8 holds only a-z and space, but this file has byte {strangers[0]} "
                        f"({len(strangers)} distinct other bytes in all)")


def prepare(args: argparse.Namespace, work: Path) -> Prepared:
    return prepare_byte_archive(args, work, ARCHIVE, member="text8", official_vocab=VOCAB, check=check_symbols)


DATASET = Dataset(name="text8", help="text8 characters (a-z and space), 90M/5M/5M split", prepare=prepare,
                  add_arguments=lambda parser: add_byte_archive_arguments(parser, ARCHIVE), official_vocab=VOCAB,
                  official_sizes=BYTE_SPLIT_SIZES, source_paths=archive_sources(ARCHIVE))
