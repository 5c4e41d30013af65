"""Reader of a run's metrics.jsonl (DESIGN §4), shared by status and analysis.

The trainer appends one flushed JSON line per record, so a crash leaves at most a
torn last line; a requeued attempt rewrites steps already logged.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl, one per (split, step), the last written winning.

    A torn last line (a crash mid-write) is dropped. A requeued attempt appends
    after such a torn line, so its first record shares that line: the record is
    recovered from the line's last '{' (records are flat); a line that still does
    not parse is dropped with a warning. The resumed attempt rewrites steps already
    logged: its records replace the earlier ones. Records are sorted by step.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    latest: dict[tuple[Any, Any], dict[str, Any]] = {}
    for number, line in enumerate(lines, start=1):
        record = _parse_record(line)
        if record is not None:
            latest[(record.get("split"), record.get("step"))] = record
        elif line.strip() and number < len(lines):
            warnings.warn(f"{path}:{number}: unreadable metrics line skipped", stacklevel=2)
    return sorted(latest.values(), key=lambda r: r.get("step", 0))


def _parse_record(line: str) -> dict[str, Any] | None:
    for text in (line, line[line.rfind("{"):]):
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            continue
        return record if isinstance(record, dict) else None
    return None
