"""Process-wide CPU settings of a training, evaluation or benchmark process.

Huge pages for large tensors: glibc serves every block over its mmap threshold (at most
32 MiB on 64-bit) with a fresh mapping and unmaps it on free, so a tensor that large made
afresh every step is faulted in again every step, one 4 KiB page at a time. PyTorch's own
switch THP_MEM_ALLOC_ENABLE=1 makes its CPU allocator madvise blocks of 2 MiB and over for
transparent huge pages: measured here, a 64 MiB tensor made afresh takes ~545 faults instead
of 16,384 (tests/test_cpu_setup.py), with the same resident size. PyTorch reads the variable
once, at the process's first CPU tensor of any size, so `setup_cpu` must run before any
tensor exists; a value the user set is kept. Where the kernel's THP mode is `never`, nothing
changes. Numbers are not affected. (The banded attention also recycles its own largest
buffers: model/attention.py.)
"""
from __future__ import annotations

import os

import torch

HUGE_PAGES = "THP_MEM_ALLOC_ENABLE"


def setup_cpu(threads: int | None = None) -> None:
    """Set torch's intra-op threads (if `threads`) and ask PyTorch's CPU allocator for huge pages
    (unless the user's environment says otherwise). Call it before the process makes any tensor."""
    os.environ.setdefault(HUGE_PAGES, "1")
    if threads:
        torch.set_num_threads(threads)
