"""Official archives: where they come from, their pinned checksums, and reading them.

Compute nodes often have no internet: `--source` takes the downloaded archive
(a file, a directory holding it, or a URL). A file that is not the pinned one is
refused unless `--allow-unpinned` says so (miniature archives in the official
format, for tests); the prepared meta.json then records `"official": false`.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import shutil
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

from experiments.data.encoding import Prepared, char_corpus, read_file
from model.errors import UserError


@dataclass(frozen=True)
class Archive:
    """An official distribution file, pinned so that a wrong or truncated download is refused."""

    file_name: str
    url: str
    sha256: str
    size: int | None
    """Bytes, only to make the error message helpful; None where no source confirmed it."""


def add_archive_arguments(parser: argparse.ArgumentParser, archive: Archive) -> None:
    parser.add_argument("--source", help=f"{archive.file_name}: a file, a directory holding it, or a URL "
                                         f"(default: {archive.url})")
    parser.add_argument("--allow-unpinned", action="store_true",
                        help=f"accept a file that is not the official {archive.file_name} (its sha256 is recorded, "
                             "not checked): a miniature in the same format, for tests; never for paper numbers")


def local_source(source: str | None, archive: Archive) -> Path | None:
    """The local file --source names (a directory stands for the archive in it); None for a URL or no --source."""
    if not source or source.startswith(("http://", "https://")):
        return None
    path = Path(source)
    return path / archive.file_name if path.is_dir() else path


def archive_sources(archive: Archive) -> Callable[[argparse.Namespace], list[Path]]:
    """`Dataset.source_paths` of an archive dataset: the one file it reads, not the folder holding it."""
    def paths(args: argparse.Namespace) -> list[Path]:
        path = local_source(args.source, archive)
        return [] if path is None else [path]
    return paths


def fetch_source(source: str | None, archive: Archive, work: Path) -> tuple[Path, str | None]:
    """A local file for --source (default: the official URL), and the URL it came from if any."""
    path = local_source(source, archive)
    if path is None:
        url = source or archive.url
        return _download(url, work / archive.file_name), url
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


def unpinned_warning(path: Path, archive: Archive, digest: str) -> str:
    return (f"{path} (sha256 {digest[:16]}...) was not checked against the pinned sha256 of the official "
            f"{archive.file_name}: results on this data are not comparable with the paper's")


ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
"""A zip starts with a local file header, or with the end record when it is empty, or with the
spanning marker: by magic, so a truncated zip is not mistaken for text, nor an empty one."""


def is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in ZIP_MAGICS


def read_byte_source(path: Path, member: str) -> bytes:
    """The raw bytes of a source: a zip's `member` (or its only member), else the file itself."""
    if not is_zip(path):
        return read_file(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if member not in names and len(names) != 1:
                raise UserError(f"{path}: the zip has no member {member!r} "
                                f"({'it is empty' if not names else 'it has ' + ', '.join(names[:5])})")
            return archive.read(member if member in names else names[0])
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise UserError(f"{path}: not a readable zip archive ({err}); truncated download?") from None


def open_member(path: Path, member: str) -> BinaryIO:
    """A zip member as a binary stream (the stream keeps the file open after the archive object closes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if member not in archive.namelist():
                raise UserError(f"{path}: the zip has no member {member!r}")
            return archive.open(member)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise UserError(f"{path}: not a readable zip archive ({err}); truncated download?") from None


def source_record(path: Path, digest: str, url: str | None, **details: Any) -> dict[str, Any]:
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": digest, "url": url, **details}


def split_90_5_5(data: bytes) -> dict[str, bytes]:
    """enwik8 / text8's standard split: first 90% train, next 5% valid, the rest test."""
    twentieth = len(data) // 20
    train_end, valid_end = 18 * twentieth, 19 * twentieth
    return {"train": data[:train_end], "valid": data[train_end:valid_end], "test": data[valid_end:]}


# ---------------------------------------------------------------- enwik8 and text8: one byte file, split 90/5/5

BYTE_CORPUS_CHARS = 100_000_000  # first 90M train, next 5M valid, last 5M test
BYTE_SPLIT_SIZES = {"train": 90_000_000, "valid": 5_000_000, "test": 5_000_000}


def add_byte_archive_arguments(parser: argparse.ArgumentParser, archive: Archive) -> None:
    add_archive_arguments(parser, archive)
    parser.add_argument("--scaled-split", type=_scaled_split, metavar="TOTAL",
                        help="accept a non-official file: split its first TOTAL bytes 90/5/5")


def _scaled_split(text: str) -> int:
    total = int(text) if text.isdigit() else 0
    if total <= 0 or total % 20:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive multiple of 20 (for an exact 90/5/5 split)")
    return total


def prepare_byte_archive(args: argparse.Namespace, work: Path, archive: Archive, member: str, official_vocab: int,
                         check: Callable[[bytes, Path], None] | None = None) -> Prepared:
    """The official zip's `member`, 10^8 bytes split 90/5/5 as bytes (ids by first appearance).

    A file that is not the pinned archive needs --allow-unpinned (split whole, or its
    first 10^8 bytes) or --scaled-split TOTAL (its first TOTAL bytes).
    """
    path, url = fetch_source(args.source, archive, work)
    digest = sha256_file(path)
    official = digest == archive.sha256 and args.scaled_split is None
    if not official and not (args.allow_unpinned or args.scaled_split):
        verify_official(path, archive, "; a miniature or other file needs --allow-unpinned (or --scaled-split TOTAL)")
    data = read_byte_source(path, member=member)
    total = args.scaled_split or (BYTE_CORPUS_CHARS if official else min(len(data), BYTE_CORPUS_CHARS))
    if len(data) < total:
        raise UserError(f"{path}: {len(data):,} bytes, fewer than the {total:,} the split needs")
    data = data[:total]
    if check is not None:
        check(data, path)
    record = source_record(path, digest, url, official=official, scaled_split=args.scaled_split, bytes_used=total)
    prepared = char_corpus(split_90_5_5(data), by_frequency=False, extra={"source": record})
    if official and len(prepared.vocab) != official_vocab:
        raise UserError(f"{path}: vocabulary of {len(prepared.vocab)} symbols, the official {archive.file_name} "
                        f"gives {official_vocab}; the byte rule here has changed")
    if not official:
        prepared.warnings.append(unpinned_warning(path, archive, digest))
    return prepared
