"""The run directory (DESIGN §4): the single source of truth about a run.

Every writer here is crash-safe: status.json and eval.json are rewritten
atomically; metrics.jsonl is appended one flushed line at a time, so a crash
leaves at most a torn last line, which readers tolerate.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from experiments.atomic import atomic_write_json, atomic_write_text

STATES = ("PENDING", "RUNNING", "DONE", "FAILED", "CANCELLED")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class RunDir:
    """Paths and writers of one run directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    status_file = property(lambda self: self.path / "status.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    eval_file = property(lambda self: self.path / "eval.json")
    provenance_file = property(lambda self: self.path / "provenance.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    slurm = property(lambda self: self.path / "slurm")

    def read_status(self) -> dict[str, Any]:
        """The last written status, or PENDING when none was written yet.

        A damaged status.json (bytes that are not UTF-8, NULs, not a JSON object) reads as
        PENDING too, with one warning naming the file: never an exception, so that one
        damaged run cannot stop `slurm.status` or a resubmission of its grid.
        """
        status = _read_json(self.status_file)
        if status and not _well_formed_status(status):
            warnings.warn(f"{self.status_file}: unreadable (state {status.get('state')!r}, step "
                          f"{status.get('step')!r}, attempt {status.get('attempt')!r}); ignored", stacklevel=2)
            status = {}
        return status if status else {"state": "PENDING", "stage": None, "step": 0, "attempt": 0, "error": None}

    def write_status(self, state: str, **fields: Any) -> None:
        """Rewrite status.json, keeping fields not given (step, attempt, ...)."""
        assert state in STATES, state
        status = {**self.read_status(), **fields, "state": state, "heartbeat": time.time()}
        atomic_write_json(self.status_file, status)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()

    def write_eval(self, result: dict[str, Any]) -> None:
        atomic_write_json(self.eval_file, result)

    def is_done(self) -> bool:
        return self.read_status().get("state") == "DONE" and self.eval_file.exists()

    def record_provenance(self, attempt: int) -> None:
        """Write provenance.json for this attempt, keeping earlier attempts' job ids."""
        previous = _read_json(self.provenance_file)
        job_ids = previous.get("slurm_job_ids", [])
        job_id = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
        if job_id:
            task = os.environ.get("SLURM_ARRAY_TASK_ID")
            job_ids.append({"attempt": attempt, "job_id": f"{job_id}_{task}" if task else job_id})
        sha, dirty, diff = _git_state()
        if diff:
            atomic_write_text(self.path / "git.diff", diff)
        atomic_write_json(self.provenance_file, {
            "git_sha": sha, "git_dirty": dirty, "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "host": socket.gethostname(),
            "slurm_job_ids": job_ids, "command": " ".join(sys.argv), "attempts": attempt,
        })


def _well_formed_status(status: dict[str, Any]) -> bool:
    counts = [status.get(k) for k in ("step", "attempt")]
    return status.get("state") in STATES and all(
        c is None or (isinstance(c, int) and not isinstance(c, bool) and c >= 0) for c in counts)


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object file of the run directory; {} when absent, {} and a warning when damaged."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as err:  # ValueError: invalid JSON or UTF-8
        warnings.warn(f"{path}: unreadable ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
                      "ignored", stacklevel=3)
        return {}
    if not isinstance(data, dict):
        warnings.warn(f"{path}: unreadable (a JSON {type(data).__name__}, not an object); ignored", stacklevel=3)
        return {}
    return data


def _git_state() -> tuple[str | None, bool | None, str]:
    """(commit, dirty?, diff of tracked files) of the project checkout, if it is one."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout
    try:
        sha = git("rev-parse", "HEAD").strip()
        diff = git("diff", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        return None, None, ""
    return sha, bool(diff), diff
