"""Corpora: preparation into a compact memory-mapped format, and loading it back.

    python -m experiments.data prepare {enwik8,text8,wikitext-103,lexicon,text} [options]

A prepared directory holds `train.bin`, `valid.bin`, `test.bin` (flat
little-endian token ids: uint8 if V <= 256, uint16 if V <= 65536, else int32)
and `meta.json` (vocabulary, sizes, checksums, provenance). meta.json is written
last, so a directory without it is not prepared. Preparation happens in a
scratch directory beside the output that is renamed into place at the end:
bad input never touches data prepared before, and nothing is replaced without
`--force`.

Tokens follow the authors' loader: word level splits each line on whitespace and
appends `<eos>`; character level takes every byte as a symbol and a newline
byte as `<eos>` (no `<eos>` is added at the end of a split, so byte splits keep
their exact sizes and bytes round-trip). Ids are in order of first appearance
in train, then symbols new in valid, then in test; for the adaptive softmax
(WikiText-103, or `text --vocab-order frequency`) they are sorted by decreasing
train count, ties in order of first appearance.

Two departures from the authors' pre-tokenised character files, each worth one
token in 5M: their loader also closes every split with an `<eos>` (the last
line has no newline), and their text8 script strips the spaces at both ends of
each split. Here the splits are exactly the bytes of the standard split.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import itertools
import json
import os
import shutil
import tempfile
import urllib.request
import zipfile
import zlib
from array import array
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, NoReturn, Sequence

import numpy as np

from experiments.atomic import atomic_write, atomic_write_json
from experiments.lexicon import LexiconSpec, entropy_floor_bpc, generate_splits
from model.errors import ConfigError, UserError
from experiments.cli import run_cli

DATASETS = ("enwik8", "text8", "wikitext-103", "lexicon", "text")
SPLITS = ("train", "valid", "test")
EOS = "<eos>"
UNK = "<unk>"
NEWLINE = 10
FORMAT_VERSION = 1
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Archive:
    """An official distribution file, pinned so that a wrong or truncated download is refused."""

    file_name: str
    url: str
    sha256: str
    size: int | None
    """Bytes, only to make the error message helpful; None where no source confirmed it."""


# sha256 values as published by several independent projects pinning these files.
ARCHIVES = {
    "enwik8": Archive("enwik8.zip", "http://mattmahoney.net/dc/enwik8.zip",
                      "547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc", 36_445_475),
    "text8": Archive("text8.zip", "http://mattmahoney.net/dc/text8.zip",
                     "a6640522afe85d1963ad56c05b0ede0a0c000dddc9671758a6cc09b7a38e5232", 31_344_016),
    "wikitext-103": Archive("wikitext-103-v1.zip", "https://wikitext.smerity.com/wikitext-103-v1.zip",
                            "242ba0f20b329cfdf1ccc61e9e9e5b59becf189db7f7a81cd2a0e2fc31539590", None),
}
BYTE_CORPUS_CHARS = 100_000_000  # enwik8 and text8: first 90M train, next 5M valid, last 5M test
TEXT8_SYMBOLS = frozenset(b"abcdefghijklmnopqrstuvwxyz ")
WIKITEXT103_VOCAB = 267_735
SPLIT_FILE_NAMES = ("{split}.txt", "wiki.{split}.tokens", "wiki.{split}.raw")


# ---------------------------------------------------------------- run config


@dataclass
class DataConfig:
    """The `data:` section of a run config: which prepared corpus a run reads."""

    dataset: str
    """Corpus name, one of enwik8, text8, wikitext-103, lexicon, text; must match the prepared meta.json."""
    path: str
    """Directory written by `python -m experiments.data prepare` (relative to the working directory)."""

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or self.dataset not in DATASETS:
            raise ConfigError("dataset", f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if not isinstance(self.path, str) or not self.path.strip():
            raise ConfigError("path", f"must be the directory of prepared data, got {self.path!r}")


# ---------------------------------------------------------------- loading


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
    meta = _read_meta(root)
    _check_meta(root, meta)
    _check_split_files(root, meta)
    if dataset is not None and meta["dataset"] != dataset:
        raise ConfigError("dataset", f"is {dataset!r} but {root} holds {meta['dataset']!r}")
    return Corpus(root, meta)


def _read_meta(root: Path) -> dict[str, Any]:
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise UserError(f"{root}: no meta.json, so preparation never finished; prepare it again with --force")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{meta_path}: unreadable ({err}); prepare the data again with --force") from None
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path}: not a JSON object; prepare the data again with --force")
    return meta


def _check_meta(root: Path, meta: Mapping[str, Any]) -> None:
    def bad(problem: str) -> NoReturn:
        raise UserError(f"{root / 'meta.json'}: {problem}; prepare the data again with --force")

    if meta.get("format") != FORMAT_VERSION:
        bad(f"format {meta.get('format')!r}, this code reads format {FORMAT_VERSION}")
    if meta.get("level") not in ("char", "word"):
        bad(f"level must be 'char' or 'word', got {meta.get('level')!r}")
    vocab = meta.get("vocab")
    if not isinstance(vocab, list) or len(vocab) < 2 or not all(isinstance(s, str) for s in vocab):
        bad("vocab must be a list of at least 2 strings")
    if meta.get("dtype") != dtype_name(len(vocab)):
        bad(f"dtype {meta.get('dtype')!r} does not fit a vocabulary of {len(vocab)}")
    sizes = meta.get("sizes")
    if not isinstance(sizes, dict) or not all(isinstance(sizes.get(s), int) and sizes[s] > 0 for s in SPLITS):
        bad(f"sizes must give a positive token count for each of {', '.join(SPLITS)}")
    if meta["level"] == "char" and not all(s == EOS or (len(s) == 1 and ord(s) < 256) for s in vocab):
        bad("a char-level vocabulary must hold single bytes and <eos>")


def _check_split_files(root: Path, meta: Mapping[str, Any]) -> None:
    itemsize = numpy_dtype(meta["dtype"]).itemsize
    for split in SPLITS:
        path = root / f"{split}.bin"
        expected = meta["sizes"][split] * itemsize
        actual = path.stat().st_size if path.is_file() else None
        if actual != expected:
            found = "missing" if actual is None else f"{actual:,} bytes"
            raise UserError(f"{path}: {found}, meta.json says {meta['sizes'][split]:,} tokens of {meta['dtype']} "
                            f"({expected:,} bytes); prepare the data again with --force")


# ---------------------------------------------------------------- vocabulary and encoding


def dtype_name(vocab_size: int) -> str:
    """The smallest id type for the vocabulary."""
    if vocab_size <= 256:
        return "uint8"
    return "uint16" if vocab_size <= 65536 else "int32"


def numpy_dtype(name: str) -> np.dtype:
    return np.dtype(name).newbyteorder("<")


def byte_symbol(value: int) -> str:
    """A byte's vocabulary string: its Latin-1 character (JSON-safe), `<eos>` for a newline."""
    return EOS if value == NEWLINE else chr(value)


def symbol_byte(symbol: str) -> int:
    if symbol == EOS:
        return NEWLINE
    if len(symbol) != 1 or ord(symbol) > 255:
        raise UserError(f"vocabulary symbol {symbol!r} is not a byte: is this a word-level corpus?")
    return ord(symbol)


def order_vocab(split_counts: Sequence[Mapping[str, int]], by_frequency: bool) -> list[str]:
    """The vocabulary from per-split counts (train first), each in order of first appearance.

    As the authors' loader: symbols of train, then those new in valid, then in
    test. By frequency, ids follow decreasing train count; the sort is stable,
    so ties (and symbols absent from train) keep their first-appearance order.
    """
    vocab = list(dict.fromkeys(itertools.chain.from_iterable(split_counts)))
    if by_frequency:
        train_counts = split_counts[0]
        vocab.sort(key=lambda symbol: -train_counts.get(symbol, 0))
    return vocab


def _byte_counts(data: bytes) -> dict[str, int]:
    """Occurrences of each byte symbol, keyed in order of first appearance."""
    values, first_index, counts = np.unique(np.frombuffer(data, dtype=np.uint8), return_index=True, return_counts=True)
    return {byte_symbol(int(values[i])): int(counts[i]) for i in np.argsort(first_index)}


def _word_counts(lines: Iterable[str]) -> Counter[str]:
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


def encode_text(source: str | os.PathLike | bytes, meta: Mapping[str, Any]) -> np.ndarray:
    """Ids of a raw text under a prepared corpus's vocabulary, exactly as `prepare` encodes its splits."""
    if isinstance(source, bytes):
        data, where = source, "text"
    else:
        data, where = _read_file(Path(source)), str(source)
    if meta["level"] == "char":
        return encode_bytes(data, meta["vocab"], where)
    return encode_lines(read_lines(partial(io.BytesIO, data), where), meta["vocab"], where)


def decode_bytes(ids: Iterable[int] | np.ndarray, vocab: Sequence[str]) -> bytes:
    """The bytes that character-level ids stand for (<eos> back to a newline)."""
    table = np.array([symbol_byte(symbol) for symbol in vocab], dtype=np.uint8)
    return table[np.asarray(ids, dtype=np.int64)].tobytes()


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None


# ---------------------------------------------------------------- building a corpus


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
    ids: dict[str, np.ndarray]
    extra: dict[str, Any]


def char_corpus(texts: Mapping[str, bytes], by_frequency: bool, extra: dict[str, Any]) -> Prepared:
    vocab = order_vocab([_byte_counts(texts[split]) for split in SPLITS], by_frequency)
    ids = {split: encode_bytes(texts[split], vocab, split) for split in SPLITS}
    return Prepared("char", vocab, _order_name(by_frequency), ids, extra)


def word_corpus(sources: Mapping[str, SplitSource], by_frequency: bool, extra: dict[str, Any]) -> Prepared:
    # Two passes (count, then encode) so that prepare encodes with the very function encode_text uses.
    counts = [_word_counts(read_lines(sources[split].open, sources[split].label)) for split in SPLITS]
    vocab = order_vocab(counts, by_frequency)
    ids = {split: encode_lines(read_lines(sources[split].open, sources[split].label), vocab, sources[split].label)
           for split in SPLITS}
    return Prepared("word", vocab, _order_name(by_frequency), ids, extra)


def _order_name(by_frequency: bool) -> str:
    return "frequency" if by_frequency else "appearance"


# ---------------------------------------------------------------- sources


def fetch_source(source: str | None, archive: Archive, work: Path) -> tuple[Path, str | None]:
    """A local file for --source (default: the official URL), and the URL it came from if any."""
    source = source or archive.url
    if source.startswith(("http://", "https://")):
        return _download(source, work / archive.file_name), source
    path = Path(source)
    if path.is_dir():
        path = path / archive.file_name
    if not path.is_file():
        raise UserError(f"source {path} does not exist")
    return path, None


def _download(url: str, target: Path) -> Path:
    print(f"downloading {url} ...", flush=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out, length=1 << 20)
    except (OSError, http.client.HTTPException, ValueError) as err:
        raise UserError(f"cannot download {url}: {err}") from None
    return target


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_official(path: Path, archive: Archive, hint: str = "") -> str:
    """The file's sha256, which must be the pinned one of the official archive."""
    digest = sha256_file(path)
    if digest != archive.sha256:
        official_size = f"{archive.size:,} bytes, " if archive.size else ""
        raise UserError(f"{path} ({path.stat().st_size:,} bytes, sha256 {digest}) is not the official "
                        f"{archive.file_name} ({official_size}sha256 {archive.sha256}): truncated or wrong file{hint}")
    return digest


def read_byte_source(path: Path, member: str) -> bytes:
    """The raw bytes of a source: a zip's `member` (or its only member), else the file itself."""
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"  # by magic, so a truncated zip is not mistaken for text
    if not is_zip:
        return _read_file(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if member not in names and len(names) != 1:
                raise UserError(f"{path}: the zip has no member {member!r} (it has {', '.join(names[:5])})")
            return archive.read(member if member in names else names[0])
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise UserError(f"{path}: not a readable zip archive ({err}); truncated download?") from None


def _source_record(path: Path, digest: str, url: str | None, **details: Any) -> dict[str, Any]:
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": digest, "url": url, **details}


# ---------------------------------------------------------------- the datasets


def _prepare_byte_corpus(args: argparse.Namespace, work: Path) -> Prepared:
    """enwik8 / text8: the official zip, split 90/5/5 (of 10^8 bytes, or of --scaled-split bytes)."""
    archive = ARCHIVES[args.name]
    path, url = fetch_source(args.source, archive, work)
    total = args.scaled_split or BYTE_CORPUS_CHARS
    if args.scaled_split is None:
        digest = verify_official(path, archive, "; a partial or different file needs --scaled-split TOTAL")
    else:
        digest = sha256_file(path)
    data = read_byte_source(path, member=args.name)
    if len(data) < total:
        raise UserError(f"{path}: {len(data):,} bytes, fewer than the {total:,} the split needs")
    data = data[:total]
    if args.name == "text8":
        _check_text8_symbols(data, path)
    texts = _split_90_5_5(data)
    record = _source_record(path, digest, url, official=args.scaled_split is None, scaled_split=args.scaled_split)
    return char_corpus(texts, by_frequency=False, extra={"source": record})


def _split_90_5_5(data: bytes) -> dict[str, bytes]:
    twentieth = len(data) // 20
    train_end, valid_end = 18 * twentieth, 19 * twentieth
    return {"train": data[:train_end], "valid": data[train_end:valid_end], "test": data[valid_end:]}


def _check_text8_symbols(data: bytes, path: Path) -> None:
    present = np.flatnonzero(np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256))
    strangers = [int(b) for b in present if int(b) not in TEXT8_SYMBOLS]
    if strangers:
        raise UserError(f"{path}: text8 holds only a-z and space, but this file has byte {strangers[0]} "
                        f"({len(strangers)} distinct other bytes in all)")


def _prepare_wikitext103(args: argparse.Namespace, work: Path) -> Prepared:
    """WikiText-103 words from the official zip, ids by decreasing train count (adaptive softmax)."""
    archive = ARCHIVES["wikitext-103"]
    path, url = fetch_source(args.source, archive, work)
    digest = verify_official(path, archive)
    members = {split: f"wikitext-103/wiki.{split}.tokens" for split in SPLITS}
    sources = {split: SplitSource(f"{path}:{member}", partial(_open_member, path, member))
               for split, member in members.items()}
    prepared = word_corpus(sources, by_frequency=True, extra={"source": _source_record(path, digest, url, official=True)})
    if len(prepared.vocab) != WIKITEXT103_VOCAB:
        raise UserError(f"{path}: vocabulary of {len(prepared.vocab):,} words, the paper's is {WIKITEXT103_VOCAB:,}; "
                        "the tokenisation here disagrees with the authors'")
    return prepared


def _open_member(path: Path, member: str) -> BinaryIO:
    with zipfile.ZipFile(path) as archive:
        return archive.open(member)  # the member stream keeps the file open after the archive closes


def _prepare_text(args: argparse.Namespace, work: Path) -> Prepared:
    """Local train/valid/test text files as bytes or words (e.g. WikiText-2)."""
    root = Path(args.source)
    if not root.is_dir():
        raise UserError(f"source {root} is not a directory holding train/valid/test text files")
    files = {split: _split_file(root, split) for split in SPLITS}
    record = {"dir": str(root.resolve()), "files": {
        split: {"file": f.name, "bytes": f.stat().st_size, "sha256": sha256_file(f)} for split, f in files.items()}}
    by_frequency = args.vocab_order == "frequency"
    if args.level == "char":
        return char_corpus({split: _read_file(f) for split, f in files.items()}, by_frequency, {"source": record})
    sources = {split: SplitSource(str(f), partial(open, f, "rb")) for split, f in files.items()}
    return word_corpus(sources, by_frequency, {"source": record})


def _split_file(root: Path, split: str) -> Path:
    candidates = [root / pattern.format(split=split) for pattern in SPLIT_FILE_NAMES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserError(f"{root}: no {split} split (looked for {', '.join(c.name for c in candidates)})")


def _prepare_lexicon(args: argparse.Namespace, work: Path) -> Prepared:
    """The embedded corpus: no newline anywhere, so its 27 symbols (a-z, space) have no <eos>."""
    try:
        spec = LexiconSpec(**{f.name: getattr(args, f.name) for f in fields(LexiconSpec)})
    except ConfigError as err:
        raise UserError(f"--{err.field.replace('_', '-')}: {err.message}") from None
    lexicon, texts = generate_splits(spec)
    extra = {"entropy_floor_bpc": entropy_floor_bpc(lexicon),
             "source": {"generator": "experiments.lexicon", "spec": spec.as_dict()}}
    return char_corpus(texts, by_frequency=False, extra=extra)


PREPARERS: dict[str, Callable[[argparse.Namespace, Path], Prepared]] = {
    "enwik8": _prepare_byte_corpus,
    "text8": _prepare_byte_corpus,
    "wikitext-103": _prepare_wikitext103,
    "lexicon": _prepare_lexicon,
    "text": _prepare_text,
}


# ---------------------------------------------------------------- writing


def write_prepared(directory: Path, dataset: str, prepared: Prepared) -> dict[str, Any]:
    """Write the split files, then meta.json: its presence is what marks the data complete."""
    dtype = numpy_dtype(dtype_name(len(prepared.vocab)))
    digests = {}
    for split in SPLITS:
        if not len(prepared.ids[split]):
            raise UserError(f"the {split} split of {dataset} is empty")
        raw = memoryview(np.ascontiguousarray(prepared.ids[split], dtype=dtype).view(np.uint8))
        atomic_write(directory / f"{split}.bin", lambda f, raw=raw: f.write(raw))
        digests[f"{split}.bin"] = hashlib.sha256(raw).hexdigest()
    meta = {"format": FORMAT_VERSION, "dataset": dataset, "level": prepared.level,
            "vocab_order": prepared.vocab_order, "vocab_size": len(prepared.vocab), "vocab": prepared.vocab,
            "sizes": {split: len(prepared.ids[split]) for split in SPLITS},
            "dtype": dtype_name(len(prepared.vocab)), "byteorder": "little", "sha256": digests, **prepared.extra}
    atomic_write_json(directory / "meta.json", meta)
    _make_readable(directory)
    return meta


def _make_readable(directory: Path) -> None:
    # Temp files and dirs are created private (0600/0700); prepared data is shared, so honour the umask instead.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for path in directory.iterdir():
        os.chmod(path, 0o666 & ~umask)


def _refuse_existing(out: Path, force: bool) -> None:
    if force or not (out.exists() or out.is_symlink()) or (out.is_dir() and not any(out.iterdir())):
        return
    what = "prepared data" if (out / "meta.json").is_file() else "not prepared data"
    raise UserError(f"{out} already exists ({what}); pass --force to replace it")


@contextmanager
def _workspace(out: Path) -> Iterator[Path]:
    """A scratch directory beside `out` (same filesystem, so the final rename is atomic), always removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _publish(staged: Path, out: Path, force: bool) -> None:
    """Rename the finished directory to `out`; an old `out` is retired into the workspace and removed with it."""
    _refuse_existing(out, force)  # again: another prepare may have finished in the meantime
    if out.exists() or out.is_symlink():
        os.replace(out, staged.parent / "retired")
    os.replace(staged, out)
    directory = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


# ---------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit 2 (via run_cli), without the usage dump."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message)


def _scaled_split(text: str) -> int:
    total = int(text) if text.isdigit() else 0
    if total <= 0 or total % 20:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive multiple of 20 (for an exact 90/5/5 split)")
    return total


def _add_common(parser: argparse.ArgumentParser, source_help: str | None, source_required: bool = False) -> None:
    if source_help:
        parser.add_argument("--source", required=source_required, help=source_help)
    parser.add_argument("--out", help="output directory (default: data/<name> under the project root)")
    parser.add_argument("--force", action="store_true", help="replace existing data at --out")


def _add_lexicon_options(parser: argparse.ArgumentParser) -> None:
    for f in fields(LexiconSpec):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                            help=f"LexiconSpec.{f.name} (default: {f.default})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m experiments.data", description="Prepare corpora for training.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = commands.add_parser("prepare", help="prepare a corpus").add_subparsers(
        dest="name", required=True, metavar="NAME", title="corpora")
    for name in ("enwik8", "text8"):
        byte_parser = names.add_parser(name, help=f"{name} bytes, 90M/5M/5M split")
        _add_common(byte_parser, f"{ARCHIVES[name].file_name}: a file, a directory holding it, or a URL "
                                 f"(default: {ARCHIVES[name].url})")
        byte_parser.add_argument("--scaled-split", type=_scaled_split, metavar="TOTAL",
                                 help="accept a non-official file: split its first TOTAL bytes 90/5/5")
    _add_common(names.add_parser("wikitext-103", help="WikiText-103 words"),
                f"wikitext-103-v1.zip: a file, a directory holding it, or a URL (default: {ARCHIVES['wikitext-103'].url})")
    lexicon = names.add_parser("lexicon", help="the embedded synthetic corpus (DESIGN §6)")
    _add_common(lexicon, source_help=None)
    _add_lexicon_options(lexicon)
    text = names.add_parser("text", help="a directory of train/valid/test text files")
    _add_common(text, "directory with train/valid/test files (" + ", ".join(SPLIT_FILE_NAMES) + ")",
                source_required=True)
    text.add_argument("--level", choices=("char", "word"), required=True, help="bytes or whitespace-separated words")
    text.add_argument("--vocab-order", choices=("appearance", "frequency"), default="appearance",
                      help="ids by first appearance, or by decreasing train count (adaptive softmax)")
    return parser


def _default_out(args: argparse.Namespace) -> Path:
    if args.name == "text":
        return PROJECT_ROOT / "data" / f"{Path(args.source).resolve().name}-{args.level}"
    return PROJECT_ROOT / "data" / args.name


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out) if args.out else _default_out(args)
    _refuse_existing(out, args.force)
    with _workspace(out) as work:
        prepared = PREPARERS[args.name](args, work)
        staged = work / "prepared"
        staged.mkdir()
        meta = write_prepared(staged, args.name, prepared)
        _publish(staged, out, args.force)
    sizes = " / ".join(f"{split} {meta['sizes'][split]:,}" for split in SPLITS)
    floor = f", entropy floor {meta['entropy_floor_bpc']:.4f} bpc" if "entropy_floor_bpc" in meta else ""
    print(f"prepared {args.name} in {out}: {meta['level']} level, vocabulary {meta['vocab_size']:,}, "
          f"tokens {sizes}{floor}")
    return 0


if __name__ == "__main__":
    run_cli(main)
