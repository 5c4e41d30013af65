"""Cluster profiles (`slurm/clusters/NAME.yaml`): what differs between clusters.

A run config says how much a run needs (slurm: section); the profile says how to
ask this cluster for it: partition, account, GPU flag style, setup lines, the
time-limit signal, the GPUs' memory, whether compute nodes see this machine's
files, and a throughput figure (with its source) used to estimate GPU-hours and
the number of attempts. `--cluster` takes a profile name or a path to a YAML file.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path

from experiments.config import load_config
from model.errors import ConfigError, UserError

CLUSTERS_DIR = Path(__file__).resolve().parent / "clusters"


@dataclass
class ClusterProfile:
    partition: str
    """SLURM partition (--partition)."""
    account: str | None = None
    """--account, if the cluster charges one."""
    qos: str | None = None
    """--qos, if any."""
    constraint: str | None = None
    """--constraint (node features, e.g. 'volta32gb'), if any."""
    gpu_flag: str = "gpus_per_node"
    """How GPUs are requested: 'gpus_per_node' (--gpus-per-node=G) or 'gres' (--gres=gpu:G)."""
    max_time_min: int = 4320
    """Longest time limit the partition allows; longer runs are requeued from checkpoints."""
    signal_delay_s: int = 120
    """SIGUSR2 this long before the limit, time for a checkpoint. slurmctld checks limits every
    30 s and sends the signal 0-30 s earlier than this (measured on the local SLURM)."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before the job (module load, venv activation)."""
    achieved_tflops_per_gpu: float = 40.0
    """Sustained model TFLOP/s of one GPU (or of one CPU task), for estimates only."""
    throughput_source: str | None = None
    """Where achieved_tflops_per_gpu comes from (e.g. 'experiments.benchmark, enwik8_small, 2025-06-02');
    the plan prints it beside every GPU-hour estimate. None: 'a guess, not measured'."""
    gpu_mem_gb: float | None = None
    """Memory of one GPU in GB; the plan warns when a run's estimate does not fit. None: unknown."""
    stop_signal: str | None = None
    """The signal SLURM sends signal_delay_s before the time limit (e.g. HUP, USR1), as --signal=SIG@N.
    None: submitit's (USR2, or $SUBMITIT_PREEMPT_SIGNAL). The job traps whichever was asked for."""
    max_stalled_attempts: int = 3
    """A run is requeued after every attempt that advanced its checkpointed step; after this many
    attempts in a row without progress it stops (status PENDING, stage 'stalled'; resubmit to continue)."""
    data_elsewhere: bool = False
    """Compute nodes see another filesystem than the submitting machine: a data.path missing here is
    a warning at submission, not an error (the job checks it again where it runs)."""

    def __post_init__(self) -> None:
        if self.gpu_flag not in ("gpus_per_node", "gres"):
            raise ConfigError("gpu_flag", f"must be gpus_per_node or gres, got {self.gpu_flag!r}")
        if self.max_time_min < 1:
            raise ConfigError("max_time_min", f"must be >= 1, got {self.max_time_min}")
        if self.signal_delay_s < 35:
            raise ConfigError("signal_delay_s", f"must be >= 35 s to leave time for a checkpoint, got {self.signal_delay_s}")
        if self.achieved_tflops_per_gpu <= 0:
            raise ConfigError("achieved_tflops_per_gpu", "must be > 0")
        if self.gpu_mem_gb is not None and self.gpu_mem_gb <= 0:
            raise ConfigError("gpu_mem_gb", f"must be > 0, got {self.gpu_mem_gb}")
        if self.max_stalled_attempts < 1:
            raise ConfigError("max_stalled_attempts", f"must be >= 1, got {self.max_stalled_attempts}")
        if self.stop_signal is not None:
            self.stop_signal = check_stop_signal(self.stop_signal, "stop_signal")

    def time_limit_signal(self) -> str:
        """The signal name (no SIG prefix) SLURM is asked to send before the time limit."""
        return self.stop_signal or submitit_signal()


# Signals that cannot mean "the time limit is near": SIGTERM is SLURM's own stop (scancel, preemption,
# requeue), the others cannot be trapped or mean something else to a process.
_NOT_A_TIME_LIMIT_SIGNAL = {"TERM", "KILL", "STOP", "INT", "CONT"}


def check_stop_signal(name: str, where: str) -> str:
    """A time-limit signal name, normalised without its SIG prefix ('SIGHUP' -> 'HUP')."""
    bare = name.upper().removeprefix("SIG")
    if not isinstance(getattr(signal, f"SIG{bare}", None), signal.Signals):
        raise ConfigError(where, f"{name!r} is not a signal name (e.g. USR2, USR1, HUP)")
    if bare in _NOT_A_TIME_LIMIT_SIGNAL:
        raise ConfigError(where, f"SIG{bare} cannot be the time-limit signal (choose e.g. USR2, USR1 or HUP)")
    return bare


def submitit_signal() -> str:
    """The signal submitit asks SLURM for, read as submitit reads it (SUBMITIT_PREEMPT_SIGNAL, default USR2)."""
    from submitit.core.job_environment import _PREEMPT_SIG_ENV, JobEnvironment

    # submitit reads the variable once, when it is imported: that value is what its sbatch script says.
    return check_stop_signal(JobEnvironment.USR_SIG, _PREEMPT_SIG_ENV)


def load_profile(name: str) -> ClusterProfile:
    """A profile by name (slurm/clusters/NAME.yaml) or by path to a YAML file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else CLUSTERS_DIR / f"{name}.yaml"
    if not path.is_file():
        if path.suffix in (".yaml", ".yml") and name.endswith((".yaml", ".yml")):
            raise UserError(f"cluster profile {name}: no such file")
        known = ", ".join(sorted(p.stem for p in CLUSTERS_DIR.glob("*.yaml")))
        raise UserError(f"unknown cluster profile {name!r} (known: {known}; add slurm/clusters/{name}.yaml)")
    return load_config(path, ClusterProfile)


def profile_label(name: str) -> str:
    """How the plan names a profile: its file name."""
    return Path(name).name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
