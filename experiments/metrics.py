"""Reader of a run's metrics.jsonl (DESIGN §4), shared by status and analysis.

The trainer appends one flushed JSON line per record, so a crash leaves at most a
torn last line; a requeued attempt rewrites steps already logged. Disks and copies
do worse: a byte that is not UTF-8, a run of NUL bytes where a crash lost a block
(often with the next attempt's first record glued after it), a record cut in the
middle. The reader takes the file line by line, as bytes, so one damaged line costs
that line only: it is skipped and counted, and one warning per file says how many.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NUMERIC_FIELDS = ("tokens", "loss", "bpc", "ppl", "lr", "ms_per_step", "tokens_per_s", "span_mean", "span_max",
                  "attempt", "time")


@dataclass
class MetricsRead:
    """What one read of a metrics.jsonl found."""

    records: list[dict[str, Any]] = field(default_factory=list)
    """One per (split, step), the last written winning, sorted by step."""
    damaged_lines: list[int] = field(default_factory=list)
    """1-based numbers of the lines skipped as damaged (a torn last line is not damage)."""
    error: str | None = None
    """Why the file could not be read at all (permissions, I/O error), else None."""

    def note(self, path: str | os.PathLike) -> str | None:
        """One line about the damage, or None when there was none."""
        if self.error:
            return f"{path}: unreadable ({self.error}); no metrics read"
        if self.damaged_lines:
            first, count = self.damaged_lines[0], len(self.damaged_lines)
            return f"{path}:{first}: {count} damaged line(s) skipped"
        return None


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl, one per (split, step), the last written winning.

    A missing file has no records. Damaged lines are skipped with one warning per
    file (see `scan_metrics`); records are sorted by step.
    """
    result = scan_metrics(path)
    note = result.note(path)
    if note:
        warnings.warn(note, stacklevel=2)
    return result.records


def scan_metrics(path: str | os.PathLike) -> MetricsRead:
    """Read a metrics.jsonl without warning: its records and what was damaged.

    A torn last line (a crash mid-write, or a writer still writing) is dropped
    silently. A requeued attempt appends after such a torn line, so its first record
    shares that line: the record is recovered from the line's last '{' (records are
    flat), which also recovers a record appended after NUL padding or a damaged
    prefix. Any other line that does not hold one well-formed record (invalid UTF-8,
    NUL bytes, not JSON, not a record with an integer step) is damage. The resumed
    attempt rewrites steps already logged: its records replace the earlier ones.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return MetricsRead()
    except OSError as err:
        return MetricsRead(error=err.strerror or type(err).__name__)
    lines = data.split(b"\n")
    complete = len(lines) - 1  # the text after the last newline is an unfinished line (often empty)
    latest: dict[tuple[Any, Any], dict[str, Any]] = {}
    damaged = []
    for number, line in enumerate(lines, start=1):
        record = _parse_record(line)
        if record is not None:
            latest[(record.get("split"), record["step"])] = record
        elif number <= complete and line.strip(b" \t\r"):
            damaged.append(number)
    return MetricsRead(sorted(latest.values(), key=lambda r: r["step"]), damaged)


def _parse_record(line: bytes) -> dict[str, Any] | None:
    start = line.rfind(b"{")
    for raw in (line, line[start:] if start > 0 else b""):
        if not raw:
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            continue
        return record if _well_formed(record) else None
    return None


def _well_formed(record: Any) -> bool:
    if not isinstance(record, dict):
        return False
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return False
    if "split" in record and not isinstance(record["split"], str):
        return False
    return all(_is_number(record[k]) for k in NUMERIC_FIELDS if k in record)


def _is_number(value: Any) -> bool:
    # NaN counts as a number: a diverged run logs a NaN loss, and that is a fact, not damage.
    return isinstance(value, (int, float)) and not isinstance(value, bool)
