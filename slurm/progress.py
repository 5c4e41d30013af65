"""Progress of a grid while `slurm.submit --wait` (and so the demo) waits for its jobs.

One line per run, the columns of `slurm.status` (slurm/status.py `run_row` and `table_lines`:
one table for both): state, step/steps, last train bpc (ppl for word-level data), tokens/s of
the last train record, attempts. On a terminal the table is redrawn in place every
`TTY_INTERVAL_S` (ANSI cursor-up and clear-line, no curses); into a file or a pipe (a SLURM
log, a CI job) it is printed as plain lines, only when it changed and at most every
`PLAIN_INTERVAL_S`, and once more at the end, so that a log holds a readable history, not
a flood. Then every failed job is reported in one line, as before the table existed.

The table reads only the run directories (status.json, metrics.jsonl, attempts.jsonl,
config.yaml), never the scheduler: a job's liveness comes from submitit (`job.done()`), so
that refreshing every second or two costs SLURM nothing.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Sequence, TextIO

import submitit

from experiments.run_dir import RunDir
from slurm.status import run_row, run_state, stopped_by, table_lines

TTY_INTERVAL_S = 1.5
"""Seconds between redraws on a terminal."""
PLAIN_INTERVAL_S = 30.0
"""The shortest time between two tables printed as plain lines (not a terminal)."""
PLAIN_POLL_S = 2.0
"""Seconds between checks of the jobs when not on a terminal: the wait ends soon after the last job."""
LIVE_STATES = ("PENDING", "RUNNING")


def job_run_dir(job: submitit.Job) -> Path | None:
    """The run directory a job trains (from its submitted pickle, a TrainingJob); None when unreadable."""
    try:
        return Path(job.submission().function.run_dir)
    except Exception:  # noqa: BLE001 - a job without a readable pickle just has no line
        return None


def job_state(status: dict, job: submitit.Job | None, run_dir: RunDir) -> str:
    """The state to show: status.json's while the job lives; once it ended, `slurm.status`'s rule
    (a job that ended leaving no final state in status.json failed, unless it stopped STALLED, or
    STOPPED by a signal at a checkpoint)."""
    if job is None:
        return status.get("state", "PENDING")
    live = not job.done()
    queued = status.get("state") if status.get("state") in LIVE_STATES else None
    return run_state(status, str(job.job_id), live, queued, final="FAILED",
                     stopped=not live and stopped_by(run_dir) is not None)


def progress_rows(run_dirs: Sequence[str | Path], jobs: Sequence[submitit.Job | None] | None = None,
                  submission: str = "-") -> list[dict]:
    """One row per run directory (the `slurm.status` columns); `jobs[i]`, when given, is the
    job of `run_dirs[i]`: its id is shown, and its end decides a state status.json left open.
    `submission`: the "sub." column ("#3": the manifest's number of the submission waited for)."""
    rows = []
    for i, path in enumerate(run_dirs):
        job = jobs[i] if jobs else None
        run_dir = RunDir(path)
        status = run_dir.read_status()
        fields = {"job": str(job.job_id), "submission": submission} if job is not None else {}
        rows.append(run_row(run_dir.path.name, run_dir, job_state(status, job, run_dir), status, **fields))
    return rows


class TableRenderer:
    """Shows successive versions of a table on `out`: in place on a terminal (`tty`), else as
    plain lines, at most once per `interval_s` and only when the table changed."""

    def __init__(self, out: TextIO, tty: bool | None = None, interval_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.interval_s = interval_s if interval_s is not None else (TTY_INTERVAL_S if self.tty else PLAIN_INTERVAL_S)
        self.clock = clock
        self.start = clock()
        self.shown: list[str] | None = None
        self.shown_at: float | None = None
        self.drawn = 0
        """Terminal lines the last redraw wrote: the cursor goes up as many to redraw."""

    def show(self, lines: list[str], final: bool = False) -> bool:
        """Show `lines` unless they are what is shown, or (unless `final`) the last showing is
        younger than the interval; whether they were shown."""
        now = self.clock()
        if lines == self.shown:
            return False
        if not final and self.shown_at is not None and now - self.shown_at < self.interval_s:
            return False
        if self.tty:
            self._redraw(lines)
        else:
            self._print(lines, now)
        self.out.flush()
        self.shown, self.shown_at = list(lines), now
        return True

    def _print(self, lines: list[str], now: float) -> None:
        """Plain lines under a time stamp: a log reads as a history of tables."""
        self.out.write(f"[progress after {now - self.start:.0f} s]\n" + "".join(f"{line}\n" for line in lines))

    def _redraw(self, lines: list[str]) -> None:
        """Up to the first line of the last table, then each line cleared and rewritten, cut to the
        terminal's width (a wrapped line would take two rows and break the count), the rest cleared."""
        width = max(20, shutil.get_terminal_size((200, 24)).columns - 1)
        up = f"\x1b[{self.drawn}A" if self.drawn else ""
        body = "".join(f"\r\x1b[2K{line[:width]}\n" for line in lines)
        self.out.write(up + body + "\x1b[J")
        self.drawn = len(lines)


def wait(jobs: Sequence[submitit.Job], rows: Sequence[str | Path] | Callable[[], list[dict]] | None = None, *,
         out: TextIO | None = None, tty: bool | None = None, interval_s: float | None = None,
         poll_s: float | None = None, clock: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep, submission: str = "-") -> int:
    """Wait for `jobs`, showing their progress table meanwhile (module docstring); then report each
    failed job. 0 when every job succeeded, else 1. `rows`: the run directories to show (default:
    each job's own), or a function making the rows; the intervals are parameters for the tests.
    `submission`: what the "sub." column shows for the jobs' runs (e.g. "#3")."""
    out = out or sys.stdout
    renderer = TableRenderer(out, tty, interval_s, clock)
    poll_s = poll_s if poll_s is not None else min(renderer.interval_s, PLAIN_POLL_S)
    make_rows = _rows_of(jobs, rows, submission)
    if jobs:
        while not all(job.done() for job in jobs):
            renderer.show(table_lines(make_rows()))
            sleep(poll_s)
        renderer.show(table_lines(make_rows()), final=True)
    return report(jobs)


def _rows_of(jobs: Sequence[submitit.Job], rows: Sequence[str | Path] | Callable[[], list[dict]] | None,
             submission: str) -> Callable[[], list[dict]]:
    """The function making the table's rows: as given, over the given run directories, or over
    each job's run directory (read from its pickle once, not at every refresh)."""
    if callable(rows):
        return rows
    if rows is not None:
        paths = list(rows)
        return lambda: progress_rows(paths)
    pairs = [(path, job) for job in jobs if (path := job_run_dir(job)) is not None]
    return lambda: progress_rows([p for p, _ in pairs], [j for _, j in pairs], submission)


def report(jobs: Sequence[submitit.Job]) -> int:
    """One line on stderr per failed (or stopped: stalled, interrupted) job, and the count that
    finished; 1 when any failed."""
    failed = 0
    for job in jobs:
        try:
            job.result()
        except Exception as err:  # noqa: BLE001 - report every failed run, then fail once
            failed += 1
            cause = _cause(str(err))
            verb = "stopped" if cause.startswith(("RunStalled", "RunInterrupted")) else "failed"
            print(f"job {job.job_id} {verb}: {cause} (log: {job.paths.stderr})", file=sys.stderr)
    print(f"{len(jobs) - failed} of {len(jobs)} runs finished")
    return 1 if failed else 0


def _cause(message: str) -> str:
    """The exception line of submitit's failure message: the last line with text before the second
    dashed rule (the traceback sits between the rules; submitit may leave a blank line before it)."""
    lines = message.strip().splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("-----")]
    if len(rules) < 2:
        return lines[0]
    return next((line.strip() for line in reversed(lines[rules[0] + 1:rules[1]]) if line.strip()), lines[0])
