"""enwik8: the first 10^8 bytes of an English Wikipedia XML dump (Hutter Prize), read as bytes.

Vocabulary: every distinct byte value of the 10^8 bytes, a newline as `<eos>`:
205 symbols (Graves 2013, "a total of 205 one-byte unicode symbols"; the
Transformer-XL loader, which drops newlines, counts 204). The authors' loader
gives the same 205 (204 byte tokens + `<eos>` for each line end). Ids in order of
first appearance. Split: first 90M train, next 5M valid, last 5M test.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from experiments.data.archive import (BYTE_SPLIT_SIZES, Archive, add_byte_archive_arguments, archive_sources,
                                      prepare_byte_archive)
from experiments.data.encoding import Prepared
from experiments.data.registry import Dataset

ARCHIVE = Archive("enwik8.zip", "http://mattmahoney.net/dc/enwik8.zip",
                  "547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc", 36_445_475)
VOCAB = 205


def prepare(args: argparse.Namespace, work: Path) -> Prepared:
    return prepare_byte_archive(args, work, ARCHIVE, member="enwik8", official_vocab=VOCAB)


DATASET = Dataset(name="enwik8", help="enwik8 bytes, 90M/5M/5M split", prepare=prepare,
                  add_arguments=lambda parser: add_byte_archive_arguments(parser, ARCHIVE), official_vocab=VOCAB,
                  official_sizes=BYTE_SPLIT_SIZES, source_paths=archive_sources(ARCHIVE))
