"""The command-line convention of every command of the harness.

Bad input (YAML, flags, a corrupted file, missing data) is reported as one line on
stderr with exit status 2, never a traceback: researchers read these in SLURM logs,
where a traceback buries the cause.
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence

from model.errors import UserError


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a command's `main`, turning a UserError into one stderr line and exit 2."""
    try:
        code = main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
