"""Symbols and ids: the vocabulary rule, encoding raw text, and building a corpus from its splits.

Tokens follow the authors' loader: word level splits each line on whitespace and
appends `<eos>`; character level takes every byte as a symbol and a newline
byte as `<eos>` (no `<eos>` is added at the end of a split, so byte splits keep
their exact sizes and bytes round-trip). Ids are in order of first appearance
in train, then symbols new in valid, then in test; for the adaptive softmax
they are sorted by decreasing train count, ties in order of first appearance
(WikiText-103: in reverse order, as the authors' loader sorts).
"""
from __future__ import annotations

import io
import itertools
import os
from array import array
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from experiments.data.format import EOS, NEWLINE, SPLITS, UNK, dtype_name, numpy_dtype
from model.errors import UserError

CHAR_RULE = "every distinct byte of the three splits, a newline byte as <eos>, nothing added at split ends"
WORD_RULE = "every distinct whitespace-separated word of the three splits, plus <eos> closing each line"


def byte_symbol(value: int) -> str:
    """A byte's vocabulary string: its Latin-1 character (JSON-safe), `<eos>` for a newline."""
    return EOS if value == NEWLINE else chr(value)


def symbol_byte(symbol: str) -> int:
    if symbol == EOS:
        return NEWLINE
    if len(symbol) != 1 or ord(symbol) > 255:
        raise UserError(f"vocabulary symbol {symbol!r} is not a byte: is this a word-level corpus?")
    return ord(symbol)


def order_vocab(split_counts: Sequence[Mapping[str, int]], by_frequency: bool,
                authors_ties: bool = False) -> list[str]:
    """The vocabulary from per-split counts (train first), each in order of first appearance.

    As the authors' loader: symbols of train, then those new in valid, then in
    test. By frequency, ids follow decreasing train count; the sort is stable,
    so ties (and symbols absent from train) keep their first-appearance order.
    `authors_ties`: ties among train symbols in *reverse* order of first appearance,
    as the authors' loader orders words for adaptive input/output (a stable sort by
    increasing train count, then reversed); symbols absent from train still come last.
    """
    vocab = list(dict.fromkeys(itertools.chain.from_iterable(split_counts)))
    if by_frequency:
        train_counts = split_counts[0]
        if authors_ties:
            in_train = [symbol for symbol in vocab if symbol in train_counts]  # in train's first-appearance order
            rest = [symbol for symbol in vocab if symbol not in train_counts]
            vocab = sorted(in_train, key=train_counts.__getitem__)[::-1] + rest
        else:
            vocab.sort(key=lambda symbol: -train_counts.get(symbol, 0))
    return vocab


def byte_counts(data: bytes) -> dict[str, int]:
    """Occurrences of each byte symbol, keyed in order of first appearance."""
    values, first_index, counts = np.unique(np.frombuffer(data, dtype=np.uint8), return_index=True, return_counts=True)
    return {byte_symbol(int(values[i])): int(counts[i]) for i in np.argsort(first_index)}


def word_counts(lines: Iterable[str]) -> Counter[str]:
    """Occurrences of each word and of <eos> (one per line), keyed in order of first appearance."""
    counts: Counter[str] = Counter()
    for line in lines:
        counts.update(line.split())
        counts[EOS] += 1
    return counts


def encode_bytes(data: bytes, vocab: Sequence[str], where: str) -> np.ndarray:
    """Character-level ids of raw bytes; a byte outside the vocabulary is a UserError."""
    lookup = np.full(256, -1, dtype=np.int16)
    for token_id, symbol in enumerate(vocab):
        lookup[symbol_byte(symbol)] = token_id
    ids = lookup[np.frombuffer(data, dtype=np.uint8)]
    unknown = np.flatnonzero(ids < 0)
    if unknown.size:
        raise UserError(f"{where}: byte {data[unknown[0]]} at offset {unknown[0]:,} is not in the vocabulary "
                        f"({unknown.size:,} unknown bytes in all)")
    return ids.astype(numpy_dtype(dtype_name(len(vocab))))


def encode_lines(lines: Iterable[str], vocab: Sequence[str], where: str) -> np.ndarray:
    """Word-level ids, <eos> after each line; unknown words become <unk> if the vocabulary has it."""
    index = {symbol: token_id for token_id, symbol in enumerate(vocab)}
    if EOS not in index:
        raise UserError(f"{where}: the vocabulary has no {EOS}, so it is not a word-level vocabulary")
    unk = index.get(UNK)
    ids = array("i")  # C ints: 100M tokens must not become 100M Python objects
    for line_number, line in enumerate(lines, 1):
        words = line.split()
        try:
            ids.extend([index[word] for word in words])
        except KeyError as err:
            if unk is None:
                raise UserError(f"{where}: line {line_number}: word {err.args[0]!r} is not in the vocabulary "
                                f"(which has no {UNK})") from None
            ids.extend([index.get(word, unk) for word in words])
        ids.append(index[EOS])
    return np.frombuffer(ids, dtype=np.intc).astype(numpy_dtype(dtype_name(len(vocab))))


def read_lines(open_binary: Callable[[], BinaryIO], where: str) -> Iterator[str]:
    """Lines as the authors' loader reads them: UTF-8 text mode with universal newlines."""
    try:
        with io.TextIOWrapper(open_binary(), encoding="utf-8") as text:
            yield from text
    except UnicodeDecodeError as err:
        raise UserError(f"{where}: not UTF-8 text ({err.reason}); use character level for binary data") from None


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None


def encode_text(source: str | os.PathLike | bytes, meta: Mapping[str, Any]) -> np.ndarray:
    """Ids of a raw text under a prepared corpus's vocabulary, exactly as `prepare` encodes its splits."""
    if isinstance(source, bytes):
        data, where = source, "text"
    else:
        data, where = read_file(Path(source)), str(source)
    if meta["level"] == "char":
        return encode_bytes(data, meta["vocab"], where)
    return encode_lines(read_lines(partial(io.BytesIO, data), where), meta["vocab"], where)


def decode_bytes(ids: Iterable[int] | np.ndarray, vocab: Sequence[str]) -> bytes:
    """The bytes that character-level ids stand for (<eos> back to a newline)."""
    table = np.array([symbol_byte(symbol) for symbol in vocab], dtype=np.uint8)
    return table[np.asarray(ids, dtype=np.int64)].tobytes()


# ---------------------------------------------------------------- a corpus ready to write


@dataclass(frozen=True)
class SplitSource:
    """One split's raw text: a label for messages and how to open it as bytes."""

    label: str
    open: Callable[[], BinaryIO]


@dataclass
class Prepared:
    """A corpus ready to write: its vocabulary, ids per split, and dataset-specific meta fields."""

    level: str
    vocab: list[str]
    vocab_order: str
    vocab_rule: str
    ids: dict[str, np.ndarray]
    extra: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    """Printed once the corpus is in place (e.g. a source not checked against its pinned sha256)."""


def order_name(by_frequency: bool) -> str:
    return "frequency" if by_frequency else "appearance"


def refuse_empty_split(split: str, tokens: int, where: str = "") -> None:
    """Raises UserError if a split has no tokens, in the same words at every level and for every
    corpus: checked before the vocabulary, whose own complaints (no <eos>, too few symbols) would
    hide the cause. `where` names the split's source (a file) in the message."""
    if tokens == 0:
        prefix = f"{where}: " if where else ""
        raise UserError(f"{prefix}the {split} split is empty (0 tokens); "
                        f"a corpus needs text in each of {', '.join(SPLITS)}")


def char_corpus(texts: Mapping[str, bytes], by_frequency: bool, extra: dict[str, Any],
                labels: Mapping[str, str] | None = None) -> Prepared:
    """A byte-level corpus of each split's raw bytes; `labels` name their sources in messages.
    Raises UserError for an empty split (refuse_empty_split)."""
    for split in SPLITS:
        refuse_empty_split(split, len(texts[split]), (labels or {}).get(split, ""))
    vocab = order_vocab([byte_counts(texts[split]) for split in SPLITS], by_frequency)
    ids = {split: encode_bytes(texts[split], vocab, split) for split in SPLITS}
    return Prepared("char", vocab, order_name(by_frequency), CHAR_RULE, ids, extra)


def word_corpus(sources: Mapping[str, SplitSource], by_frequency: bool, extra: dict[str, Any],
                authors_ties: bool = False) -> Prepared:
    """A word-level corpus of each split's lines. Raises UserError for an empty split (refuse_empty_split),
    a file that is not UTF-8, or a word missing from the vocabulary."""
    # Two passes (count, then encode) so that prepare encodes with the very function encode_text uses.
    counts = [word_counts(read_lines(sources[split].open, sources[split].label)) for split in SPLITS]
    for split, split_counts in zip(SPLITS, counts):
        refuse_empty_split(split, sum(split_counts.values()), sources[split].label)  # each line has an <eos>
    vocab = order_vocab(counts, by_frequency, authors_ties)
    ids = {split: encode_lines(read_lines(sources[split].open, sources[split].label), vocab, sources[split].label)
           for split in SPLITS}
    rule = WORD_RULE + ("; ids by decreasing train count, ties in reverse order of first appearance "
                        "(the authors' loader)" if authors_ties else "")
    return Prepared("word", vocab, order_name(by_frequency), rule, ids, extra)
