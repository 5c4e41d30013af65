"""Whether a run's weights, gradients and optimizer state fit in the memory its process can use,
checked before the run starts (experiments/train.py's preflight).

A lower bound only (experiments.summary.state_bytes; activations and caches come on top), so it
refuses only configs that cannot run: one that fails it would die at its first large
allocation, after the run directory is written. Available memory: on CUDA the device's free
memory; on CPU the least of the kernel's MemAvailable and, under a cgroup v2 limit (SLURM's
--mem), the limit minus what the cgroup already uses, at every level up to the root.
"""
from __future__ import annotations

from pathlib import Path

import torch

from experiments.run_config import RunConfig
from experiments.summary import state_bytes
from model.errors import UserError

CGROUP_ROOT = Path("/sys/fs/cgroup")


def check_memory(cfg: RunConfig, device: torch.device) -> None:
    """Raises UserError if `cfg`'s training state alone exceeds the memory available on `device`."""
    available = available_bytes(device)
    if available is None:
        return
    free, source = available
    need = state_bytes(cfg)
    if need > free:
        raise UserError(f"the model's weights, gradients and {cfg.optim.name} state need {need / 2**30:.2f} GiB, more than "
                        f"the {free / 2**30:.2f} GiB available ({source}); shrink model.d_model, num_layers, "
                        f"num_persistent or vocab_size, or run with more memory")


def available_bytes(device: torch.device) -> tuple[int, str] | None:
    """(bytes, where the figure comes from) that this process can still allocate on `device`, or
    None where no figure can be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], f"free on {torch.cuda.get_device_name(device)}"
    figures = [f for f in (_mem_available(), _cgroup_headroom()) if f is not None]
    return min(figures) if figures else None


def _mem_available() -> tuple[int, str] | None:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    kib = [int(line.split()[1]) for line in lines if line.startswith("MemAvailable:")]
    return (kib[0] * 1024, "MemAvailable") if kib else None


def _cgroup_headroom() -> tuple[int, str] | None:
    """The smallest memory.max - memory.current from this process's cgroup (v2) up to the root."""
    try:
        entry = next(line for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::"))
    except (OSError, StopIteration):
        return None
    folder, best = CGROUP_ROOT / entry[3:].lstrip("/"), None
    for level in (folder, *folder.parents):
        if not str(level).startswith(str(CGROUP_ROOT)):
            break
        try:
            limit = (level / "memory.max").read_text().strip()
            used = int((level / "memory.current").read_text())
        except (OSError, ValueError):
            continue
        if limit != "max" and (best is None or int(limit) - used < best[0]):
            best = (int(limit) - used, f"cgroup limit {int(limit) / 2**30:.2f} GiB of {level}")
    return best
