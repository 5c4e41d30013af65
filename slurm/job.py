"""The requeueable SLURM job: one run of a grid, resumable from its checkpoint.

The pickled job holds its run directory and what the submission told SLURM (the
time-limit signal); the config, checkpoints and progress are on disk, so a
requeued attempt (after a timeout or a preemption) simply calls the trainer
again, which resumes from the newest checkpoint.

**The stop signal is whatever SLURM was told.** The sbatch script asks for
`--signal=SIG@N` with submitit's signal (USR2, or `$SUBMITIT_PREEMPT_SIGNAL`) or
the profile's `stop_signal`; the job traps that signal (and submitit's own, should
the nodes' environment name another one) like USR2: the trainer checkpoints at a
step boundary, then hands the signal to submitit's handler, which calls
`checkpoint()` below and requeues the job.

**Requeue on progress, not on an estimate.** submitit's own limit on timeouts is
set out of reach (`MAX_NUM_TIMEOUT`); `checkpoint()` decides instead: an attempt
that advanced the checkpointed step is always requeued; after `max_stalled`
attempts in a row without progress the run stops with status PENDING, stage
`stalled`, and a one-line reason (no traceback, not FAILED); resubmitting the
grid continues it with a fresh count. Every attempt is recorded in
`<run_dir>/attempts.jsonl` (start and end step, outcome, job id), which
`slurm.status` shows.

**A local job's trainer dies with its controller.** Under submitit's local executor the
job id is the pid of submitit's controller, which `slurm.status` checks and `--cancel`
signals; a trainer that outlived a killed controller would train on where neither sees it.
It asks Linux for SIGTERM when its parent dies (`prctl(PR_SET_PDEATHSIG)`): it then
checkpoints and exits, as on a SLURM preemption, and resubmitting resumes it.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import submitit

from experiments import strict_json

if TYPE_CHECKING:  # imported in the job's call, not at unpickling (TrainingJob._train)
    from experiments.run_dir import RunDir

ATTEMPTS_FILE = "attempts.jsonl"
MAX_NUM_TIMEOUT = 1_000_000
"""submitit's max_num_timeout: out of reach, so that `TrainingJob.checkpoint` decides on progress."""
STALLED_STAGE = "stalled"


class RunFailed(RuntimeError):
    """The run ended FAILED; its status.json holds the error tail."""


class RunInterrupted(RuntimeError):
    """SLURM signalled the job (requeue, preemption, scancel); the run checkpointed and stopped."""


class RunStalled(RuntimeError):
    """The run made no progress in several attempts in a row; status.json says so, a resubmission continues it."""


class RunBusy(RuntimeError):
    """Another process trains the run directory; this job left it untouched."""


class _Stall(BaseException):
    """Raised by `checkpoint()` from inside the trainer's signal handling: a BaseException, so
    that the trainer unwinds without marking the run FAILED (it is not an error of the run)."""


class TrainingJob(submitit.helpers.Checkpointable):
    def __init__(self, run_dir: str | os.PathLike, stop_signals: Sequence[str] = (), stalled: int = 0,
                 max_stalled: int = 3):
        self.run_dir = str(run_dir)
        self.stop_signals = tuple(stop_signals)
        """Signal names (no SIG prefix) SLURM was asked to send before the time limit."""
        self.stalled = stalled
        """Attempts in a row, before this one, that ended without progress."""
        self.max_stalled = max_stalled

    def __call__(self) -> str:
        # First, before any slow import: a time-limit signal other than submitit's would otherwise
        # kill the process (HUP's default action) instead of checkpointing.
        self._trap_stop_signals()
        _stop_with_local_controller()
        try:
            return self._train()
        except _Stall as stall:  # from checkpoint(), wherever the signal found the process
            raise RunStalled(str(stall)) from None

    def _train(self) -> str:
        # Imported here, not at the top: unpickling this job must be quick, because submitit
        # installs its signal handlers only after it (an early SIGUSR2 would kill the job).
        from experiments.run_config import load_run_config
        from experiments.run_dir import RunDir, RunDirBusy
        from experiments.train import run_training

        _export_distributed_env()
        run_dir = RunDir(self.run_dir)
        self._start_step = checkpointed_step(run_dir.path)
        try:
            code = run_training(load_run_config(run_dir.config), run_dir, on_start=lambda: self._begin(run_dir))
        except RunDirBusy as err:  # nothing recorded: the run directory, its status and attempts are the holder's
            raise RunBusy(f"run {run_dir.path.name}: {err}") from None
        except (SystemExit, _Stall):  # submitit requeued the job, or checkpoint() stopped it: recorded there
            raise
        except BaseException as err:
            self._begin(run_dir)  # a failure before the run directory was taken (data, config) is an attempt too
            self._record("end", checkpointed_step(run_dir.path), outcome=f"failed: {type(err).__name__}")
            raise
        if getattr(self, "_attempt", None) is None:  # the run was DONE already: no attempt to record
            return self.run_dir
        if code > 128:
            name = signal.Signals(code - 128).name
            self._record("end", checkpointed_step(run_dir.path), outcome=f"stopped by {name}")
            raise RunInterrupted(f"run {run_dir.path.name} stopped by {name} at a checkpoint "
                                 "(step {}); a SLURM requeue or resubmitting the grid resumes it"
                                 .format(run_dir.read_status().get("step")))
        self._record("end", checkpointed_step(run_dir.path), outcome="done" if code == 0 else "failed")
        if code != 0:
            raise RunFailed(f"run {run_dir.path.name} exited with status {code}: {run_dir.read_status().get('error')}")
        return self.run_dir

    def _begin(self, run_dir: RunDir) -> None:
        """Record this attempt's start, once: called when the trainer has taken the run directory."""
        if getattr(self, "_attempt", None) is None:
            self._start_step = checkpointed_step(run_dir.path)
            self._attempt = int(run_dir.read_status().get("attempt") or 0) + 1
            self._record("start", self._start_step)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit's handler of the time-limit signal, after the trainer checkpointed.
        Requeue (return the same stateless job) while the run progresses; stop it when it has not
        progressed in `max_stalled` attempts in a row."""
        from experiments.run_dir import RunDir

        run_dir = RunDir(self.run_dir)
        self._begin(run_dir)
        start, end = getattr(self, "_start_step", None), checkpointed_step(run_dir.path)
        progressed = start is not None and end > start
        stalled = 0 if progressed else getattr(self, "stalled", 0) + 1
        max_stalled = getattr(self, "max_stalled", 3)
        if stalled >= max_stalled:
            reason = (f"stalled: no progress in {stalled} attempt(s) in a row (checkpointed step {end}); "
                      "not requeued; resubmit the grid to continue")
            self._record("end", end, outcome="stalled")
            run_dir.write_status("PENDING", stage=STALLED_STAGE, error=reason)
            raise _Stall(f"run {run_dir.path.name} {reason}")
        self._record("end", end, outcome="requeued" if progressed else f"requeued without progress ({stalled})")
        return submitit.helpers.DelayedSubmission(
            TrainingJob(self.run_dir, getattr(self, "stop_signals", ()), stalled, max_stalled))

    def _trap_stop_signals(self) -> None:
        """Route every time-limit signal to submitit's requeue handler, through the trainer's checkpoint;
        a SIGTERM before the trainer is ready waits for it (hold_sigterm_until_training)."""
        from experiments.interrupt import hold_sigterm_until_training, register_requeue_signal

        hold_sigterm_until_training()

        usr = submitit.JobEnvironment._usr_sig()  # the signal submitit's handler is installed on here
        requeue = signal.getsignal(usr)
        wanted = {usr, *(signal.Signals[f"SIG{name}"] for name in getattr(self, "stop_signals", ()))}
        for signum in sorted(wanted):
            if signum != signal.SIGUSR2:
                register_requeue_signal(signum)
            if signum != usr and callable(requeue):
                signal.signal(signum, requeue)

    def _record(self, event: str, step: int, **fields: Any) -> None:
        if _global_rank() == 0:
            record_attempt(Path(self.run_dir), getattr(self, "_attempt", 0), event, step, **fields)

    def __repr__(self) -> str:
        return f"TrainingJob({self.run_dir!r})"


def checkpointed_step(run_dir: Path) -> int:
    """The step of the newest complete checkpoint (0 without one): the progress a requeue keeps."""
    from experiments.checkpoint import complete_checkpoints

    folder = Path(run_dir) / "checkpoints"
    newest = complete_checkpoints(folder)[:1] if folder.is_dir() else []
    return int(newest[0].name.removeprefix("step_")) if newest else 0


def record_attempt(run_dir: Path, attempt: int, event: str, step: int, **fields: Any) -> None:
    """Append one line to <run_dir>/attempts.jsonl (flushed; a torn last line is skipped by readers)."""
    record = {"attempt": attempt, "event": event, "step": step, "time": time.time(), "job_id": _job_id(),
              "host": socket.gethostname(), **fields}
    try:
        with open(Path(run_dir) / ATTEMPTS_FILE, "a", encoding="utf-8") as f:
            f.write(strict_json.dumps(record, sort_keys=True) + "\n")
            f.flush()
    except OSError:  # a full disk must not turn a requeue into a failure: the record is only informative
        pass


def read_attempts(run_dir: Path) -> list[dict[str, Any]]:
    """One entry per attempt, in order: {attempt, start, end (None while running or after a kill),
    outcome, job_id}. Damaged lines are skipped."""
    attempts: dict[int, dict[str, Any]] = {}
    try:
        lines = (Path(run_dir) / ATTEMPTS_FILE).read_bytes().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line.decode("utf-8"))
            number, step = int(record["attempt"]), int(record["step"])
        except (ValueError, KeyError, TypeError):
            continue
        entry = attempts.setdefault(number, {"attempt": number, "start": None, "end": None, "outcome": None,
                                             "job_id": record.get("job_id")})
        if record.get("event") == "start":
            entry.update(start=step, job_id=record.get("job_id"))
        else:
            entry.update(end=step, outcome=record.get("outcome"))
    ordered = [attempts[k] for k in sorted(attempts)]
    for current, following in zip(ordered, ordered[1:]):
        if current["end"] is None and following["start"] is not None:  # killed: the next one resumed from here
            current["end"], current["outcome"] = following["start"], current["outcome"] or "killed"
    return ordered


PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal this process gets when the thread that started it exits."""


def _stop_with_local_controller() -> None:
    """Under the local executor, SIGTERM (checkpoint, then exit) when submitit's controller dies
    (the module docstring); nothing elsewhere (SLURM stops a job's processes itself)."""
    controller = os.environ.get("SUBMITIT_LOCAL_JOB_ID")
    if os.environ.get("SUBMITIT_EXECUTOR") != "local" or not controller or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    # The job id is the controller's pid, the parent, unless a setup shell runs the controller (then
    # it is the shell's). A parent that died before the request sends nothing: do not start.
    if not os.environ.get("SUBMITIT_LOCAL_WITH_SHELL") and str(os.getppid()) != controller:
        raise RunInterrupted(f"submitit's controller (pid {controller}) exited before the run started; "
                             "resubmitting the grid starts it")


def _global_rank() -> int:
    try:
        return int(submitit.JobEnvironment().global_rank)
    except Exception:  # noqa: BLE001 - outside a submitit job: a single process
        return int(os.environ.get("RANK", 0))


def _job_id() -> str | None:
    try:
        return str(submitit.JobEnvironment().job_id)
    except Exception:  # noqa: BLE001 - outside a submitit job
        return os.environ.get("SLURM_JOB_ID")


def _export_distributed_env() -> None:
    """With several tasks, set RANK/WORLD_SIZE/MASTER_ADDR/... for torch.distributed."""
    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(overwrite=True)
    if env.num_nodes == 1:
        # On one node gloo needs no real interface; loopback works even where the host name does not resolve.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
