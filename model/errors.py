"""Errors caused by user input. Commands turn them into one stderr line and exit 2
(`experiments/cli.py`); the message alone must say what to fix.
"""
from __future__ import annotations


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

