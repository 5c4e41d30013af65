"""experiments.cpu_setup: a training process's large tensors are faulted in by huge pages."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

# Allocates, fills and frees a 64 MiB tensor (above glibc's largest mmap threshold) a few times
# and prints the minor page faults of the last round. PyTorch reads the switch at the first CPU
# tensor, so the entry points' imports must make none before they call setup_cpu.
_FAULTS = textwrap.dedent("""
    import os, resource, sys, torch
    import experiments.benchmark, experiments.evaluate, experiments.train  # importing them makes no tensor
    from experiments.cpu_setup import setup_cpu
    if sys.argv[1] == "on":
        setup_cpu(1)
        assert torch.get_num_threads() == 1
    else:
        os.environ.pop("THP_MEM_ALLOC_ENABLE", None)
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(16 * 2**20).fill_(1.0)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(faults)
""")


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def _huge_pages_possible() -> bool:
    try:
        return "[never]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not _huge_pages_possible(), reason="the kernel offers no transparent huge pages here")
def test_large_tensors_are_faulted_in_by_huge_pages_after_setup():
    # 64 MiB: 16,384 faults of 4 KiB pages, or 32 of 2 MiB pages (plus the odd small one).
    assert _faults("off") > 10_000, "large blocks are no longer mapped afresh: this test measures nothing"
    assert _faults("on") < 1_000
