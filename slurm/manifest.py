"""The grid's manifest: which job runs which run, so resubmission can skip live ones.

`<root>/<grid>/manifest.json` maps run id -> {job_id, array_index, executor,
submitted}; it is rewritten atomically after every submission.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from experiments.atomic import atomic_write_json

LIVE_SLURM_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                     "REQUEUE_FED", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT"}


def load(grid_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads((grid_dir / "manifest.json").read_text())
    except FileNotFoundError:
        return {}


def record(grid_dir: Path, run_id: str, job_id: str, array_index: int, executor: str) -> None:
    entries = load(grid_dir)
    entries[run_id] = {"job_id": job_id, "array_index": array_index, "executor": executor,
                       "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(grid_dir / "manifest.json", entries)


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Job id -> state for the jobs squeue still knows (arrays expanded); {} without SLURM."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(sorted(set(job_ids)))],
                          capture_output=True, text=True)
    if proc.returncode != 0:  # every id unknown: squeue exits 1 with "Invalid job id"
        return {}
    return dict(line.split(maxsplit=1) for line in proc.stdout.splitlines() if line.strip())


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


def live_runs(grid_dir: Path) -> dict[str, str]:
    """Run id -> job id of the runs whose job is still queued or running."""
    entries = load(grid_dir)
    slurm = {k: v for k, v in entries.items() if v["executor"] == "slurm"}
    states = slurm_states([v["job_id"] for v in slurm.values()])
    live = {k: v["job_id"] for k, v in slurm.items() if states.get(v["job_id"]) in LIVE_SLURM_STATES}
    live.update({k: v["job_id"] for k, v in entries.items() if v["executor"] == "local" and _pid_alive(v["job_id"])})
    return live
