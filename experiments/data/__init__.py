"""Corpora: preparation into a compact memory-mapped format, and loading it back.

    python -m experiments.data prepare {enwik8,text8,wikitext-103,lexicon,text} [options]

Layout (adding a corpus = adding one module to `datasets/`, see registry.py):

| module | what |
|---|---|
| `format.py` | the on-disk format and the meta.json data contract |
| `corpus.py` | `DataConfig` (the `data:` section), `load_corpus`, `Corpus` |
| `encoding.py` | the vocabulary rule, `encode_text` / `decode_bytes`, building a corpus from its splits |
| `archive.py` | official archives: download, pinned sha256, zip members, the 90/5/5 byte split |
| `publish.py` | writing the splits and meta.json in a scratch directory, moved into place atomically |
| `registry.py` | the datasets `prepare` knows: every module of `datasets/` defining `DATASET` |
| `datasets/` | `enwik8`, `text8`, `wikitext103`, `text`, `lexicon` (the embedded corpus and its generator) |
| `command.py`, `__main__.py` | the command line |

Two departures from the authors' pre-tokenised character files, each worth one
token in 5M: their loader also closes every split with an `<eos>` (the last
line has no newline), and their text8 script strips the spaces at both ends of
each split. Here the splits are exactly the bytes of the standard split.
"""
from __future__ import annotations

import experiments.data.registry as registry
from experiments.data.command import build_parser, main
from experiments.data.corpus import PROJECT_ROOT, Corpus, DataConfig, check_meta, load_corpus, read_meta
from experiments.data.encoding import Prepared, decode_bytes, encode_text
from experiments.data.format import EOS, META, SPLITS, UNK, dtype_name, numpy_dtype

DATASETS = registry.names()

__all__ = ["DATASETS", "EOS", "META", "PROJECT_ROOT", "SPLITS", "UNK", "Corpus", "DataConfig", "Prepared", "build_parser",
           "check_meta", "decode_bytes", "dtype_name", "encode_text", "load_corpus", "main", "numpy_dtype",
           "read_meta", "registry"]
