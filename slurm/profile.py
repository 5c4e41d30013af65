"""Cluster profiles (`slurm/clusters/NAME.yaml`): what differs between clusters.

A run config says how much a run needs (slurm: section); the profile says how to
ask this cluster for it: partition, account, GPU flag style, setup lines, and a
throughput figure used to estimate GPU-hours and per-attempt time limits.
"""
from __future__ import annotations

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

    def __post_init__(self) -> None:
        if self.gpu_flag not in ("gpus_per_node", "gres"):
            raise ConfigError("gpu_flag", f"must be gpus_per_node or gres, got {self.gpu_flag!r}")
        if self.max_time_min < 1:
            raise ConfigError("max_time_min", f"must be >= 1, got {self.max_time_min}")
        if self.signal_delay_s < 35:
            raise ConfigError("signal_delay_s", f"must be >= 35 s to leave time for a checkpoint, got {self.signal_delay_s}")
        if self.achieved_tflops_per_gpu <= 0:
            raise ConfigError("achieved_tflops_per_gpu", "must be > 0")


def load_profile(name: str) -> ClusterProfile:
    path = CLUSTERS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CLUSTERS_DIR.glob("*.yaml")))
        raise UserError(f"unknown cluster profile {name!r} (known: {known}; add slurm/clusters/{name}.yaml)")
    return load_config(path, ClusterProfile)
