"""The `slurm:` section of a run config: what one run asks of the cluster.

It never changes results, so it is left out of the run's identity hash.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from model.errors import ConfigError


@dataclass
class SlurmConfig:
    nodes: int = 1
    """Nodes per run; tasks are started one per GPU (or one per node on CPU)."""
    gpus_per_node: int = 0
    """GPUs per node; each gets its own task and DDP rank."""
    cpu_tasks_per_node: int = 1
    """Data-parallel CPU processes per node (gloo); only without GPUs."""
    cpus_per_task: int = 2
    """CPU cores per task (data loading is light: 2-10 is plenty)."""
    mem_gb: int = 8
    """Memory per node in GB."""
    timeout_min: int = 60
    """Wall-time limit of one attempt; a run longer than this is requeued from its checkpoint."""

    def __post_init__(self) -> None:
        for name in ("nodes", "cpus_per_task", "mem_gb", "timeout_min"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_node < 0:
            raise ConfigError("gpus_per_node", f"must be >= 0, got {self.gpus_per_node}")
        if self.cpu_tasks_per_node < 1:
            raise ConfigError("cpu_tasks_per_node", f"must be >= 1, got {self.cpu_tasks_per_node}")
        if self.gpus_per_node and self.cpu_tasks_per_node != 1:
            raise ConfigError("cpu_tasks_per_node", "is for CPU-only runs; with GPUs there is one task per GPU")

    @property
    def tasks_per_node(self) -> int:
        return self.gpus_per_node or self.cpu_tasks_per_node


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: what SLURM or taskset gave it), at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
