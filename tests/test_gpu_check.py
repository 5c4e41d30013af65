"""experiments/gpu_check.sh runs on CPU with small shapes, so that the GPU check cannot rot;
experiments.benchmark times the trainer's own step."""
from __future__ import annotations

import json
import subprocess
import time

import pytest
import torch

from experiments import benchmark as benchmark_module
from experiments import benchmark_ab, memory_check
from experiments.benchmark import benchmark
from experiments.benchmark import main as benchmark_main
from experiments.gpu_check import main as gpu_check_main
from experiments.cli import run_cli
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
    # the geometry, so that CSV rows of different depths or widths tell apart (a fresh-user finding)
    assert (result["num_layers"], result["d_model"], result["num_heads"]) == (1, 16, 2)
    assert result["tokens_per_s"] > 0 and 0 < result["model_mfu"] and result["matmul_gflops"] > 0
    assert result["memory_source"] == "process_peak_rss" and result["peak_memory_mb"] > 0
    torch.set_float32_matmul_precision("highest")


def test_benchmark_ab_alternates_two_attention_files_in_one_process(tmp_path, capsys):
    """The same file on both sides: identical losses (dropout included), a ratio printed; every bad
    --old, a GPU config and the fused attention are one line and exit 2, before any step."""
    args = [str(PROJECT_ROOT / "experiments/cpu/bench_small.yaml"), "--rounds", "8",
            "--set", "model.num_layers=1", "--set", "model.d_model=32", "--set", "model.attn_span=16",
            "--set", "model.num_persistent=8", "--set", "train.block_size=8", "--set", "train.batch_size=2"]

    def run(*extra: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit:
            run_cli(benchmark_ab.main, [*args, *extra])
        out = capsys.readouterr()
        return exit.value.code, out.out, out.err

    code, out, err = run("--old", str(PROJECT_ROOT / "model/attention.py"), "--set", "model.dropout=0.3")
    assert code == 0, err
    assert "old/new per round: median" in out and "loss difference at step 1 0.00e+00, largest 0.00e+00" in out
    files = {"other.py": "x = 1\n", "raises.py": "raise RuntimeError('boom')\n", "exits.py": "import sys\nsys.exit(5)\n",
             "syntax.py": "def f(:\n", "notes.txt": "hello\n", "signature.py": "def projected_context_attention(a):\n    pass\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    own = str(PROJECT_ROOT / "model/attention.py")
    cases = [(("--old", str(tmp_path / "missing.py")), "no file"),
             (("--old", str(tmp_path / "other.py")), "no function projected_context_attention"),
             (("--old", str(tmp_path / "raises.py")), "fails to import: RuntimeError: boom"),
             (("--old", str(tmp_path / "exits.py")), "fails to import: SystemExit"),
             (("--old", str(tmp_path / "syntax.py")), "fails to import: SyntaxError"),
             (("--old", str(tmp_path / "notes.txt")), "fails to import: NameError"),
             (("--old", str(tmp_path / "signature.py")), "takes (a), this tree's (q, history"),
             (("--old", own, "--set", "train.device=cuda"), "train.device is cuda"),
             (("--old", own, "--set", "model.attention=fused"), "model.attention is fused"),
             (("--old", own, "--rounds", "4"), "argument --rounds: must be >= 8")]
    for extra, message in cases:
        code, _, err = run(*extra)
        assert code == 2 and err.count("\n") == 1 and message in err, (extra, err)


@pytest.mark.parametrize("command, flag", [(benchmark_main, "--csv"), (gpu_check_main, "--out")])
def test_output_file_that_is_a_directory_is_one_line_before_any_step(tmp_path, capsys, command, flag):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for target, message in ((tmp_path, "is a directory"), (blocker / "x.jsonl", "a folder on its path is a file")):
        args = ([str(PROJECT_ROOT / "experiments/cpu/bench_small.yaml")] if command is benchmark_main
                else ["--device", "cpu", "--small"])
        with pytest.raises(SystemExit) as exit:
            run_cli(command, [*args, flag, str(target)])
        err = capsys.readouterr().err
        assert exit.value.code == 2 and err.count("\n") == 1 and message in err and flag in err


def test_benchmark_refuses_a_state_larger_than_memory_before_any_step(capsys, monkeypatch):
    """The benchmark applies train's memory preflight: one line, before a step is timed (an
    absurd config used to run until its first allocation failed)."""
    monkeypatch.setattr(memory_check, "available_bytes", lambda device: (1, "a test's figure"))
    monkeypatch.setattr(benchmark_module, "timed_steps", lambda *a, **k: pytest.fail("a step ran"))
    with pytest.raises(SystemExit) as exit:
        run_cli(benchmark_main, [str(PROJECT_ROOT / "experiments/cpu/bench_small.yaml")])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1 and "a test's figure" in err


class _Timed(Exception):
    """Raised by a stand-in for experiments.benchmark.benchmark, with the device it was given."""


def _reach(cfg, device, steps):
    raise _Timed(device.type)


def test_benchmark_of_a_gpu_config_without_a_gpu_says_it_times_the_cpu(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(benchmark_module, "benchmark", _reach)
    with pytest.raises(_Timed, match="^cpu$"):
        benchmark_main([str(PROJECT_ROOT / "experiments/cpu/bench_small.yaml"), "--set", "train.device=cuda"])
    err = capsys.readouterr().err
    assert "train.device is cuda but no GPU is visible: timing on the CPU" in err and "timing bench-small" in err
