"""What a prepared corpus directory is, on disk: the constants every part agrees on.

A prepared directory holds `train.bin`, `valid.bin`, `test.bin` (flat
little-endian token ids: uint8 if V <= 256, uint16 if V <= 65536, else int32)
and `meta.json`, written last, so a directory without it is not prepared.

meta.json is also the **data contract** a run is checked against before any
work starts (`experiments/contract.py`): everything a model depends on is there.

| key | what |
|---|---|
| `format` | FORMAT_VERSION |
| `dataset` | the corpus name, what `data.dataset` must say |
| `level` | `char` (bytes) or `word` |
| `vocab`, `vocab_size` | symbol of each id, and how many (`model.vocab_size` must equal it) |
| `vocab_order` | how ids are ordered: `appearance` (first occurrence in train, then valid, test) or `frequency` (decreasing train count: what the adaptive softmax needs) |
| `vocab_rule` | how the vocabulary was derived, in words |
| `eos`, `eos_id` | the end-of-line symbol and its id, or null when no line end occurs |
| `sizes` | tokens per split (the eval split must fill eval.batch_size x (block_size + 1)) |
| `dtype`, `byteorder` | id type of the .bin files |
| `sha256` | checksum of each .bin file |
| `source` | provenance: file, bytes, sha256, whether it is the pinned official archive |
"""
from __future__ import annotations

import numpy as np

from model.config import MIN_VOCAB  # noqa: F401 - the model's floor is the corpus's: prepare and the loader refuse less

SPLITS = ("train", "valid", "test")
FORMAT_VERSION = 1
META = "meta.json"
EOS = "<eos>"
UNK = "<unk>"
NEWLINE = 10
ORDERS = ("appearance", "frequency")
PREPARED_FILES = frozenset({META, *(f"{split}.bin" for split in SPLITS)})
"""Everything `prepare` writes into a prepared directory."""


def dtype_name(vocab_size: int) -> str:
    """The smallest id type for the vocabulary."""
    if vocab_size <= 256:
        return "uint8"
    return "uint16" if vocab_size <= 65536 else "int32"


def numpy_dtype(name: str) -> np.dtype:
    return np.dtype(name).newbyteorder("<")
