"""Training: run directory, exact resume after SIGKILL/SIGTERM, accumulation, failure."""
from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.metrics import read_metrics
from experiments import checkpoint, memory_check, train
from experiments.cli import run_cli
from experiments.summary import state_bytes
from experiments.distributed import DistContext
from experiments.run_config import load_run_config
from experiments.run_dir import RunDir
from experiments.trainer import Trainer
from experiments.data import load_corpus
from tests.conftest import PROJECT_ROOT
from tests.helpers import prepare_lexicon, tiny_config

CPU = DistContext(rank=0, world_size=1, device=torch.device("cpu"))
DETERMINISTIC = ("step", "tokens", "split", "loss", "bpc", "lr", "span_mean", "span_max")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return prepare_lexicon(tmp_path_factory.mktemp("lexicon") / "lexicon")


def train_cmd(config: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "experiments.train", str(config), "--run-dir", str(run_dir)]


def run_train(config: Path, run_dir: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(config, run_dir), cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300, **kwargs)


def final_state(run_dir: Path) -> dict:
    newest = checkpoint.complete_checkpoints(run_dir / "checkpoints")[0]
    return torch.load(newest / "shared.pt", weights_only=True)


def deterministic_metrics(run_dir: Path) -> list[dict]:
    return [{k: r.get(k) for k in DETERMINISTIC} for r in read_metrics(run_dir / "metrics.jsonl")]


def assert_identical_runs(a: Path, b: Path) -> None:
    sa, sb = final_state(a), final_state(b)
    assert sa["state"]["step"] == sb["state"]["step"]
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    for pid, state in sa["optimizer"]["state"].items():
        assert torch.equal(state["sum"], sb["optimizer"]["state"][pid]["sum"])
    assert deterministic_metrics(a) == deterministic_metrics(b)
    ea, eb = json.loads((a / "eval.json").read_text()), json.loads((b / "eval.json").read_text())
    assert ea["valid"] == eb["valid"] and ea["test"] == eb["test"]


@pytest.fixture(scope="module")
def reference_run(corpus, tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("reference")
    config = tiny_config(tmp, corpus, train={"steps": 20, "finetune_steps": 4})
    run_dir = tmp / "run"
    proc = run_train(config, run_dir)
    assert proc.returncode == 0, proc.stderr
    return config, run_dir


def test_run_directory_contents(reference_run):
    _, run_dir = reference_run
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "DONE" and status["step"] == 24 and status["attempt"] == 1
    records = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 25))
    assert {"step", "tokens", "split", "loss", "bpc", "lr", "ms_per_step", "tokens_per_s", "span_mean",
            "span_max", "attempt", "time"} <= set(train[0])
    assert train[0]["lr"] == pytest.approx(0.07 / 3) and train[-1]["lr"] == pytest.approx(0.007)
    assert [r["step"] for r in records if r["split"] == "val_partial"] == [6, 12, 18, 24]
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["unit"] == "bpc" and result["valid"]["tokens"] > 0 and result["params_total"] > 0
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert {"git_sha", "python", "torch", "host", "command"} <= set(provenance)
    assert len(checkpoint.complete_checkpoints(run_dir / "checkpoints")) == 2
    assert (run_dir / "config.yaml").exists()


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
        if any(r["split"] == "train" and r["step"] >= step for r in records):
            return
        time.sleep(0.01)
    raise AssertionError(f"training never reached step {step}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_and_resumed_run_is_bit_identical(reference_run, tmp_path, sig):
    config, reference = reference_run
    run_dir = tmp_path / "run"
    kill_at = random.Random(sig).randint(2, 20)
    proc = subprocess.Popen(train_cmd(config, run_dir), cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_step(run_dir, kill_at, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode != 0:  # a fast machine may finish first; otherwise the signal must have acted
        assert proc.returncode == -sig if sig == signal.SIGKILL else 128 + sig, stderr
    if sig == signal.SIGTERM and proc.returncode == 128 + sig:
        status = json.loads((run_dir / "status.json").read_text())
        assert status["state"] == "PENDING" and "SIGTERM" in stderr
    resumed = run_train(config, run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_identical_runs(reference, run_dir)


def test_corrupted_newest_checkpoint_is_skipped(reference_run, tmp_path):
    config, reference = reference_run
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(config, run_dir), cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for_step(run_dir, 13, proc)  # checkpoints at steps 8 and 12 exist by now
    proc.kill()
    proc.wait()
    newest = checkpoint.complete_checkpoints(run_dir / "checkpoints")[0]
    (newest / "shared.pt").write_bytes(b"garbage")
    resumed = run_train(config, run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert "skipping unreadable checkpoint" in resumed.stderr
    assert_identical_runs(reference, run_dir)


def _trainer(config: Path, run_dir: Path, *overrides: str) -> Trainer:
    cfg = load_run_config(config, overrides)
    return Trainer(cfg, RunDir(run_dir), load_corpus(cfg.data.path), CPU)


def test_batch_split_equals_unsplit_batch(corpus, tmp_path):
    config = tiny_config(tmp_path, corpus, model={"dropout": 0.0})
    whole = _trainer(config, tmp_path / "a")
    split = _trainer(config, tmp_path / "b", "train.batch_split=2")
    for _ in range(5):
        loss_whole, loss_split = whole.train_step(1.0), split.train_step(1.0)
        assert loss_whole == pytest.approx(loss_split, abs=1e-6)
    for (name, p), q in zip(whole.model.named_parameters(), split.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)


def test_non_finite_loss_fails_the_run_and_keeps_the_last_checkpoint(corpus, tmp_path):
    config = tiny_config(tmp_path, corpus, train={"steps": 12})
    trainer = _trainer(config, tmp_path / "run")
    trainer.run_dir.path.mkdir(parents=True)
    original = trainer.model.forward

    def poisoned(tokens, cache, targets, spans=None):
        nll, cache = original(tokens, cache, targets, spans)
        return (nll * float("nan") if trainer.state.step >= 5 else nll), cache

    trainer.model.forward = poisoned
    from experiments.train_step import NonFiniteLoss
    with pytest.raises(NonFiniteLoss, match="non-finite training loss"):
        trainer.run()
    assert [p.name for p in checkpoint.complete_checkpoints(trainer.run_dir.checkpoints)] == ["step_000000004"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(corpus, tmp_path):
    config = tiny_config(tmp_path, corpus, model={"dropout": 0.0}, train={"steps": 20, "eval_every": 10})
    single = run_train(config, tmp_path / "single")
    assert single.returncode == 0, single.stderr
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo"}
        procs.append(subprocess.Popen(train_cmd(config, tmp_path / "ddp"), cwd=PROJECT_ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    one, two = read_metrics(tmp_path / "single" / "metrics.jsonl"), read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    assert [(r["split"], r["step"]) for r in one] == [(r["split"], r["step"]) for r in two]
    assert len([r for r in two if r["split"] == "train"]) == 20
    for a, b in zip(one, two):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert sorted(p.name for p in checkpoint.complete_checkpoints(tmp_path / "ddp" / "checkpoints")[0].iterdir()) \
        == ["rank_0.pt", "rank_1.pt", "shared.pt"]


def test_learning_on_wikitext2_characters(shared_data, tmp_path):
    """A short real run lowers val_partial bpc at each of its first evaluations."""
    from experiments import data

    prepared = tmp_path / "wt2-char"
    data.main(["prepare", "text", "--source", str(shared_data / "wikitext-2"), "--level", "char", "--out", str(prepared)])
    config = tiny_config(tmp_path, prepared, model={"d_model": 32, "num_heads": 4, "num_persistent": 32,
                                                     "attn_span": 32, "dropout": 0.0},
                         optim={"name": "adam", "lr": 3e-3, "clip": 1.0, "clip_mode": "global", "warmup_steps": 10},
                         train={"steps": 120, "block_size": 32, "batch_size": 8, "eval_every": 30,
                                "checkpoint_every": 1000, "log_every": 30, "val_fraction": 0.002})
    proc = run_train(config, tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    val = [r["bpc"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["split"] == "val_partial"]
    assert len(val) == 4 and all(b < a for a, b in zip(val, val[1:])), val


def _reference_nll(config: Path, ckpt: Path, tokens: np.ndarray, rows: int) -> tuple[float, int]:
    """The authors' full-evaluation batching, written out: `rows` contiguous rows, blocks of
    block_size, caches from zeros, the last incomplete block dropped."""
    from experiments.evaluate import load_model_weights
    from experiments.run_config import load_run_config
    from model import build_model

    cfg = load_run_config(config)
    model = build_model(cfg.model).eval()
    model.load_state_dict(load_model_weights(ckpt))
    block, per_row = cfg.train.block_size, len(tokens) // rows
    cache, total, count = model.init_cache(rows, device=torch.device("cpu")), 0.0, 0
    grid = np.stack([tokens[r * per_row : (r + 1) * per_row] for r in range(rows)])
    with torch.no_grad():
        for start in range(0, per_row - block, block):  # a block needs block + 1 tokens
            chunk = torch.as_tensor(grid[:, start : start + block + 1], dtype=torch.long)
            nll, cache = model(chunk[:, :-1], cache, chunk[:, 1:])
            total, count = total + nll.sum().item(), count + nll.numel()
    return total / count, count


def test_evaluate_command_on_splits_and_on_a_text_file(reference_run, corpus, tmp_path):
    from experiments.data import encode_text, load_corpus

    config, run_dir = reference_run
    ckpt = checkpoint.complete_checkpoints(run_dir / "checkpoints")[-1]
    text = tmp_path / "sample.txt"
    text.write_bytes(b"the cat sat on the mat " * 40)  # lexicon symbols: a-z and space
    cmd = [sys.executable, "-m", "experiments.evaluate", str(config), "--checkpoint", str(ckpt), "--batch-size", "3"]
    for extra, split in (([], "valid"), (["--text", str(text)], "text")):
        proc = subprocess.run(cmd + extra, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        record = next(json.loads(line) for line in proc.stdout.splitlines() if json.loads(line)["split"] == split)
        tokens = load_corpus(corpus).split("valid") if split == "valid" else encode_text(text, load_corpus(corpus).meta)
        loss, count = _reference_nll(config, ckpt, np.asarray(tokens), rows=3)
        assert record["tokens"] == count and record["loss"] == pytest.approx(loss, rel=1e-5)
        assert record["bpc"] == pytest.approx(loss / math.log(2), rel=1e-6)
    bad = subprocess.run(cmd[:-2] + ["--checkpoint", str(tmp_path / "missing")], cwd=PROJECT_ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "checkpoint not found" in bad.stderr


def test_signal_during_the_final_evaluation_stops_and_the_next_attempt_redoes_it(corpus, tmp_path):
    """A full evaluation can outlast a job's time limit: the signal must not be swallowed."""
    config = tiny_config(tmp_path, corpus, train={"steps": 8}, eval={"max_tokens": None})
    _trainer(config, tmp_path / "whole").run()

    interrupted = _trainer(config, tmp_path / "cut")
    set_status = interrupted._set_status

    def signal_when_evaluating(state: str, stage: str) -> None:
        set_status(state, stage)
        if stage == "eval":
            interrupted.interrupt.signum = signal.SIGTERM  # as the handler would record it

    interrupted._set_status = signal_when_evaluating
    interrupted.run()
    assert interrupted.interrupt.stopped_by == signal.SIGTERM
    status = RunDir(tmp_path / "cut").read_status()
    assert (status["state"], status["stage"]) == ("PENDING", "eval") and not (tmp_path / "cut" / "eval.json").exists()

    _trainer(config, tmp_path / "cut").run()
    assert RunDir(tmp_path / "cut").read_status()["state"] == "DONE"
    whole, cut = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("whole", "cut"))
    assert whole["valid"] == cut["valid"] and whole["test"] == cut["test"]


# ------------------------------------------------- the GPU training path (issue 9): DDP, host syncs, compile

def test_two_gloo_processes_with_split_batches_match_one_process_and_stop_together(corpus, tmp_path):
    """DistributedDataParallel with no_sync over batch_split micro-batches (adaptive span on: its z
    gets gradients from the forward through DDP and from the span penalty outside it); SIGTERM
    to both ranks stops them at the same multiple of SIGNAL_EVERY; the checkpoint (the module's
    state, no "module." prefix) resumes both to the end, matching one unsplit process."""
    from experiments.trainer import SIGNAL_EVERY

    model = {"dropout": 0.0, "adaptive_span": {"enabled": True, "loss_coef": 1e-2, "ramp": 4, "init": 0.5}}
    config = tiny_config(tmp_path, corpus, model=model,
                         train={"steps": 30, "eval_every": 1000, "checkpoint_every": 1000})
    split = tiny_config(tmp_path, corpus, model=model,
                        train={"steps": 30, "eval_every": 1000, "checkpoint_every": 1000, "batch_split": 2})
    single = run_train(config, tmp_path / "single")
    assert single.returncode == 0, single.stderr

    def launch() -> list[subprocess.Popen]:
        port, procs = _free_port(), []
        for rank in range(2):
            env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo"}
            procs.append(subprocess.Popen(train_cmd(split, tmp_path / "ddp"), cwd=PROJECT_ROOT, env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        return procs

    procs = launch()
    _wait_for_step(tmp_path / "ddp", 3, procs[0])
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    stderrs = [proc.communicate(timeout=300)[1] for proc in procs]
    codes = [(proc.returncode, stderr) for proc, stderr in zip(procs, stderrs)]
    stopped = json.loads((tmp_path / "ddp" / "status.json").read_text())["step"]
    if stopped < 30:  # a slow start may let the run reach its end first
        assert [code for code, _ in codes] == [143, 143], codes
        assert stopped % SIGNAL_EVERY == 0
    shared = final_state(tmp_path / "ddp")
    assert list(shared["model"]) == list(final_state(tmp_path / "single")["model"])  # no "module." prefix
    resumed = launch()
    deadline = time.time() + 300  # both ranks watched at once: when one hangs, the other's exit and stderr are shown
    while time.time() < deadline and any(proc.poll() is None for proc in resumed):
        time.sleep(0.5)
    hung = [proc.poll() is None for proc in resumed]
    for proc in resumed:
        if proc.poll() is None:
            proc.kill()
    outcome = [(rank, proc.wait(), "hung" if stuck else "", proc.communicate()[1][-3000:])
               for rank, (proc, stuck) in enumerate(zip(resumed, hung))]
    assert not any(hung) and all(code == 0 for _, code, _, _ in outcome), outcome
    one, two = read_metrics(tmp_path / "single" / "metrics.jsonl"), read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    assert [r["step"] for r in one if r["split"] == "train"] == [r["step"] for r in two if r["split"] == "train"]
    for a, b in zip(one, two):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


@pytest.mark.parametrize("output", ["softmax", "adaptive"])
@pytest.mark.parametrize("span", [False, True])
def test_every_parameter_gets_a_gradient_in_every_variant(output, span):
    """Why DDP runs without find_unused_parameters: no parameter is ever left without a gradient
    (adaptive span z through the mask, an absent adaptive-output cluster through its zero touch)."""
    from tests.model_helpers import VARIANTS, make_model, random_cache, random_tokens

    extra = ({"output": "adaptive", "adaptive_cutoffs": [4, 8], "adaptive_div_value": 2.0}
             if output == "adaptive" else {})
    for variant in VARIANTS:
        model = make_model(variant, span=span, trim=span, **extra).train()
        tokens, targets = random_tokens(model, 2, 4)
        targets = torch.zeros_like(targets)  # one cluster only: the tail clusters are absent
        nll, _ = model(tokens, random_cache(model, 2), targets)
        (nll.sum() + model.span_loss()).backward()
        assert [n for n, p in model.named_parameters() if p.grad is None] == [], variant


class _HostReads:
    """Counts the Python-level reads of tensor values on the host (each a sync on CUDA)."""

    NAMES = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy")

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _name=name, _original=original, **kwargs):
                self.calls.append(_name)
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("span, reads", [(False, 0), (True, 1)])
def test_a_training_step_reads_nothing_on_the_host_but_the_trimmed_spans(corpus, tmp_path, monkeypatch, span, reads):
    """Per update: no read without adaptive-span trimming; with it, one (every layer's span at once)."""
    model = {"dropout": 0.1}
    if span:
        model["adaptive_span"] = {"enabled": True, "loss_coef": 1e-3, "ramp": 4, "trim_memory": True}
    config = tiny_config(tmp_path, corpus, model=model, train={"batch_split": 2})
    trainer = _trainer(config, tmp_path / "run")
    trainer.train_step(1.0)
    counter = _HostReads(monkeypatch)
    losses = [trainer.train_step(1.0) for _ in range(3)]
    assert counter.calls.count("tolist") == 3 * reads and len(counter.calls) == 3 * reads, counter.calls
    assert all(torch.is_tensor(loss) and loss.dim() == 0 for loss in losses)


def test_a_nan_is_found_when_the_losses_are_read_and_no_checkpoint_follows_it(corpus, tmp_path):
    """log_every 5, checkpoint_every 4: a NaN at update 7 is found when the checkpoint of update 8
    reads the losses (before writing), named as update 7; the checkpoint of update 4 is the last."""
    from experiments.train_step import NonFiniteLoss

    config = tiny_config(tmp_path, corpus, train={"steps": 20, "log_every": 5, "checkpoint_every": 4})
    trainer = _trainer(config, tmp_path / "run")
    trainer.run_dir.path.mkdir(parents=True)
    original = trainer.model.forward

    def poisoned(tokens, cache, targets, spans=None):
        nll, cache = original(tokens, cache, targets, spans)
        return (nll * float("nan") if trainer.state.step == 6 else nll), cache

    trainer.model.forward = poisoned
    with pytest.raises(NonFiniteLoss, match="at step 7 .read at step 8"):
        trainer.run()
    assert [p.name for p in checkpoint.complete_checkpoints(trainer.run_dir.checkpoints)] == ["step_000000004"]


def test_compiled_training_matches_eager(corpus, tmp_path):
    """train.compile: 3 updates through torch.compile equal eager ones to float rounding (1e-5 nats:
    the compiled kernels fuse and reorder the same fp32 arithmetic). Slow the first time on a
    cold machine (inductor compiles C++ with gcc: about 1-2 min on 2 cores; cached afterwards)."""
    for attention in ("fused", "banded"):  # banded: its autograd Function runs eagerly inside the graph
        config = tiny_config(tmp_path, corpus, model={"dropout": 0.0, "attention": attention})
        eager, compiled = _trainer(config, tmp_path / f"e-{attention}"), _trainer(config, tmp_path / f"c-{attention}",
                                                                              "train.compile=true")
        for _ in range(3):
            a, b = eager.train_step(1.0), compiled.train_step(1.0)
            assert float(a) == pytest.approx(float(b), abs=1e-5)
        for (name, p), q in zip(eager.model.named_parameters(), compiled.model.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-5, msg=name)


def _strict_json(line: str) -> dict:
    """json.loads that refuses NaN and Infinity, as strict JSON readers (jq, JavaScript) do."""
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(line, parse_constant=refuse)


def test_evaluate_on_damaged_weights_or_hash_writes_strict_json_or_refuses(reference_run, tmp_path):
    """NaN weights printed "loss": NaN (not JSON); a config hash that is not a string (5) was read as
    no hash, so a damaged file evaluated as matching the config (`config_mismatch: false`)."""
    config, run_dir = reference_run
    shared = torch.load(checkpoint.complete_checkpoints(run_dir / "checkpoints")[-1] / "shared.pt", weights_only=True)
    broken = {name: torch.full_like(value, float("nan")) if value.is_floating_point() else value
              for name, value in shared["model"].items()}
    nan_file, hash_file = tmp_path / "nan.pt", tmp_path / "hash.pt"
    torch.save({**shared, "model": broken}, nan_file)
    torch.save({**shared, "config_hash": 5}, hash_file)
    cmd = [sys.executable, "-m", "experiments.evaluate", str(config), "--batch-size", "2", "--max-tokens", "64",
           "--checkpoint"]
    proc = subprocess.run(cmd + [str(nan_file)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    records = [_strict_json(line) for line in proc.stdout.splitlines()]
    assert [(r["loss"], r["bpc"]) for r in records] == [(None, None)] * 2
    assert "valid: the loss is nan" in proc.stderr
    refused = subprocess.run(cmd + [str(hash_file)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "config hash 5 is not a hash" in refused.stderr


def test_records_are_strict_json_and_a_huge_perplexity_is_inf(tmp_path):
    """Every record writer (status, metrics, eval, attempts) goes through strict_json; math.exp
    raised OverflowError for a loss past 709.78 nats."""
    from experiments.evaluation import unit_value
    from experiments.run_dir import RunDir
    from slurm.job import ATTEMPTS_FILE, record_attempt

    assert unit_value(710.0, "ppl") == math.inf and unit_value(710.0, "bpc") == pytest.approx(710 / math.log(2))
    run = RunDir(tmp_path)
    run.path.mkdir(exist_ok=True)
    run.write_status("RUNNING", loss=float("nan"), spans=[1.0, float("inf")])
    run.append_metrics({"split": "train", "loss": float("-inf")})
    run.write_eval({"valid": {"loss": float("nan"), "ppl": math.inf}})
    record_attempt(tmp_path, 1, "started", 0, loss=float("nan"))
    status = _strict_json(run.status_file.read_text())
    assert status["loss"] is None and status["spans"] == [1.0, None]
    assert _strict_json(run.metrics.read_text())["loss"] is None
    assert _strict_json(run.eval_file.read_text()) == {"valid": {"loss": None, "ppl": None}}
    assert _strict_json((tmp_path / ATTEMPTS_FILE).read_text())["loss"] is None


def test_evaluate_command_takes_device_max_tokens_and_threads(reference_run, tmp_path):
    config, run_dir = reference_run
    ckpt = checkpoint.complete_checkpoints(run_dir / "checkpoints")[0]
    cmd = [sys.executable, "-m", "experiments.evaluate", str(config), "--checkpoint", str(ckpt), "--batch-size", "2",
           "--device", "cpu", "--max-tokens", "64", "--threads", "1"]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["split"] for r in records] == ["valid", "test"]
    assert all(r["tokens"] == 64 and r["full"] is False for r in records)  # 64 // (2 x 8) = 4 blocks of 2 x 8
    # A cap larger than the split leaves nothing out: the evaluation is full.
    uncapped = subprocess.run(cmd[:cmd.index("--max-tokens") + 1] + ["1000000000"] + cmd[cmd.index("--threads"):],
                              cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert uncapped.returncode == 0, uncapped.stderr
    assert all(json.loads(line)["full"] is True for line in uncapped.stdout.splitlines())
    bad = subprocess.run(cmd[:-2] + ["--threads", "-1"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--threads" in bad.stderr


def test_training_state_larger_than_the_memory_available_is_one_line_before_the_run_dir(tmp_path, corpus, capsys,
                                                                                         monkeypatch):
    """A valid config whose weights, gradients and optimizer state cannot fit is refused before
    anything is written (it used to fail at its first allocation, after the run directory)."""
    config = tiny_config(tmp_path, corpus)
    need = state_bytes(load_run_config(config))
    monkeypatch.setattr(memory_check, "available_bytes", lambda device: (need - 1, "a test's figure"))
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit:
        run_cli(train.main, [str(config), "--run-dir", str(run_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2 and len(err) == 1 and "more than the" in err[0] and "a test's figure" in err[0], err
    assert not run_dir.exists()
    monkeypatch.setattr(memory_check, "available_bytes", lambda device: (need, "a test's figure"))
    # exactly enough for the state: no error, a warning for the activations on top
    assert "activations" in memory_check.check_memory(load_run_config(config), torch.device("cpu"), 1)


def test_state_and_activations_beyond_the_memory_warn_in_train_and_stop_the_benchmark(tmp_path, corpus, capsys,
                                                                                          monkeypatch):
    """`benchmark --steps 1` on a paper config on a CPU machine was killed for memory after a
    minute (a global OOM kill), with no word: the preflight counted the training state only."""
    from experiments import benchmark
    from model.summary import activation_bytes

    cfg = load_run_config(tiny_config(tmp_path, corpus), ["train.batch_split=2"])
    state = state_bytes(cfg)
    rows = cfg.train.batch_size // 2 // 2  # two processes share the batch, each in two micro-batches
    enough = state + activation_bytes(cfg.model, rows, cfg.train.block_size, "banded")
    for free, warned in ((enough - 1, True), (enough, False)):
        monkeypatch.setattr(memory_check, "available_bytes", lambda device: (free, "a test's figure"))
        warning = memory_check.check_memory(cfg, torch.device("cpu"), 2)
        assert (warning is not None) is warned and (not warned or f"micro-batch of {rows} rows" in warning)
    # The fused attention keeps no probabilities, but its bias of their size: it was exempt from the estimate.
    fused = load_run_config(tiny_config(tmp_path, corpus), ["model.attention=fused"])
    kept = activation_bytes(fused.model, fused.train.batch_size, fused.train.block_size, "fused")
    assert kept < activation_bytes(fused.model, fused.train.batch_size, fused.train.block_size, "banded")
    for free, warned in ((state_bytes(fused) + kept - 1, True), (state_bytes(fused) + kept, False)):
        monkeypatch.setattr(memory_check, "available_bytes", lambda device: (free, "a test's figure"))
        assert (memory_check.check_memory(fused, torch.device("cpu"), 1) is not None) is warned
    monkeypatch.setattr(memory_check, "available_bytes", lambda device: (state, "a test's figure"))
    with pytest.raises(SystemExit) as exit:
        run_cli(benchmark.main, [str(tiny_config(tmp_path, corpus)), "--steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2 and len(err) == 1 and err[0].startswith("error: not timed: the training state"), err


def test_available_memory_is_read_on_this_machine():
    free, source = memory_check.available_bytes(torch.device("cpu"))
    assert free > 0 and source


def test_more_threads_than_cpus_is_warned(tmp_path, corpus, caplog):
    """train.threads: 1000 on 2 CPUs ran about 10x slower without a word (a fresh-user finding)."""
    cpus = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    try:
        for threads, warned in ((cpus + 1, True), (cpus, False)):
            caplog.clear()
            cfg = load_run_config(tiny_config(tmp_path, corpus), [f"train.threads={threads}"])
            train._preflight(cfg, DistContext(rank=0, world_size=1, device=torch.device("cpu")))
            assert ("threads will contend" in caplog.text) is warned, caplog.text
    finally:
        torch.set_num_threads(before)
