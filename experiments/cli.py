"""The command-line convention of every command of the harness.

Bad input (YAML, flags, a corrupted file, missing data) is reported as one line on
stderr with exit status 2, never a traceback: researchers read these in SLURM logs,
where a traceback buries the cause.
"""
from __future__ import annotations

import argparse
import errno
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, NoReturn, Sequence

from model.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors (an unknown flag, a missing or malformed argument) are
    one line naming the command, via run_cli, instead of a usage block and then the error."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message} (see --help)")


def at_least(minimum: int) -> Callable[[str], int]:
    """argparse `type` of an integer flag (a count: steps, rows, threads) of at least `minimum`;
    anything else is argparse's one-line error naming the flag."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def non_negative(text: str) -> float:
    """argparse `type` of a finite float flag >= 0 (a margin, a tolerance)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


ENVIRONMENT_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT,
                                errno.ENAMETOOLONG, errno.ELOOP})
"""OSErrors that say what the machine refuses (a read-only or full filesystem, permissions), not
what the code got wrong: a command says them in one line."""


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a command's `main`, turning a UserError into one stderr line and exit 2, an OSError of
    ENVIRONMENT_ERRNOS into one line naming the file and exit 1, and each warning into one line
    `warning: ...` (Python's format adds the file, line number and source line of the warn()
    call, which mean nothing to the command's user)."""
    warnings.formatwarning = _one_line_warning
    try:
        code = main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if err.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f": {os.fsdecode(err.filename)}" if err.filename is not None else ""
        print(f"error: {err.strerror or err}{where}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    return f"warning: {message}\n"


def output_file(path: Path | None, flag: str, inputs: Sequence[str | os.PathLike | None] = (),
                force: bool | None = None) -> Path | None:
    """`path` (None stays None) if a file can be written there. Raises UserError, before any
    compute, if it is a directory or its folder is a file; if it is one of the command's `inputs`
    or lies inside one (a folder); and, with `force=False`, if it exists (`--force` replaces it)."""
    if path is None:
        return None
    if path.is_dir():
        raise UserError(f"{flag}: {path} is a directory, not a file")
    if _file_on_path(path):
        raise UserError(f"{flag}: cannot write {path}: a folder on its path is a file")
    for source in filter(None, inputs):
        if _is_or_inside(path, Path(source)):
            raise UserError(f"{flag}: {path} is {'inside ' if Path(source).is_dir() else ''}an input of this "
                            f"command ({source}); writing it would destroy it: write elsewhere")
    if force is False and path.exists():
        raise UserError(f"{flag}: {path} exists; pass --force to replace it")
    return path


def _is_or_inside(path: Path, source: Path) -> bool:
    """Whether `path` names `source` (through links too) or a file inside the folder `source`."""
    if path.exists() and source.exists() and os.path.samefile(path, source):
        return True
    return source.is_dir() and path.resolve().is_relative_to(source.resolve())


def folder(text: str) -> Path:
    """argparse `type` of a folder flag (a results root, an output or run directory): refused in
    argparse's one line, before any compute, if it or a folder on its path is a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a file, not a folder")
    if _file_on_path(path):
        raise argparse.ArgumentTypeError(f"cannot use {path}: a folder on its path is a file")
    return path


def _file_on_path(path: Path) -> bool:
    return any(parent.exists() and not parent.is_dir() for parent in path.parents)
