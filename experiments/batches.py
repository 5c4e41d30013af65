"""Batches as the authors form them: B contiguous streams read block by block.

The token array is cut into B rows of equal length (the tail that does not fill
a row is dropped); step k reads columns [offset, offset + M] of every row, so
each row continues where it stopped and the per-layer cache stays meaningful.
Rows are views into the memory-mapped array: nothing is copied until a block
is read.
"""
from __future__ import annotations

import numpy as np
import torch

from model.errors import UserError


class TokenStream:
    def __init__(self, tokens: np.ndarray, batch_size: int, block_size: int, rows: slice = slice(None)):
        self.block_size = block_size
        self.row_len = len(tokens) // batch_size
        if self.row_len < block_size + 1:
            raise UserError(
                f"{len(tokens)} tokens cannot fill {batch_size} rows of block_size={block_size} + 1; "
                "use a smaller batch or block")
        self.rows = tokens[: self.row_len * batch_size].reshape(batch_size, self.row_len)[rows]

    def fits(self, offset: int) -> bool:
        return offset + self.block_size + 1 <= self.row_len

    @property
    def num_blocks(self) -> int:
        """Full blocks per row from offset 0 (the last partial block is dropped)."""
        return (self.row_len - 1) // self.block_size

    def block(self, offset: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each B x M, read at `offset`."""
        window = torch.from_numpy(np.asarray(self.rows[:, offset: offset + self.block_size + 1], dtype=np.int64))
        if device.type == "cuda":
            # From pinned memory the copy is asynchronous: a pageable one would make the host
            # wait for every kernel queued before it, once per step.
            window = window.pin_memory()
        window = window.to(device, non_blocking=True)
        return window[:, :-1], window[:, 1:]


def restart_offset(seed: int, epoch: int, block_size: int) -> int:
    """Offset where epoch `epoch` starts after the data ran out: uniform in [0, M).

    Drawn from a generator keyed by (seed, epoch) rather than a global RNG, so the
    draw is the same after a resume without storing generator state.
    """
    return int(np.random.default_rng([seed, epoch]).integers(0, block_size))
