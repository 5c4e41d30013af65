"""Where every run of a grid stands:  python -m slurm.status GRID.yaml [--set K=V] [--only K=V] [--tail] [--cancel] [--root DIR]

The runs are those the grid's manifest records (every `slurm.submit` of the grid,
whatever `--set`/`--only` it was given), plus the runs the grid would produce with
those settings that were never submitted ("not submitted"). `--set`/`--only`, as
given to `slurm.submit`, narrow the table (and `--cancel`) to the runs of that
expansion. The header says which submission(s) are shown.

The state comes from the run's own status.json (written by the job), refined by the
scheduler: `squeue` for live jobs, and `sacct` (when accounting runs) for jobs that died
without updating their status (OOM kill, node failure, scancel). It works without
accounting; such a job is then shown as LOST once squeue forgets it. A run the job stopped
for lack of progress shows STALLED (resubmit to continue), a run cancelled by `--cancel`
CANCELLED, one a signal stopped at a checkpoint without a requeue (`scancel
--signal=TERM`) STOPPED (resubmit to continue; SLURM's accounting says FAILED, as the job
raised), one whose job is held (`scontrol hold`, `requeuehold`) HELD. A run whose
directory a process outside the grid's jobs holds (its owner lock: a `train.py` started by
hand, say) shows RUNNING, the note naming that process. Beside it: the step reached of the
steps the run trains, the last train record's bpc (ppl for word-level data) and tokens/s,
the attempts. The last column gives the steps each attempt added (from
`<run_dir>/attempts.jsonl`; `…` while the attempt runs). `slurm.submit --wait` shows the
same table while it waits (slurm/progress.py).

`--cancel` acts only on jobs verified to be the run's (slurm/manifest.py: a
reused pid or job id is not), and never on a run that is DONE.
"""
from __future__ import annotations

import shutil
import os
import signal
import subprocess
from pathlib import Path
from typing import Sequence

import yaml

from experiments.grid import DEFAULT_ROOT
from experiments.manifest import Selection, add_selection_arguments, select
from experiments.metrics import read_metrics
from experiments.run_dir import RunDir
from experiments.cli import ArgumentParser, folder, run_cli
from slurm import manifest
from slurm.job import STALLED_STAGE, checkpointed_step, read_attempts

NOT_SUBMITTED = "not submitted"
STOPPED = "STOPPED"
"""A run a signal stopped at a checkpoint whose job then ended without a requeue; resubmitting resumes it."""
MISSING = "MISSING"
"""A shared run whose link points at a directory that was deleted (with the grid that trained it)."""
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
              cancelled: bool = False, stopped: bool = False) -> str:
    """The state to show: the scheduler's word wins over a status.json left stale by a dead job.
    `stopped`: the last attempt checkpointed on a signal and ended (`stopped_by`)."""
    state = status.get("state", "PENDING")
    if state in ("DONE", "FAILED", "CANCELLED") or job_id is None:
        return state
    if live:
        return queued or "RUNNING"
    if status.get("stage") == STALLED_STAGE:
        return "STALLED"
    if cancelled:  # the trainer wrote PENDING on its way out; the job was cancelled, not lost
        return "CANCELLED"
    if stopped and state == "PENDING" and final != "CANCELLED":  # scancel --signal=TERM: nothing failed
        return STOPPED
    return final if final in TERMINAL_SACCT else "LOST"


def stopped_by(run_dir: RunDir) -> str | None:
    """The last attempt's outcome when a signal stopped it at a checkpoint ("stopped by SIGTERM"), else None."""
    attempts = read_attempts(run_dir.path)
    outcome = attempts[-1]["outcome"] if attempts else None
    return outcome if isinstance(outcome, str) and outcome.startswith("stopped by ") else None


_LAST_TRAIN: dict[Path, tuple[tuple[int, int], dict | None]] = {}
_TOTAL_STEPS: dict[Path, tuple[tuple[int, int], int | None]] = {}
"""Per file: (size, mtime) when read, and what was read: the tables re-read only files that changed."""


def last_train_record(run_dir: RunDir) -> dict | None:
    """The newest train record of metrics.jsonl, None before the first. Read again only when the
    file changed: the progress table asks every second or two, and a long run's file is large."""
    path = run_dir.metrics
    try:
        stat = path.stat()
    except OSError:
        return None
    version = (stat.st_size, stat.st_mtime_ns)
    cached = _LAST_TRAIN.get(path)
    if cached is None or cached[0] != version:
        records = [r for r in read_metrics(path) if r.get("split") == "train"]
        cached = _LAST_TRAIN[path] = (version, records[-1] if records else None)
    return cached[1]


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_metric(record: dict | None) -> str:
    """'bpc 1.234' (character level) or 'ppl 35.120' (word level), as the record says; '-' without one."""
    if not record:
        return "-"
    unit = "bpc" if "bpc" in record else "ppl"
    value = record.get(unit)
    return f"{unit} {value:.3f}" if _number(value) else "-"


def format_rate(record: dict | None) -> str:
    """Tokens per second over the last logged interval; '-' without one."""
    value = (record or {}).get("tokens_per_s")
    return f"{value:.0f}" if _number(value) else "-"


def last_train_metric(run_dir: RunDir) -> str:
    return format_metric(last_train_record(run_dir))


def total_steps(run_dir: RunDir) -> int | None:
    """The steps the run trains in all (train.steps + train.finetune_steps of its config.yaml); None
    without a readable config. Cached per file version, like `last_train_record`."""
    try:
        stat = run_dir.config.stat()
        version = (stat.st_size, stat.st_mtime_ns)
        cached = _TOTAL_STEPS.get(run_dir.config)
        if cached is None or cached[0] != version:
            train = (yaml.safe_load(run_dir.config.read_text()) or {}).get("train") or {}
            steps = int(train.get("steps") or 0) + int(train.get("finetune_steps") or 0)
            cached = _TOTAL_STEPS[run_dir.config] = (version, steps or None)
        return cached[1]
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
        return None


def run_row(run_id: str, run_dir: RunDir, state: str, status: dict, **fields: object) -> dict:
    """The columns of one run in every table (slurm.status and the wait of slurm.submit alike):
    one function, so that the two never disagree. `fields` adds or overrides (job, submission)."""
    exists = run_dir.path.is_dir()
    train = last_train_record(run_dir) if exists else None
    row = {"run": run_id, "state": state, "status_state": status.get("state"),
           "stage": status.get("stage") or "-", "step": status.get("step", 0),
           "steps": total_steps(run_dir) if exists else None, "metric": format_metric(train),
           "tokens_per_s": format_rate(train), "attempts": status.get("attempt", 0), "job": "-",
           "progress": attempt_progress(run_dir, status, state) if exists else "-", "submission": "-",
           "run_dir": run_dir, "error": status.get("error")}
    row.update(fields)
    return row


def attempt_progress(run_dir: RunDir, status: dict, state: str, shown: int = 6) -> str:
    """Steps added by each attempt, e.g. '+1200 +1200 +0 +310…' (the last still running). `state` is
    the one shown: an attempt without its end line runs only while the run shows RUNNING (a DONE run's
    end line comes a moment later; a killed one has none)."""
    parts = []
    for a in read_attempts(run_dir.path):
        start = a["start"] if a["start"] is not None else 0
        end = a["end"]
        running = end is None and state == "RUNNING"
        if end is None:
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
        signal_stop = stopped_by(run_dir)
        state = run_state(status, job_id, run.run_id in live, queued.get(job_id), accounted.get(job_id), cancelled,
                          stopped=signal_stop is not None)
        if job_id is None and state == "PENDING":  # no job was ever asked for: it would wait forever
            state = NOT_SUBMITTED
        note, submission = None, ",".join(f"#{n}" for n in run.submissions) or "-"
        # status.json's own state, not the one shown: the job of a run that a hand-started trainer took
        # over fails on the busy run directory (sacct: FAILED) while that trainer trains on
        holder = None if run.run_id in live or status.get("state") in ("DONE", "FAILED") else run_dir.holder()
        if holder is not None:  # e.g. a train.py started by hand on the grid's run directory
            state, note = "RUNNING", f"{run.run_id}: trained by a process outside this grid's jobs: {holder}"
        grid = run.entry.get("grid") if run.entry else None
        if grid not in (None, selection.grid_name):  # a shared run another grid resubmitted since
            submission, note = "other", f"{run.run_id}: job {job_id} is submission #{run.entry.get('submission')} of grid {grid}"
        if state == manifest.HELD:
            note = f"{run.run_id}: job {job_id} is held: it starts once released (scontrol release {job_id})"
        if state == STOPPED:
            note = (f"{run.run_id}: {signal_stop} at its checkpoint of step {checkpointed_step(run_dir.path)}, "
                    "and its job ended without a requeue; resubmitting resumes it")
        if state == "DONE" and not run_dir.is_done():  # what slurm.submit resubmits
            state, note = "LOST", _unevaluated_note(run.run_id, run_dir)
        if run_dir.path.is_symlink() and not run_dir.path.exists():
            state, note = MISSING, (f"{run.run_id}: shared with another grid through a link to "
                                    f"{os.readlink(run_dir.path)}, which was deleted; slurm.submit trains it afresh here")
        rows.append(run_row(run.run_id, run_dir, state, status, job=job_id or "-", note=note, submission=submission,
                            steps=total_steps(run_dir) or run.steps))
    return rows


def _unevaluated_note(run_id: str, run_dir: RunDir) -> str:
    """What resubmitting a DONE run without a readable eval.json does: evaluate the final checkpoint,
    or train from the start when no checkpoint is left."""
    step = checkpointed_step(run_dir.path)
    then = (f"resubmitting evaluates its checkpoint of step {step} again" if step
            else "no checkpoint is left: resubmitting trains it again from step 0")
    return f"{run_id}: DONE, but its eval.json is missing or unreadable; {then}"


def table_lines(rows: list[dict]) -> list[str]:
    """The table of `rows`: a header, one line per run, a count per state. `slurm.status` prints it
    and the wait of `slurm.submit` redraws it: one layout for both."""
    w = max([len("run")] + [len(r["run"]) for r in rows])  # run ids are as long as their grid makes them
    lines = [f"{'run':<{w}} {'state':<13} {'stage':<9} {'step/steps':>13} {'last train':>12} {'tokens/s':>8} "
             f"{'attempts':>8}  {'sub.':<5} {'job':<10} steps per attempt"]
    for r in rows:
        step = f"{r['step']}/{r['steps'] if r['steps'] is not None else '?'}"
        lines.append(f"{r['run']:<{w}} {r['state']:<13} {r['stage']:<9} {step:>13} {r['metric']:>12} "
                     f"{r['tokens_per_s']:>8} {r['attempts']:>8}  {r['submission']:<5} {r['job']:<10} {r['progress']}")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append(f"{len(rows)} runs: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
    return lines + [r["note"] for r in rows if r.get("note")]


def print_rows(rows: list[dict], header: Sequence[str] = ()) -> None:
    for line in [*header, *table_lines(rows)]:
        print(line)


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
    live = manifest.own_live_runs(grid_dir)  # only the jobs this grid submitted (a shared run's may be another's)
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
    theirs = manifest.live_in_other_grids(grid_dir, [r["run"] for r in rows])
    left = [f"{done} DONE left alone"] if done else []
    if theirs:
        left.append(f"{len(theirs)} shared with another grid left running")
    idle = len(rows) - cancelled - done - len(theirs)
    print(f"cancelled {cancelled} of {len(rows)} runs shown ({', '.join([f'{idle} not live', *left])})")
    for run_id, job in sorted(theirs.items()):
        print(f"  {run_id}: job {job.job_id} of grid {job.grid} runs it; only that grid's --cancel stops it")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m slurm.status", description=__doc__.split("\n")[0])
    parser.add_argument("grid", type=Path, help="grid YAML")
    parser.add_argument("--tail", action="store_true", help="show the error and log tails of failed runs")
    parser.add_argument("--cancel", action="store_true", help="cancel the live jobs of the runs shown")
    parser.add_argument("--root", type=folder, default=DEFAULT_ROOT, help=f"results root (default {DEFAULT_ROOT})")
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
