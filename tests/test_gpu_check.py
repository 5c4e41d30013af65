"""experiments/gpu_check.sh runs on CPU with small shapes, so that the GPU check cannot rot;
experiments.benchmark times the trainer's own step."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import torch

from experiments.benchmark import benchmark
from experiments.run_config import run_config_from_dict
from tests.conftest import PROJECT_ROOT
from tests.model_helpers import VARIANTS


def test_gpu_check_runs_on_cpu_with_small_shapes(tmp_path):
    out = tmp_path / "check.jsonl"
    started = time.monotonic()
    proc = subprocess.run(["bash", "experiments/gpu_check.sh", "--device", "cpu", "--small", "--threads", "1",
                           "--out", str(out)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    printed = [json.loads(line) for line in proc.stdout.splitlines()]
    assert printed == [json.loads(line) for line in out.read_text().splitlines()]  # the same lines in the file
    checks = [r["check"] for r in printed]
    assert checks[0] == "machine" and checks[-1] == "done" and printed[-1]["failed"] == 0
    equality = [r for r in printed if r["check"] == "equality"]
    assert {(r["variant"], r["adaptive_span"]) for r in equality} == {(v, s) for v in VARIANTS for s in (False, True)}
    assert {r["variant"] for r in printed if r["check"] == "bf16_training"} == set(VARIANTS)
    throughput = [r for r in printed if r["check"] == "throughput"]
    assert [(r["attention"], r["precision"]) for r in throughput] == [("banded", "fp32"), ("fused", "fp32"),
                                                                        ("fused", "bf16")]
    assert all(r["tokens_per_s"] > 0 and r["peak_memory_mb"] > 0 for r in throughput)
    assert "targets" in checks
    assert all(r.get("ok", True) for r in printed)
    assert seconds < 60, f"the CPU check took {seconds:.0f} s"


def test_benchmark_times_the_trainers_step_in_its_precision():
    cfg = run_config_from_dict({
        "name": "bench", "model": {"variant": "all_attention", "vocab_size": 20, "num_layers": 1, "d_model": 16,
                                   "num_heads": 2, "num_persistent": 4, "attn_span": 16, "dropout": 0.0,
                                   "attention": "fused"},
        "data": {"dataset": "lexicon", "path": "unused"}, "optim": {"name": "adagrad", "lr": 0.07},
        "train": {"steps": 1, "block_size": 8, "batch_size": 4, "batch_split": 2, "precision": "bf16",
                  "device": "cpu"}})
    result = benchmark(cfg, torch.device("cpu"), steps=2, warmup=1)
    assert (result["precision"], result["attention"], result["batch_split"]) == ("bf16", "fused", 2)
    assert result["tokens_per_s"] > 0 and 0 < result["model_mfu"] and result["matmul_gflops"] > 0
    assert result["memory_source"] == "process_peak_rss" and result["peak_memory_mb"] > 0
    torch.set_float32_matmul_precision("highest")


def test_benchmark_ab_alternates_two_attention_files_in_one_process(tmp_path):
    """The same file on both sides: bit-identical losses, a ratio printed; a bad --old is one line."""
    args = [sys.executable, "-m",
            "experiments.benchmark_ab", "experiments/cpu/bench_small.yaml", "--rounds", "4",
            "--set", "model.num_layers=1", "--set", "model.d_model=32", "--set", "model.attn_span=16",
            "--set", "model.num_persistent=8", "--set", "train.block_size=8", "--set", "train.batch_size=2"]
    run = lambda *extra: subprocess.run([*args, *extra], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    same = run("--old", "model/attention.py")
    assert same.returncode == 0, same.stderr[-3000:]
    assert "old/new per round: median" in same.stdout and "largest loss difference 0.00e+00" in same.stdout
    (tmp_path / "other.py").write_text("x = 1\n")
    for old, message in ((tmp_path / "missing.py", "no file"), (tmp_path / "other.py", "no projected_context_attention")):
        bad = run("--old", str(old))
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and message in bad.stderr, bad.stderr
