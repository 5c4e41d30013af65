"""The scheduler's side of a grid's manifest: which recorded jobs are still queued or running.

The manifest itself (`<root>/<grid>/manifest.json`: every submission with its
`--set`/`--only` and the runs it submitted, each run's latest job) is run-directory
knowledge that the analysis commands read too, so its format, reader and writer live
in `experiments/manifest.py`; `slurm.submit` records through `record_jobs`, then adds
what this layer needs to each run's entry (`annotate`): the identity of a local job's
process, and a cancellation.

**Liveness from identities that cannot be reused.** A job id alone is not an
identity: pids are reused within minutes, SLURM job ids after a state purge. A
SLURM job is live when the scheduler lists it in a live state *and* its batch
script is one of this grid's (`<grid>/.submitit/`). A local job (its id is the pid
of submitit's controller) is live when a process with that pid exists, is not a
zombie, and has the start time (/proc/<pid>/stat field 22), boot id and host
recorded at submission; entries recorded before identities were (no `process`)
are live only when that pid runs submitit's local controller for this grid. A
local job started on another host cannot be checked from here and counts as not live.

**Run directories shared by grids** (experiments/store.py: a grid's entry links to the
directory another grid of the root holds) are live when a job of *any* grid of the root
trains them (`live_dirs`, `live_runs`): a grid does not resubmit, nor show as lost, a run
that another grid's job is training. `slurm.status --cancel` cancels only the jobs its own
grid submitted (`own_live_runs`), and says which it left to the other grids.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from experiments.atomic import atomic_write_json
from experiments.manifest import (FILENAME, TIME_FORMAT, Manifest, Submission, _locked, load as load_manifest,
                                  new_submission, record_jobs)
from model.errors import UserError

__all__ = ["HELD", "LIVE_SLURM_STATES", "LiveJob", "Manifest", "Submission", "annotate", "live_in_other_grids", "live_dirs",
           "live_runs", "load", "load_manifest", "new_submission", "own_live_runs", "process_identity", "record_jobs",
           "slurm_jobs", "slurm_states"]

LIVE_SLURM_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                     "REQUEUE_FED", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT"}


def load(grid_dir: Path) -> dict[str, dict[str, Any]]:
    """Run id -> its latest job {job_id, array_index, executor, submitted, run_dir, submission}."""
    return load_manifest(grid_dir).runs


def slurm_jobs(job_ids: list[str]) -> dict[str, tuple[str, str, str]]:
    """Job id -> (state, reason, batch script path) for the jobs squeue still knows (arrays
    expanded); {} without SLURM."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%r|%o", "-j", ",".join(sorted(set(job_ids)))],
                          capture_output=True, text=True)
    if proc.returncode != 0:  # every id unknown: squeue exits 1 with "Invalid job id"
        return {}
    rows = (line.split("|", 3) for line in proc.stdout.splitlines() if line.count("|") >= 3)
    return {job: (state, reason, command) for job, state, reason, command in rows}


HELD = "HELD"
"""A pending job held by its user or an admin (`scontrol hold`, `requeuehold`): it starts only once released."""


def _held(reason: str) -> bool:
    """squeue's reason for a held job: JobHeldUser, JobHeldAdmin (`scontrol hold`), or "job requeued in
    held state" (`scontrol requeuehold`)."""
    return reason.startswith("JobHeld") or "held state" in reason


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Job id -> state for the jobs squeue still knows (arrays expanded), HELD for a held pending
    job; {} without SLURM."""
    return {job: HELD if state == "PENDING" and _held(reason) else state
            for job, (state, reason, _) in slurm_jobs(job_ids).items()}


def _grid_owns(command: str, grid_dir: Path) -> bool:
    """Whether a SLURM job's batch script is one that submitit wrote for this grid."""
    return f"/{grid_dir.name}/.submitit/" in command


def process_identity(pid: int | str) -> dict[str, Any] | None:
    """What identifies a process beyond its reusable pid: start time in clock ticks after boot
    (/proc/<pid>/stat field 22), boot id and host; plus its state letter. None when it does not exist."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return {"pid": int(pid), "start_ticks": int(fields[19]), "boot_id": _boot_id(), "host": socket.gethostname(),
            "state": fields[0]}


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def local_job_alive(entry: Mapping[str, Any], grid_dir: Path) -> bool:
    """Whether a local job's process (see the module docstring) is still this job's."""
    recorded = entry.get("process")
    if isinstance(recorded, Mapping) and recorded.get("host") not in (None, socket.gethostname()):
        return False  # started on another machine: its pid means nothing here
    current = process_identity(entry.get("job_id", ""))
    if current is None or current["state"] in ("Z", "X"):
        return False
    if isinstance(recorded, Mapping):
        return all(recorded.get(k) == current[k] for k in ("start_ticks", "boot_id"))
    try:  # recorded before identities were: the pid must run submitit's local controller for this grid
        cmdline = Path(f"/proc/{current['pid']}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return "submitit.local._local" in cmdline and _grid_owns(cmdline, grid_dir)


def own_live_runs(grid_dir: Path) -> dict[str, str]:
    """Run id -> job id of the runs whose job *this grid submitted* is still queued or running (the
    job verified to be theirs)."""
    entries = load(grid_dir)
    slurm = {k: v for k, v in entries.items() if v["executor"] == "slurm"}
    jobs = slurm_jobs([v["job_id"] for v in slurm.values()])
    live = {}
    for run_id, entry in slurm.items():
        state, _, command = jobs.get(entry["job_id"], (None, "", ""))
        if state in LIVE_SLURM_STATES and _grid_owns(command, grid_dir):
            live[run_id] = entry["job_id"]
    live.update({k: v["job_id"] for k, v in entries.items()
                 if v["executor"] == "local" and local_job_alive(v, grid_dir)})
    return live


@dataclass(frozen=True)
class LiveJob:
    """A queued or running job, and the grid (and its run id) that submitted it."""

    grid: str
    run_id: str
    job_id: str


def live_dirs(root: Path) -> dict[str, LiveJob]:
    """Real run directory (symbolic links resolved) -> the live job training it, whichever grid of the root submitted it."""
    live: dict[str, LiveJob] = {}
    for grid_dir in _grid_dirs(root):
        try:
            recorded = load_manifest(grid_dir)
            jobs = own_live_runs(grid_dir)
        except UserError:  # a damaged manifest of a grid: its own status says so
            continue
        for run_id, job_id in jobs.items():
            live[os.path.realpath(recorded.run_dir(run_id))] = LiveJob(grid_dir.name, run_id, job_id)
    return live


def live_runs(grid_dir: Path) -> dict[str, str]:
    """Run id -> job id of this grid's runs that a live job trains: a job this grid submitted, or
    another grid's on a run directory the two share (the module docstring)."""
    return {run_id: job.job_id for run_id, job in _live_by_run(Path(grid_dir)).items()}


def live_in_other_grids(grid_dir: Path, run_ids: list[str]) -> dict[str, LiveJob]:
    """Run id -> live job, for the runs among `run_ids` whose live job another grid submitted (on a
    directory they share): `slurm.status --cancel` cancels only its own grid's jobs."""
    return {run_id: job for run_id, job in _live_by_run(Path(grid_dir)).items()
            if run_id in run_ids and job.grid != Path(grid_dir).name}


def _live_by_run(grid_dir: Path) -> dict[str, LiveJob]:
    """This grid's run ids (recorded in its manifest, or links in its folder) -> the live job on their directory."""
    live = live_dirs(grid_dir.parent)
    recorded = load_manifest(grid_dir)
    paths = {run_id: recorded.run_dir(run_id) for run_id in recorded.runs}
    for entry in (grid_dir.iterdir() if grid_dir.is_dir() else ()):
        if entry.is_symlink():
            paths.setdefault(entry.name, entry)
    found = {run_id: live.get(os.path.realpath(path)) for run_id, path in paths.items()}
    return {run_id: job for run_id, job in found.items() if job is not None}


def _grid_dirs(root: Path) -> list[Path]:
    """The grid folders of a results root that hold a manifest."""
    return sorted(p for p in Path(root).iterdir() if (p / FILENAME).is_file()) if Path(root).is_dir() else []


def annotate(grid_dir: Path, fields_by_run: Mapping[str, Mapping[str, Any]]) -> None:
    """Add `fields` to the latest-job entries of these runs (only while that job is still the one
    recorded: `fields` carry a "job_id" to compare). A resubmission replaces the entry, and so
    drops the annotations of the job before."""
    grid_dir = Path(grid_dir)
    with _locked(grid_dir):
        current = load_manifest(grid_dir)
        changed = False
        for run_id, fields in fields_by_run.items():
            entry = current.runs.get(run_id)
            if entry is not None and entry.get("job_id") == fields.get("job_id"):
                entry.update({k: v for k, v in fields.items() if k != "job_id"})
                changed = True
        if changed:
            atomic_write_json(grid_dir / FILENAME, current.to_json())


def mark_cancelled(grid_dir: Path, run_id: str, job_id: str) -> None:
    """Record that `slurm.status --cancel` cancelled this job (the run shows CANCELLED, not LOST, once
    its process is gone, even when the trainer wrote PENDING on its way out)."""
    annotate(grid_dir, {run_id: {"job_id": job_id, "cancelled": time.strftime(TIME_FORMAT)}})
