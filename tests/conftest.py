"""Shared fixtures: the real corpora in ../shared/data, skipped only outside CI."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


def require_path(path: Path, what: str) -> Path:
    """Return `path`, or skip (fail under CI=true) when it is missing."""
    if path.exists():
        return path
    reason = f"{what} not found at {path} (the shared corpora live beside the project)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason + "; CI must have it")
    pytest.skip(reason)


@pytest.fixture
def shared_data() -> Path:
    """The folder of real corpora (WikiText-2, enwik8 prefix)."""
    return require_path(SHARED_DATA, "shared data folder")
