"""The scheduler's side of a grid's manifest: which recorded jobs are still queued or running.

The manifest itself (`<root>/<grid>/manifest.json`: every submission with its
`--set`/`--only` and the runs it submitted, each run's latest job) is run-directory
knowledge that the analysis commands read too, so its format, reader and writer live
in `experiments/manifest.py`; `slurm.submit` records through `record_jobs`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from experiments.manifest import Manifest, Submission, load as load_manifest, new_submission, record_jobs

__all__ = ["LIVE_SLURM_STATES", "Manifest", "Submission", "load", "load_manifest", "live_runs", "new_submission",
           "record_jobs", "slurm_states"]

LIVE_SLURM_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                     "REQUEUE_FED", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT"}


def load(grid_dir: Path) -> dict[str, dict[str, Any]]:
    """Run id -> its latest job {job_id, array_index, executor, submitted, run_dir, submission}."""
    return load_manifest(grid_dir).runs


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
