"""Miniature archives in the official distribution formats, built from ../shared/data.

Each has the official file name and member names, and the byte conventions of
the real corpus; `prepare NAME --source ZIP --allow-unpinned` reads it through
the same code as the real archive. Each also gives the vocabulary size that
the real archive gives, so a paper config's `model.vocab_size` fits it unchanged:

- `enwik8.zip` holding `enwik8`: the first 10^5 bytes of the real enwik8
  (MediaWiki XML, UTF-8, newline line ends), with one more <page> whose text
  adds valid UTF-8 characters until the file has 205 distinct byte values, as
  the real 10^8 bytes have (which bytes those are cannot be known without the
  file; their number is what the model depends on).
- `text8.zip` holding `text8`: WikiText-2 text cleaned the way text8 was
  (lowercase, digits spelled out, anything else a single space, one line that
  starts with a space, no newline): the 27 symbols of the real text8.
- `wikitext-103-v1.zip` holding `wikitext-103/wiki.{train,valid,test}.tokens`:
  WikiText-2 lines (the same tokenisation and layout: " = Title = " headings,
  lines that start and end with a space), valid and test words missing from the
  train part replaced by <unk> (as in the real files), and one more train
  article of distinct filler words so that the vocabulary is WikiText-103's
  267,735 (words + <eos>). Valid and test hold enough tokens for the paper
  config's geometry (64 x 257 for the partial validation).

Archives are deterministic (fixed member timestamps): same bytes on every build.
"""
from __future__ import annotations

import itertools
import re
import string
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

from experiments.data.datasets import enwik8, text8, wikitext103

ENWIK5_USED_BYTES = 100_000
TEXT8_CHARS = 200_000  # a multiple of 20: an exact 90/5/5 split
WT103_TRAIN_CHARS = 300_000
WT103_EVAL_CHARS = 120_000  # about 23k tokens per split
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
STAMP = (2019, 7, 1, 0, 0, 0)


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=STAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return path


# ---------------------------------------------------------------- enwik8


def enwik8_bytes(shared: Path) -> bytes:
    data = (shared / "enwik8" / "enwik5").read_bytes()[:ENWIK5_USED_BYTES]
    present = set(data)
    added = []
    # printable ASCII, then 2-byte and 3-byte UTF-8 characters: no control byte, nothing invalid in UTF-8
    candidates = itertools.chain(range(0x21, 0x7F), range(0xA0, 0x800), range(0x800, 0xD800), range(0xF900, 0xFFFD))
    for code in candidates:
        new = set(chr(code).encode("utf-8")) - present
        if new and len(present) + len(new) <= enwik8.VOCAB:
            present |= new
            added.append(chr(code))
        if len(present) == enwik8.VOCAB:
            break
    page = ("  <page>\n    <title>Miniature</title>\n    <id>0</id>\n    <revision>\n"
            "      <text xml:space=\"preserve\">" + escape(" ".join(added)) + "</text>\n    </revision>\n  </page>\n")
    at = data.index(b"  <page>")  # after the siteinfo header, so the page is in the train split
    data = data[:at] + page.encode("utf-8") + data[at:]
    data += b" " * (-len(data) % 20)  # an exact 90/5/5 split
    assert len(set(data)) == enwik8.VOCAB, len(set(data))
    return data


def enwik8_zip(directory: Path, shared: Path) -> Path:
    return write_zip(directory / enwik8.ARCHIVE.file_name, {"enwik8": enwik8_bytes(shared)})


# ---------------------------------------------------------------- text8


def text8_bytes(shared: Path) -> bytes:
    text = (shared / "wikitext-2" / "train.txt").read_text(encoding="utf-8")[: 2 * TEXT8_CHARS]
    text = text.replace("<unk>", " ").lower()
    text = re.sub(r"[0-9]", lambda digit: f" {DIGITS[int(digit.group())]} ", text)
    text = re.sub(r"[^a-z]+", " ", text)
    data = (" " + text.strip()).encode("ascii")[:TEXT8_CHARS]
    assert len(data) == TEXT8_CHARS and set(data) == text8.SYMBOLS
    return data


def text8_zip(directory: Path, shared: Path) -> Path:
    return write_zip(directory / text8.ARCHIVE.file_name, {"text8": text8_bytes(shared)})


# ---------------------------------------------------------------- WikiText-103


def _whole_lines(path: Path, chars: int) -> list[str]:
    lines, total = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if total >= chars:
                break
            lines.append(line)
            total += len(line)
    return lines


def _filler_words(taken: set[str], count: int) -> list[str]:
    """`count` distinct lowercase words absent from `taken`, shortest first."""
    words = []
    for length in itertools.count(2):
        for letters in itertools.product(string.ascii_lowercase, repeat=length):
            word = "".join(letters)
            if word not in taken:
                words.append(word)
                if len(words) == count:
                    return words


def wikitext103_members(shared: Path) -> dict[str, bytes]:
    train = _whole_lines(shared / "wikitext-2" / "train.txt", WT103_TRAIN_CHARS)
    train += [" \n", " = Miniature vocabulary = \n", " \n"]
    vocab = {word for line in train for word in line.split()}
    filler = _filler_words(vocab, wikitext103.VOCAB - 1 - len(vocab))  # - 1: <eos>
    train += [" " + " ".join(filler[i:i + 100]) + " \n" for i in range(0, len(filler), 100)]
    members = {"train": "".join(train)}
    for split in ("valid", "test"):
        lines = _whole_lines(shared / "wikitext-2" / f"{split}.txt", WT103_EVAL_CHARS)
        members[split] = "".join(
            " ".join(w if w in vocab else "<unk>" for w in line.split()).join([" ", " \n"]) if line.strip() else line
            for line in lines)
    return {wikitext103.MEMBERS[split]: text.encode("utf-8") for split, text in members.items()}


def wikitext103_zip(directory: Path, shared: Path) -> Path:
    return write_zip(directory / wikitext103.ARCHIVE.file_name, wikitext103_members(shared))


MINIATURES = {"enwik8": enwik8_zip, "text8": text8_zip, "wikitext-103": wikitext103_zip}
"""dataset name -> builder(directory, shared data folder) -> the archive's path"""
