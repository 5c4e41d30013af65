"""Where every run of a grid stands:  python -m slurm.status GRID.yaml [--tail] [--cancel] [--root DIR]

The state comes from the run's own status.json (written by the job), refined by
the scheduler: `squeue` for live jobs, and `sacct` (when accounting runs) for jobs
that died without updating their status (OOM kill, node failure, scancel). It
works without accounting; such a job is then shown as LOST once squeue forgets it.
"""
from __future__ import annotations

import argparse
import shutil
import os
import signal
import subprocess
from pathlib import Path
from typing import Sequence

from experiments.grid import DEFAULT_ROOT, load_grid
from experiments.metrics import read_metrics
from experiments.run_dir import RunDir
from experiments.cli import run_cli
from slurm import manifest

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


def run_state(status: dict, job_id: str | None, live: bool, queued: str | None, final: str | None) -> str:
    """The state to show: the scheduler's word wins over a status.json left stale by a dead job."""
    state = status.get("state", "PENDING")
    if state in ("DONE", "FAILED", "CANCELLED") or job_id is None:
        return state
    if live:
        return queued or "RUNNING"
    return final if final in TERMINAL_SACCT else "LOST"


def last_train_metric(run_dir: RunDir) -> str:

    records = [r for r in read_metrics(run_dir.metrics) if r.get("split") == "train"] if run_dir.metrics.exists() else []
    if not records:
        return "-"
    last = records[-1]
    unit = "bpc" if "bpc" in last else "ppl"
    return f"{unit} {last[unit]:.3f}"


def status_rows(grid_path: Path, root: Path) -> list[dict]:
    grid = load_grid(grid_path)
    entries = manifest.load(root / grid.name)
    slurm_jobs = [e["job_id"] for e in entries.values() if e["executor"] == "slurm"]
    queued = manifest.slurm_states(slurm_jobs)
    accounted = sacct_states(slurm_jobs)
    live = manifest.live_runs(root / grid.name)
    rows = []
    for cfg in grid.runs:
        run_dir = RunDir(grid.run_dir(cfg, root))
        status = run_dir.read_status()
        job_id = entries.get(cfg.run_id, {}).get("job_id")
        state = run_state(status, job_id, cfg.run_id in live, queued.get(job_id), accounted.get(job_id))
        rows.append({"run": cfg.run_id, "state": state,
                     "stage": status.get("stage") or "-", "step": status.get("step", 0),
                     "metric": last_train_metric(run_dir), "attempts": status.get("attempt", 0),
                     "job": job_id or "-", "run_dir": run_dir, "error": status.get("error")})
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"{'run':<58} {'state':<10} {'stage':<9} {'step':>8} {'last train':>12} {'attempts':>8}  job")
    for r in rows:
        print(f"{r['run']:<58} {r['state']:<10} {r['stage']:<9} {r['step']:>8} {r['metric']:>12} {r['attempts']:>8}  {r['job']}")


def print_tails(rows: list[dict], lines: int = 20) -> None:
    """The error tail and log tail of every run that did not succeed."""
    for r in rows:
        if r["state"] in ("DONE", "RUNNING", "PENDING"):
            continue
        print(f"\n=== {r['run']} ({r['state']}) ===")
        if r["error"]:
            print("\n".join(str(r["error"]).strip().splitlines()[-lines:]))
        for log in sorted(r["run_dir"].slurm.glob("*_log.err")) if r["run_dir"].slurm.exists() else []:
            print(f"--- {log.name} ---")
            print("\n".join(log.read_text(errors="replace").splitlines()[-lines:]))


def cancel(rows: list[dict], root: Path, grid_name: str) -> int:
    live = manifest.live_runs(root / grid_name)
    entries = manifest.load(root / grid_name)
    for r in rows:
        job = live.get(r["run"])
        if job is None:
            continue
        if entries[r["run"]]["executor"] == "slurm":
            subprocess.run(["scancel", job], check=False)
        else:
            os.kill(int(job), signal.SIGTERM)
        r["run_dir"].write_status("CANCELLED", error="cancelled by slurm.status --cancel")
        print(f"cancelled {r['run']} (job {job})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slurm.status", description=__doc__.split("\n")[0])
    parser.add_argument("grid", type=Path, help="grid YAML")
    parser.add_argument("--tail", action="store_true", help="show the error and log tails of failed runs")
    parser.add_argument("--cancel", action="store_true", help="cancel the grid's live jobs")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"results root (default {DEFAULT_ROOT})")
    args = parser.parse_args(argv)
    rows = status_rows(args.grid, args.root)
    if args.cancel:
        return cancel(rows, args.root, load_grid(args.grid).name)
    print_rows(rows)
    if args.tail:
        print_tails(rows)
    return 0


if __name__ == "__main__":
    run_cli(main)
