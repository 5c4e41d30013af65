"""Writing a prepared corpus: the memory-mapped splits, then meta.json, moved into place atomically.

Preparation happens in a scratch directory beside the output that is renamed
into place at the end: bad input never touches data prepared before, nothing
is replaced without `--force`, and `--force` replaces only a folder that
`prepare` wrote (or an empty one): never someone's other files.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from experiments.atomic import atomic_write, atomic_write_json
from experiments.data.corpus import is_prepared
from experiments.data.encoding import Prepared, refuse_empty_split
from experiments.data.format import EOS, FORMAT_VERSION, META, MIN_VOCAB, SPLITS, dtype_name, numpy_dtype
from model.errors import UserError


def write_prepared(directory: Path, dataset: str, prepared: Prepared) -> dict[str, Any]:
    """Write the split files, then meta.json (the data contract, format.py): its presence marks the data complete."""
    dtype = numpy_dtype(dtype_name(len(prepared.vocab)))
    digests = {}
    for split in SPLITS:
        refuse_empty_split(split, len(prepared.ids[split]), dataset)  # for a preparer that builds ids itself
        raw = memoryview(np.ascontiguousarray(prepared.ids[split], dtype=dtype).view(np.uint8))
        atomic_write(directory / f"{split}.bin", lambda f, raw=raw: f.write(raw))
        digests[f"{split}.bin"] = hashlib.sha256(raw).hexdigest()
    eos_id = prepared.vocab.index(EOS) if EOS in prepared.vocab else None
    meta = {"format": FORMAT_VERSION, "dataset": dataset, "level": prepared.level,
            "vocab_order": prepared.vocab_order, "vocab_rule": prepared.vocab_rule,
            "vocab_size": len(prepared.vocab), "eos": None if eos_id is None else EOS, "eos_id": eos_id,
            "vocab": prepared.vocab, "sizes": {split: len(prepared.ids[split]) for split in SPLITS},
            "dtype": dtype_name(len(prepared.vocab)), "byteorder": "little", "sha256": digests, **prepared.extra}
    atomic_write_json(directory / META, meta)
    _make_readable(directory)
    return meta


def _make_readable(directory: Path) -> None:
    # Temp files and dirs are created private (0600/0700); prepared data is shared, so honour the umask instead.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for path in directory.iterdir():
        os.chmod(path, 0o666 & ~umask)


def refuse_existing(out: Path, force: bool) -> None:
    """Raises UserError if `out` exists, is not empty, and is either not prepared data (not even with
    --force: replacing it would delete someone's files) or prepared data without --force."""
    if not (out.exists() or out.is_symlink()) or (out.is_dir() and not any(out.iterdir())):
        return
    if not is_prepared(out):
        raise UserError(f"{out} exists and is not prepared data (a meta.json and the split files only); "
                        "choose another --out")
    if not force:
        raise UserError(f"{out} already exists (prepared data); pass --force to replace it")


def refuse_small_vocabulary(prepared: Prepared, source: str) -> None:
    """Raises UserError if the corpus has fewer than MIN_VOCAB symbols: the loader would refuse it."""
    if len(prepared.vocab) < MIN_VOCAB:
        raise UserError(f"{source}: a vocabulary of {len(prepared.vocab)} symbol(s) {prepared.vocab}; "
                        f"a language model needs at least {MIN_VOCAB} symbols")


@contextmanager
def workspace(out: Path) -> Iterator[Path]:
    """A scratch directory beside `out` (same filesystem, so the final rename is atomic), always removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def publish(staged: Path, out: Path, force: bool) -> None:
    """Rename the finished directory to `out`; an old `out` is retired into the workspace and removed with it."""
    refuse_existing(out, force)  # again: another prepare may have finished in the meantime
    if out.exists() or out.is_symlink():
        os.replace(out, staged.parent / "retired")
    os.replace(staged, out)
    directory = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def prepare_into(out: Path, dataset: str, prepared_in: Callable[[Path], Prepared], force: bool,
                 source: str) -> tuple[dict, list[str]]:
    """Run a preparer in a scratch directory beside `out`, write the corpus, publish it; (meta, warnings).

    `source` names the input in messages. Raises UserError (refuse_existing, before any reading;
    refuse_small_vocabulary and the preparer's own, before anything reaches `out`).
    """
    refuse_existing(out, force)
    with workspace(out) as work:
        prepared = prepared_in(work)
        refuse_small_vocabulary(prepared, source)
        staged = work / "prepared"
        staged.mkdir()
        meta = write_prepared(staged, dataset, prepared)
        publish(staged, out, force)
    return meta, prepared.warnings
