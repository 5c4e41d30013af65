"""Whether a run's weights, gradients and optimizer state fit in the memory its process can use,
checked before the run starts (experiments/train.py's preflight, experiments/benchmark.py).

The training state is a lower bound (experiments.summary.state_bytes; activations and caches
come on top), so it refuses only configs that cannot run: one that fails it would die at its
first large allocation, after the run directory is written. The activations are only a rough
estimate (model.summary.activation_bytes, one micro-batch), so state plus activations beyond
the memory available is a warning, returned to the caller: train logs it, the benchmark refuses
(a paper-scale config on a CPU machine was killed for memory after a minute, with no word).
Available memory: on CUDA the device's free
memory; on CPU the least of the kernel's MemAvailable and, under a cgroup v2 limit (SLURM's
--mem), the limit minus what the cgroup already uses, at every level up to the root.
"""
from __future__ import annotations

from pathlib import Path

import torch

from experiments.run_config import RunConfig
from experiments.summary import state_bytes
from model.errors import UserError
from model.summary import activation_bytes

CGROUP_ROOT = Path("/sys/fs/cgroup")


def check_memory(cfg: RunConfig, device: torch.device, processes: int) -> str | None:
    """Raises UserError if `cfg`'s training state alone exceeds the memory available on `device`;
    returns a warning if the state plus the activation estimate of one micro-batch does (None
    otherwise). `processes` share train.batch_size (the world size; 1 for the benchmark)."""
    available = available_bytes(device)
    if available is None:
        return None
    free, source = available
    need = state_bytes(cfg)
    if need > free:
        raise UserError(f"the model's weights, gradients and {cfg.optim.name} state need {need / 2**30:.2f} GiB, more than "
                        f"the {free / 2**30:.2f} GiB available ({source}); shrink model.d_model, num_layers, "
                        f"num_persistent or vocab_size, or run with more memory")
    rows = max(1, cfg.train.batch_size // processes // cfg.train.batch_split)
    activations = activation_bytes(cfg.model, rows, cfg.train.block_size, cfg.model.attention_on(device.type))
    if need + activations > free:
        return (f"the training state ({need / 2**30:.2f} GiB) and the activations of a micro-batch of {rows} rows "
                f"(about {activations / 2**30:.2f} GiB, an estimate) exceed the {free / 2**30:.2f} GiB available "
                f"({source}): the process is likely to be killed for memory; raise train.batch_split, or shrink "
                "train.batch_size, block_size or model.attn_span")
    return None


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
