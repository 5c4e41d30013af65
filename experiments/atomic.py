"""Atomic file writes: a reader sees the old file or the new one, never a torn one.

Write to a temporary file in the same directory, fsync it, rename it over the
target, then fsync the directory so the rename itself survives a crash.

The file gets the permissions any other new file would get (0666 minus the umask):
mkstemp creates its temporary file 0600, and renaming it would otherwise make
status.json, eval.json, config.yaml and checkpoints unreadable by teammates.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

from experiments import strict_json


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(fileobj)` on a temp file, then atomically move it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            _share_like_any_new_file(f.fileno())
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        failed = os_error_in(err)
        if failed is not None and failed.filename is None:
            failed.filename = str(path)  # a failed write names no file (e.g. ENOSPC): say which
        if failed is not None and failed is not err:
            raise failed from None  # the write's own error, not what the writer made of it
        raise
    fsync_dir(path.parent)


def os_error_in(err: BaseException) -> OSError | None:
    """`err` if it is an OSError, else the first OSError it was raised from or while handling: a
    writer may turn a failed write into its own error (torch.save: ENOSPC becomes RuntimeError
    "unexpected pos ...", the OSError only its __context__)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _share_like_any_new_file(fd: int) -> None:
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except OSError:  # a filesystem without POSIX modes: its own defaults apply, as to any file
        pass


def current_umask() -> int:
    """The process umask, read without changing it where the system allows.

    os.umask can only read the mask by setting it, which for an instant gives other
    threads creating files a mask of 0; Linux shows it in /proc/self/status instead.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)  # the fallback sets a restrictive mask for that instant, never a permissive one
    os.umask(mask)
    return mask


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, strict_json.dumps(obj, indent=2, sort_keys=True) + "\n")
