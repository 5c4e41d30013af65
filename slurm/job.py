"""The requeueable SLURM job: one run of a grid, resumable from its checkpoint.

The pickled job holds nothing but its run directory: the config, checkpoints and
progress are on disk, so a requeued attempt (after a timeout or a preemption)
simply calls the trainer again, which resumes from the newest checkpoint. On
SIGUSR2 the trainer first checkpoints at a step boundary, then hands the signal
to submitit's handler, which calls `checkpoint()` below and requeues the job.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import submitit



class RunFailed(RuntimeError):
    """The run ended FAILED; its status.json holds the error tail."""


class RunInterrupted(RuntimeError):
    """SLURM signalled the job (requeue, preemption, scancel); the run checkpointed and stopped."""


class TrainingJob(submitit.helpers.Checkpointable):
    def __init__(self, run_dir: str | Path):
        self.run_dir = str(run_dir)

    def __call__(self) -> str:
        # Imported here, not at the top: unpickling this job must be quick, because submitit
        # installs its signal handlers only after it (an early SIGUSR2 would kill the job).
        from experiments.run_config import load_run_config
        from experiments.run_dir import RunDir
        from experiments.train import run_training

        _export_distributed_env()
        run_dir = RunDir(self.run_dir)
        code = run_training(load_run_config(run_dir.config), run_dir)
        if code > 128:
            raise RunInterrupted(f"run {run_dir.path.name} stopped by {signal.Signals(code - 128).name} at a checkpoint "
                                 "(step {}); a SLURM requeue or resubmitting the grid resumes it"
                                 .format(run_dir.read_status().get("step")))
        if code != 0:
            raise RunFailed(f"run {run_dir.path.name} exited with status {code}: {run_dir.read_status().get('error')}")
        return self.run_dir

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        # The trainer has already written its checkpoint; resubmitting the same
        # (stateless) job is all a requeue needs.
        return submitit.helpers.DelayedSubmission(TrainingJob(self.run_dir))

    def __repr__(self) -> str:
        return f"TrainingJob({self.run_dir!r})"


def _export_distributed_env() -> None:
    """With several tasks, set RANK/WORLD_SIZE/MASTER_ADDR/... for torch.distributed."""
    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(overwrite=True)
    if env.num_nodes == 1:
        # On one node gloo needs no real interface; loopback works even where the host name does not resolve.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
