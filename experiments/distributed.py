"""Data-parallel context: one process per device, started by torchrun or SLURM.

The trainer is data-parallel when RANK / WORLD_SIZE / LOCAL_RANK are set (the
SLURM job exports them from submitit's TorchDistributedEnvironment). Gradients
are averaged by torch.nn.parallel.DistributedDataParallel (`DistContext.data_parallel`):
bucketed all-reduces that overlap the backward pass, skipped with `no_sync` on every
micro-batch but the last of a step. The model's forward takes and returns its
per-layer caches; DDP passes them through untouched (they are detached, so no
gradient flows through them). Every parameter gets a gradient in every step (the
adaptive output touches its absent clusters, model/adaptive_io.py), so DDP runs
without find_unused_parameters; tests/test_train.py checks this for every variant.
"""
from __future__ import annotations

import gc
import os
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from model.errors import UserError


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device
    _finished: deque = field(default_factory=lambda: deque(maxlen=8), init=False, repr=False, compare=False)
    """Handles of the last collectives this process started. A gloo worker thread drops a finished
    collective's tensors after the caller has moved on, and dropping a Python tensor needs the GIL;
    were the worker their last owner while the main thread tears the group down (joining the
    workers, GIL held), both would wait forever (seen: 1 in 12 two-rank runs hung at exit).
    Holding the handles makes the main thread their last owner (`shutdown_distributed`)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of the global batch: contiguous, equal shares."""
        if batch_size % self.world_size:
            raise UserError(f"train.batch_size={batch_size} is not divisible by the {self.world_size} processes")
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sums over ranks, read back on the host (the host waits for the device)."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        self._wait(dist.all_reduce(t, async_op=True))
        return t.tolist()

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` (on this rank's device) over ranks in place; nothing is read on the host,
        so on CUDA the host does not wait."""
        if self.active:
            self._wait(dist.all_reduce(tensor, async_op=True))
        return tensor

    def data_parallel(self, module: torch.nn.Module) -> torch.nn.Module:
        """`module` wrapped for gradient averaging over the ranks (itself when alone): call the
        wrapper in the forward pass; save and load the state of `module`, whose keys have
        no "module." prefix. Buffers are not broadcast at each forward (the model's are
        constants), and module states are checked equal at construction."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, forward_sync_buffers=False)

    def all_agree(self, ok: bool) -> bool:
        """True only when `ok` holds on every rank."""
        return self.all_reduce_sum([0.0 if ok else 1.0])[0] == 0.0

    def barrier(self) -> None:
        if self.active:
            self._wait(dist.barrier(async_op=True))

    def _wait(self, work: dist.Work) -> None:
        work.wait()
        self._finished.append(work)

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def resolve_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("device 'cuda' asked for (train.device or --device) but no CUDA device is visible")
    return torch.device("cuda", local_rank)


def init_distributed(device_preference: str) -> DistContext:
    """Join the process group when launched with RANK/WORLD_SIZE, else run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, device=device)


def shutdown_distributed(ctx: DistContext) -> None:
    """Leave the process group, its worker threads joined before this returns. Call it once the
    DDP wrapper is unreferenced: its reducer holds the group too, and would otherwise tear it
    down later, wherever it is freed (at interpreter exit, gloo's threads may still run)."""
    gc.collect()  # the wrapper may sit in a reference cycle
    if dist.is_initialized():
        dist.destroy_process_group()
    ctx._finished.clear()
