"""Errors caused by user input, and the command-line convention for them.

Every command of the harness reports bad input (YAML, flags, a corrupted file,
missing data) as one line on stderr and exits with status 2, never with a
traceback: researchers read these in SLURM logs, where a traceback buries the cause.
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence


class UserError(Exception):
    """Bad input from the user; the message alone must say what to fix."""


class ConfigError(UserError):
    """A config value is wrong. `field` is the dotted path of the offending key."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)

    def under(self, prefix: str) -> "ConfigError":
        """The same error with its field path prefixed by the enclosing section."""
        path = f"{prefix}.{self.field}" if self.field else prefix
        return ConfigError(path, self.message)


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
