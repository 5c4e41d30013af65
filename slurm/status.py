"""Where every run of a grid stands:  python -m slurm.status GRID.yaml [--set K=V] [--only K=V] [--tail] [--cancel] [--root DIR]

The runs are those the grid's manifest records (every `slurm.submit` of the grid,
whatever `--set`/`--only` it was given), plus the runs the grid would produce with
those settings that were never submitted ("not submitted"). `--set`/`--only`, as
given to `slurm.submit`, narrow the table (and `--cancel`) to the runs of that
expansion. The header says which submission(s) are shown.

The state comes from the run's own status.json (written by the job), refined by
the scheduler: `squeue` for live jobs, and `sacct` (when accounting runs) for jobs
that died without updating their status (OOM kill, node failure, scancel). It
works without accounting; such a job is then shown as LOST once squeue forgets it.
A run the job stopped for lack of progress shows STALLED (resubmit to continue), a
run cancelled by `--cancel` CANCELLED. The last column gives the steps each attempt
added (from `<run_dir>/attempts.jsonl`; `…` while the attempt runs).

`--cancel` acts only on jobs verified to be the run's (slurm/manifest.py: a
reused pid or job id is not), and never on a run that is DONE.
"""
from __future__ import annotations

import argparse
import shutil
import os
import signal
import subprocess
from pathlib import Path
from typing import Sequence

from experiments.grid import DEFAULT_ROOT
from experiments.manifest import Selection, add_selection_arguments, select
from experiments.metrics import read_metrics
from experiments.run_dir import RunDir
from experiments.cli import run_cli
from slurm import manifest
from slurm.job import STALLED_STAGE, read_attempts

NOT_SUBMITTED = "not submitted"
TERMINAL_SACCT = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """Job id -> final state from accounting; {} when sacct is missing or disabled."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    proc = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(sorted(set(job_ids)))],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {}
    pairs = (line.split("|", 1) for line in proc.stdout.splitlines() if "|" in line)
    return {job: state.split()[0] for job, state in pairs}


def run_state(status: dict, job_id: str | None, live: bool, queued: str | None, final: str | None,
              cancelled: bool = False) -> str:
    """The state to show: the scheduler's word wins over a status.json left stale by a dead job."""
    state = status.get("state", "PENDING")
    if state in ("DONE", "FAILED", "CANCELLED") or job_id is None:
        return state
    if live:
        return queued or "RUNNING"
    if status.get("stage") == STALLED_STAGE:
        return "STALLED"
    if cancelled:  # the trainer wrote PENDING on its way out; the job was cancelled, not lost
        return "CANCELLED"
    return final if final in TERMINAL_SACCT else "LOST"


def last_train_metric(run_dir: RunDir) -> str:
    records = [r for r in read_metrics(run_dir.metrics) if r.get("split") == "train"] if run_dir.metrics.exists() else []
    if not records:
        return "-"
    last = records[-1]
    unit = "bpc" if "bpc" in last else "ppl"
    value = last.get(unit)
    return f"{unit} {value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def attempt_progress(run_dir: RunDir, status: dict, shown: int = 6) -> str:
    """Steps added by each attempt, e.g. '+1200 +1200 +0 +310…' (the last still running)."""
    parts = []
    for a in read_attempts(run_dir.path):
        start = a["start"] if a["start"] is not None else 0
        end = a["end"]
        running = end is None
        if running:
            end = int(status.get("step") or start)
        text = f"+{end - start}" + ("…" if running else "")
        parts.append(text + (" stalled" if a["outcome"] == "stalled" else ""))
    if len(parts) > shown:
        parts = ["…"] + parts[-shown:]
    return " ".join(parts) or "-"


def status_rows(grid_path: Path, root: Path, overrides: Sequence[str] = (), only: Sequence[str] = ()) -> list[dict]:
    return selected_rows(select(grid_path, root, overrides, only))


def selected_rows(selection: Selection) -> list[dict]:
    """One row per selected run: its state as the run directory and the scheduler see it."""
    entries = selection.manifest.runs
    slurm_jobs = [e["job_id"] for e in entries.values() if e["executor"] == "slurm"]
    queued = manifest.slurm_states(slurm_jobs)
    accounted = sacct_states(slurm_jobs)
    live = manifest.live_runs(selection.manifest.grid_dir)
    rows = []
    for run in selection.runs:
        run_dir = RunDir(run.run_dir)
        status = run_dir.read_status()
        job_id = run.entry["job_id"] if run.entry else None
        cancelled = bool(run.entry and run.entry.get("cancelled"))
        state = run_state(status, job_id, run.run_id in live, queued.get(job_id), accounted.get(job_id), cancelled)
        if job_id is None and state == "PENDING":  # no job was ever asked for: it would wait forever
            state = NOT_SUBMITTED
        rows.append({"run": run.run_id, "state": state, "status_state": status.get("state"),
                     "stage": status.get("stage") or "-", "step": status.get("step", 0),
                     "metric": last_train_metric(run_dir) if run_dir.path.is_dir() else "-",
                     "attempts": status.get("attempt", 0), "job": job_id or "-",
                     "progress": attempt_progress(run_dir, status) if run_dir.path.is_dir() else "-",
                     "submission": ",".join(f"#{n}" for n in run.submissions) or "-",
                     "run_dir": run_dir, "error": status.get("error")})
    return rows


def print_rows(rows: list[dict], header: Sequence[str] = ()) -> None:
    for line in header:
        print(line)
    print(f"{'run':<58} {'state':<13} {'stage':<9} {'step':>8} {'last train':>12} {'attempts':>8}  {'sub.':<5} "
          f"{'job':<10} steps per attempt")
    for r in rows:
        print(f"{r['run']:<58} {r['state']:<13} {r['stage']:<9} {r['step']:>8} {r['metric']:>12} {r['attempts']:>8}  "
              f"{r['submission']:<5} {r['job']:<10} {r['progress']}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    print(f"{len(rows)} runs: " + ", ".join(f"{n} {state}" for state, n in counts.items()))


def print_tails(rows: list[dict], lines: int = 20) -> None:
    """The error tail and log tail of every run that did not succeed."""
    for r in rows:
        if r["state"] in ("DONE", "RUNNING", "PENDING", NOT_SUBMITTED):
            continue
        print(f"\n=== {r['run']} ({r['state']}) ===")
        if r["error"]:
            print("\n".join(str(r["error"]).strip().splitlines()[-lines:]))
        for log in sorted(r["run_dir"].slurm.glob("*_log.err")) if r["run_dir"].slurm.exists() else []:
            print(f"--- {log.name} ---")
            print("\n".join(log.read_text(errors="replace").splitlines()[-lines:]))


def cancel(rows: list[dict], grid_dir: Path) -> int:
    """Cancel the live jobs of the runs in `rows` (and of no other run); a DONE run is never touched."""
    live = manifest.live_runs(grid_dir)
    entries = manifest.load(grid_dir)
    cancelled = done = 0
    for r in rows:
        job = live.get(r["run"])
        if job is None:
            continue
        if r["run_dir"].read_status().get("state") == "DONE":  # finished: its job is only winding down
            done += 1
            continue
        if entries[r["run"]]["executor"] == "slurm":
            subprocess.run(["scancel", job], check=False)
        else:
            try:
                os.kill(int(job), signal.SIGTERM)
            except ProcessLookupError:  # ended since it was checked
                continue
        manifest.mark_cancelled(grid_dir, r["run"], job)
        if r["run_dir"].read_status().get("state") != "DONE":
            r["run_dir"].write_status("CANCELLED", error="cancelled by slurm.status --cancel")
        print(f"cancelled {r['run']} (job {job})")
        cancelled += 1
    skipped = f", {done} DONE left alone" if done else ""
    print(f"cancelled {cancelled} of {len(rows)} runs shown ({len(rows) - cancelled - done} not live{skipped})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slurm.status", description=__doc__.split("\n")[0])
    parser.add_argument("grid", type=Path, help="grid YAML")
    parser.add_argument("--tail", action="store_true", help="show the error and log tails of failed runs")
    parser.add_argument("--cancel", action="store_true", help="cancel the live jobs of the runs shown")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"results root (default {DEFAULT_ROOT})")
    add_selection_arguments(parser, purpose="show (or cancel)")
    args = parser.parse_args(argv)
    selection = select(args.grid, args.root, args.set, args.only)
    rows = selected_rows(selection)
    if args.cancel:
        for line in selection.header():
            print(line)
        return cancel(rows, selection.manifest.grid_dir)
    print_rows(rows, selection.header())
    if args.tail:
        print_tails(rows)
    return 0


if __name__ == "__main__":
    run_cli(main)
