#!/usr/bin/env bash
# The GPU path checked on one device (experiments/gpu_check.py): fused vs banded attention
# equality in fp32, bf16 training of every variant, tokens/s and peak memory of banded vs
# fused at the enwik8-small geometry; one JSON line per measurement on stdout (and --out FILE).
#   bash experiments/gpu_check.sh --out results/benchmarks/gpu_check_$(hostname).jsonl   # a single GPU, < 8 min
#   bash experiments/gpu_check.sh --device cpu --small                                 # seconds, the CI test
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source experiments/env.sh
exec "$PY" -m experiments.gpu_check "$@"
