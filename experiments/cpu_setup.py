"""Process-wide CPU settings of a training, evaluation or benchmark process.

Huge pages for large tensors: glibc serves every block over its mmap threshold (at most
32 MiB on 64-bit) with a fresh mapping and unmaps it on free, so each step's largest tensors
(at span 2048, batch 8: the keys/values over [cache ; block] and their gradient, 35 MB each
per layer) are faulted in again every step, one 4 KiB page at a time: ~35,000-70,000 faults
per span-2048 step on the CPU-small geometry (results/benchmarks/README.md, issue 13).
PyTorch's own switch THP_MEM_ALLOC_ENABLE=1 makes its CPU allocator align blocks of 2 MiB
and over to 2 MiB and madvise them for transparent huge pages: 512 times fewer faults, the
process's memory unchanged (measured: ~3,950 faults per step, resident size flat over 100
steps). PyTorch reads the variable at its first allocation of 2 MiB or more, so it must be
set before the first large tensor; a value the user set is kept. Where the kernel's THP mode
is `never`, nothing changes. Numbers are not affected.
"""
from __future__ import annotations

import os

import torch

HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"


def setup_cpu(threads: int | None = None) -> None:
    """Set torch's intra-op threads (if `threads`) and ask PyTorch's CPU allocator for huge pages
    (unless the user's environment says otherwise). Call it before any large tensor exists."""
    os.environ.setdefault(HUGE_PAGES, "1")
    if threads:
        torch.set_num_threads(threads)
