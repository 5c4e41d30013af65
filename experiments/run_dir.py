"""The run directory (DESIGN §4): the single source of truth about a run.

Every writer here is crash-safe: status.json and eval.json are rewritten
atomically; metrics.jsonl is appended one flushed line at a time, so a crash
leaves at most a torn last line, which readers tolerate.
"""
from __future__ import annotations

import errno
import fcntl
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
from experiments import strict_json
from experiments.evaluation import UNITS
from model.errors import UserError

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
        """Rewrite status.json, keeping fields not given (step, attempt, ...), except `error`: it is
        the error of the state written now (None unless given), never one left by an earlier state.

        On a full disk the atomic rewrite (a new temporary file) cannot be made; the file is then
        rewritten in place, which needs no new block, so that a run always leaves a final state.
        """
        assert state in STATES, state
        status = {**self.read_status(), "error": None, **fields, "state": state, "heartbeat": time.time()}
        try:
            atomic_write_json(self.status_file, status)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT) or not self.status_file.exists():
                raise
            _rewrite_in_place(self.status_file, (strict_json.dumps(status, indent=2, sort_keys=True) + "\n").encode())

    def append_metrics(self, record: dict[str, Any]) -> None:
        try:
            with open(self.metrics, "a", encoding="utf-8") as f:
                f.write(strict_json.dumps(record, sort_keys=True) + "\n")
                f.flush()
        except OSError as err:
            err.filename = err.filename or str(self.metrics)  # a failed write names no file: say which
            raise

    def write_eval(self, result: dict[str, Any]) -> None:
        atomic_write_json(self.eval_file, result)

    def is_done(self) -> bool:
        """DONE with an eval.json as the trainer writes it (a unit, bpc or ppl, and each split's scores
        an object): a damaged one (empty, torn, of another shape) makes the run one to resubmit, whose
        trainer resumes from the final checkpoint and evaluates again."""
        result = _read_json(self.eval_file)
        splits = [value for key, value in result.items() if key in ("valid", "test")]
        return (self.read_status().get("state") == "DONE" and result.get("unit") in UNITS
                and all(isinstance(scores, dict) for scores in splits))

    def record_provenance(self, attempt: int, **fields: Any) -> None:
        """Write provenance.json for this attempt (plus `fields`, e.g. the data identity and the
        process layout), keeping earlier attempts' job ids and resumes."""
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
            "resumes": previous.get("resumes", []), **fields,
        })

    def record_resume(self, attempt: int, resume: dict[str, Any]) -> None:
        """Add how this attempt resumed (from which checkpoint and layout, caches restored or empty)
        to provenance.json's `resumes`."""
        provenance = _read_json(self.provenance_file)
        provenance["resumes"] = [*provenance.get("resumes", []), {"attempt": attempt, **resume}]
        atomic_write_json(self.provenance_file, provenance)

    def lock(self) -> "OwnerLock":
        """Take this run directory for this process's whole life (OwnerLock)."""
        return OwnerLock.take(self.path / LOCK_FILE)

    def holder(self) -> str | None:
        """Who trains this run directory now ("host H, pid P, SLURM job J, since T"), or None when
        no process holds its owner lock (or the lock cannot be probed here)."""
        return OwnerLock.holder(self.path / LOCK_FILE)


LOCK_FILE = ".owner.lock"


class RunDirBusy(UserError):
    """Another trainer owns the run directory."""


class OwnerLock:
    """One owner per run directory: an exclusive flock(2) on `<run_dir>/.owner.lock`, held by the
    trainer for its whole life and released by the OS when the process ends, however it ends
    (also on a shared filesystem whose flock is cluster-wide: NFSv4, Lustre mounted with
    `-o flock`, GPFS). The file names its holder (host, pid, SLURM job id, since when).

    Where the filesystem has no flock (Lustre `-o noflock`, some FUSE mounts) the lock cannot be
    taken: the trainer warns once and runs unguarded. Where flock is only node-local (Lustre
    `-o localflock`), two trainers on different nodes are not stopped.
    """

    def __init__(self, path: Path, fd: int | None, warning: str | None = None):
        self.path, self._fd, self.warning = path, fd, warning
        self.created_dir = False
        """Whether the taker made the run directory (a new run) just before taking it."""

    @classmethod
    def take(cls, path: Path) -> "OwnerLock":
        """The lock, or RunDirBusy naming the holder; a refused caller changes nothing. It tries
        again for up to 0.26 s (PROBE_WAITS_S) to outlast a probe (`holder`), which holds the lock
        for microseconds."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _flock_past_probes(fd)
        except OSError as err:
            holder = _read_holder(fd)
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirBusy(f"{path.parent} is being trained by another trainer ({holder}); this one "
                                 "exits without touching it") from None
            return cls(path, None, f"cannot lock {path} ({err.strerror or err}): this filesystem has no flock, "
                                   "so a second trainer on this run directory would not be stopped")
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "slurm_job_id": _slurm_job_id()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        except OSError:  # a full disk: the lock holds all the same, only its holder is not named
            pass
        return cls(path, fd)

    @staticmethod
    def holder(path: Path) -> str | None:
        """The holder of the lock at `path` as `take` names it, or None when it is free, missing,
        unreadable or the filesystem has no flock. Probes without creating anything; a trainer
        that starts during the probe waits it out (`take`)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            return _read_holder(fd) if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) else None
        finally:
            os.close(fd)  # releases the probe's shared lock, if it got one
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None


PROBE_WAITS_S = (0.01, 0.05, 0.2)
"""How long `take` waits, in turn, for a lock that a probe (`OwnerLock.holder`) may hold."""


def _flock_past_probes(fd: int) -> None:
    """flock(LOCK_EX | LOCK_NB), tried again after each of PROBE_WAITS_S; the last OSError otherwise."""
    for wait in (*PROBE_WAITS_S, None):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as err:
            if wait is None or err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            time.sleep(wait)


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        words = [f"host {info['host']}", f"pid {info['pid']}"]
        if info.get("slurm_job_id"):
            words.append(f"SLURM job {info['slurm_job_id']}")
        if info.get("since"):
            words.append(f"since {info['since']}")
        return ", ".join(words)
    except (OSError, ValueError, KeyError, TypeError):
        return "holder not recorded yet"


def _slurm_job_id() -> str | None:
    job_id = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job_id}_{task}" if job_id and task and os.environ.get("SLURM_ARRAY_JOB_ID") else job_id


def _rewrite_in_place(path: Path, data: bytes) -> None:
    """Overwrite a small file without a new file: the blocks it holds are reused."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


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
