"""A training step at a long span reuses its largest buffers instead of mapping them afresh.

glibc maps every block over its mmap threshold (at most 32 MiB) afresh and unmaps it on free,
so a tensor that large made anew every step is faulted in 4 KiB at a time every step: at span
2048 the keys/values over [cache ; block] and their gradient (35 MB each) cost ~57,000 faults
per CPU-small step before the banded attention recycled them (results/benchmarks/README.md).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import PROJECT_ROOT

# One all-attention layer at span 2048, batch 8: kv is 8 x 2176 x 512 floats = 35.7 MB. Prints the
# minor page faults per step of steps 3-6 (forward, backward, the cache carried).
_FAULTS_PER_STEP = textwrap.dedent("""
    import resource, torch
    from model import build_model
    from model.config import ModelConfig
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(variant="all_attention", vocab_size=16, num_layers=1, d_model=256, num_heads=4,
                                    num_persistent=256, attn_span=2048, dropout=0.0))
    cache, faults = model.init_cache(8), []
    for step in range(6):
        tokens = torch.randint(0, 16, (8, 129))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        nll, cache = model(tokens[:, :-1], cache, tokens[:, 1:])
        nll.mean().backward()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(sum(faults[2:]) // 4)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts glibc's page faults")
def test_a_long_span_step_does_not_fault_its_largest_tensors_in_afresh():
    out = subprocess.run([sys.executable, "-c", _FAULTS_PER_STEP], cwd=PROJECT_ROOT, capture_output=True, text=True,
                         check=True, env={**os.environ, "THP_MEM_ALLOC_ENABLE": "0"})  # 4 KiB pages, as by default
    # Two 35.7 MB tensors mapped afresh are ~17,400 faults; recycled, a few hundred are left.
    assert int(out.stdout.split()[-1]) < 5_000
