"""The GPU path checked end to end on one device:  bash experiments/gpu_check.sh [--device cuda] [--out FILE]

Three parts, each writing one JSON line per measurement to stdout and, with --out, to
that file (appended as it goes, so a run cut short keeps what it measured):

1. `equality`: the fused attention (model/fused_attention.py) against the banded one
   (model/attention.py, the reference) in fp32 on the device, for every variant, without
   and with adaptive span (and trimming), with a random cache: the largest difference of
   the per-token losses and of every parameter's gradient, relative to the largest
   gradient. Passes within EQUALITY_TOLERANCE.
2. `bf16_training`: every variant trains `--steps` updates (50 by default) of the
   trainer's own step (experiments/train_step.py) in `train.precision: bf16` with the
   device's attention (`auto`: fused on CUDA, banded on CPU) on a learnable synthetic
   stream; passes when every loss is finite (and, from 20 updates on, the last is below
   the first).
3. `throughput`: tokens/s and peak memory (experiments/benchmark.py) of banded fp32,
   fused fp32 and fused bf16 at the enwik8-small geometry (experiments/paper/enwik8_small.yaml:
   18 layers, d 512, span 8192, N 1024, block 512, dropout 0.3) with every head's span at the full
   8192 (z = 1, nothing trimmed: the cost the spans may grow to), the batch shrunk to
   `--batch` rows to fit one GPU; then a `targets` line: fused bf16 against banded fp32
   (the issue's targets: >= 3x the tokens/s, <= 1/4 of the peak memory).
   On CUDA a `host_syncs` line counts the syncs of one training step
   (torch.cuda.set_sync_debug_mode).

`--small` shrinks every shape (and the throughput geometry) so that the whole check runs
on a CPU in seconds: tests/test_gpu_check.py runs `--device cpu --small` so that this
script cannot rot. On a single GPU the full check takes a few minutes (budget: 8).
Exit status 1 when a check fails.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from experiments.benchmark import benchmark, machine
from experiments import strict_json
from experiments.cli import ArgumentParser, at_least, output_file, run_cli
from experiments.config import read_yaml_file
from experiments.distributed import DistContext, resolve_device
from experiments.run_config import RunConfig, run_config_from_dict
from experiments.run_dir import PROJECT_ROOT
from experiments.train_config import MAX_THREADS, threads_flag
from experiments.train_state import TrainState
from experiments.train_step import TrainStep, apply_precision
from model import build_model
from model.config import VARIANTS

EQUALITY_TOLERANCE = {"loss": 1e-4, "grad": 1e-3}
"""fp32, fused vs banded: largest |difference| of the per-token losses (nats), and of any
gradient entry over the largest |gradient| of that parameter. The two sum the same terms in
different orders (SDPA's kernels vs the banded chunks), so they agree to fp32 rounding
(~1e-6 relative) times the depth and length of the sums; 1e-4 / 1e-3 leave a wide margin
while any error of the math (a band off by one, a missing position term) is O(1)."""

VARIANT_FIELDS = {
    "transformer": {"ffn_size": 64},
    "all_attention": {"num_persistent": 16},
    "attention_only": {},
    "attn_split": {"num_persistent": 16},
    "head_split": {"num_persistent": 16},
    "single_head": {"num_persistent": 16},
    "ffn_attn": {"num_persistent": 16},
}
"""The fields each variant needs beyond the common ones (N for the persistent variants, F for the transformer)."""

ENWIK8_SMALL = PROJECT_ROOT / "experiments" / "paper" / "enwik8_small.yaml"


class Report:
    """Writes each measurement as one JSON line to stdout and to the --out file; counts failures."""

    def __init__(self, out: Path | None):
        self.out, self.failed = out, 0
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, record: dict[str, Any]) -> None:
        if record.get("ok") is False:
            self.failed += 1
        line = strict_json.dumps(record)
        print(line, flush=True)
        if self.out is not None:
            with self.out.open("a", encoding="utf-8") as f:
                f.write(line + "\n")


def run_config(model: dict[str, Any], train: dict[str, Any], device: torch.device) -> RunConfig:
    """A run config for random or synthetic tokens (the data section is never read)."""
    return run_config_from_dict({
        "name": "gpu-check", "model": model, "data": {"dataset": "lexicon", "path": "unused"},
        "optim": {"name": "adagrad", "lr": 0.07, "clip": 0.03, "warmup_steps": 5},
        "train": {"steps": 1, "device": device.type, **train}})


def small_model(variant: str, span: bool, dropout: float = 0.0, width: int = 64, attn_span: int = 64) -> dict:
    fields = {"variant": variant, "vocab_size": 32, "num_layers": 2, "d_model": width, "num_heads": 4,
              "attn_span": attn_span, "dropout": dropout, **VARIANT_FIELDS[variant]}
    if span:
        fields["adaptive_span"] = {"enabled": True, "loss_coef": 1e-4, "ramp": 8, "init": 0.3, "trim_memory": True}
    return fields


# ------------------------------------------------------------------------------------------ 1. equality

def equality(variant: str, span: bool, device: torch.device, small: bool) -> dict[str, Any]:
    """Losses and gradients of the fused and the banded attention from the same weights and cache (fp32)."""
    apply_precision("fp32")
    width, attn_span, block, batch = (16, 24, 8, 2) if small else (64, 160, 64, 4)
    fields = small_model(variant, span, width=width, attn_span=attn_span)
    cfg = run_config(fields, {"block_size": block, "batch_size": batch}, device).model
    torch.manual_seed(0)
    banded = build_model(dataclasses.replace(cfg, attention="banded")).to(device)
    if span:
        with torch.no_grad():  # distinct spans per head, with ones, a ramp and zeros inside the window
            for layer in banded.layers:
                layer.attn.span.z.uniform_(0.05, 0.6)
    fused = build_model(dataclasses.replace(cfg, attention="fused")).to(device)
    fused.load_state_dict(banded.state_dict())
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(cfg.vocab_size, (batch, block + 1), generator=gen).to(device)
    cache_len = attn_span
    cache = [torch.randn(batch, cache_len, cfg.d_model, generator=gen).to(device) for _ in range(cfg.num_layers)]
    results = []
    for model in (banded, fused):
        model.train()
        nll, _ = model(tokens[:, :-1], [c.clone() for c in cache], tokens[:, 1:])
        (nll.sum() + model.span_loss()).backward()
        results.append((nll.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (nll_b, grads_b), (nll_f, grads_f) = results
    loss_diff = (nll_b - nll_f).abs().max().item()
    grad_diff = max(((grads_b[n] - grads_f[n]).abs().max() / grads_b[n].abs().max().clamp_min(1e-30)).item()
                    for n in grads_b)
    ok = loss_diff <= EQUALITY_TOLERANCE["loss"] and grad_diff <= EQUALITY_TOLERANCE["grad"]
    return {"check": "equality", "variant": variant, "adaptive_span": span, "precision": "fp32",
            "max_loss_diff": loss_diff, "max_rel_grad_diff": grad_diff, "tolerance": EQUALITY_TOLERANCE, "ok": ok}


# ------------------------------------------------------------------------------------- 2. bf16 training

def synthetic_stream(vocab: int, length: int, seed: int = 0) -> np.ndarray:
    """A learnable stream: a fixed random sequence of 64 symbols repeated, 5% of the tokens random."""
    gen = np.random.default_rng(seed)
    motif = gen.integers(0, vocab, size=64)
    stream = np.resize(motif, length)
    noise = gen.random(length) < 0.05
    stream[noise] = gen.integers(0, vocab, size=int(noise.sum()))
    return stream.astype(np.int64)


def bf16_training(variant: str, device: torch.device, steps: int, small: bool) -> dict[str, Any]:
    width, attn_span, block, batch = (16, 16, 8, 2) if small else (256, 256, 128, 8)
    cfg = run_config(small_model(variant, span=variant == "all_attention", dropout=0.1, width=width,
                                 attn_span=attn_span),
                     {"block_size": block, "batch_size": batch, "precision": "bf16"}, device)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    update = TrainStep(cfg, model, synthetic_stream(cfg.model.vocab_size, batch * (block * (steps + 2) + 1)),
                       DistContext(rank=0, world_size=1, device=device))
    state, losses = TrainState(), []
    started = time.perf_counter()
    for _ in range(steps):
        losses.append(update(state, 1.0))
    values = torch.stack(losses).tolist()  # the only read: after the last step
    seconds = time.perf_counter() - started
    finite = all(math.isfinite(v) for v in values)
    learned = values[-1] < values[0]
    ok = finite and (learned or steps < 20)
    return {"check": "bf16_training", "variant": variant, "precision": "bf16",
            "attention": "fused" if device.type == "cuda" else "banded", "steps": steps,
            "loss_first": values[0], "loss_last": values[-1], "finite": finite, "learned": learned,
            "tokens_per_s": steps * batch * block / seconds, "ok": ok}


def host_syncs(device: torch.device, span: bool) -> dict[str, Any]:
    """Syncs of one training step after two warm-up steps (CUDA only), counted by torch's sync debug mode."""
    cfg = run_config(small_model("all_attention", span=span, width=256, attn_span=256),
                     {"block_size": 128, "batch_size": 8, "precision": "bf16"}, device)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    update = TrainStep(cfg, model, synthetic_stream(cfg.model.vocab_size, 8 * (128 * 6 + 1)),
                       DistContext(rank=0, world_size=1, device=device))
    state = TrainState()
    for _ in range(2):
        update(state, 1.0)
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            update(state, 1.0)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
    expected = 1 if span else 0  # the spans decided once per update (TransformerLM.decide_spans)
    return {"check": "host_syncs", "adaptive_span": span, "syncs_per_step": len(syncs), "expected": expected,
            "first": syncs[:3], "ok": len(syncs) <= expected}


# ---------------------------------------------------------------------------------------- 3. throughput

def enwik8_small(batch: int, small: bool, device: torch.device) -> dict[str, Any]:
    """enwik8_small.yaml's model (its dropout 0.3 included) and step at `batch` rows, every span at
    the full L (z = 1)."""
    data = read_yaml_file(ENWIK8_SMALL)
    model = dict(data["model"])
    model["adaptive_span"] = {**model["adaptive_span"], "init": 1.0}
    train = {"block_size": data["train"]["block_size"], "batch_size": batch}
    if small:
        model.update(num_layers=2, d_model=32, num_heads=4, num_persistent=16, attn_span=128)
        model["adaptive_span"]["ramp"] = 8
        train["block_size"] = 16
    return {"model": model, "train": train}


def throughput(device: torch.device, batch: int, steps: int, small: bool, report: Report) -> None:
    geometry = enwik8_small(batch, small, device)
    measured = {}
    for attention, precision in (("banded", "fp32"), ("fused", "fp32"), ("fused", "bf16")):
        cfg = run_config({**geometry["model"], "attention": attention},
                         {**geometry["train"], "precision": precision}, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        try:
            result = benchmark(cfg, device, steps, warmup=1)
        except torch.OutOfMemoryError as err:  # noqa: PERF203 - one measurement each
            report({"check": "throughput", "attention": attention, "precision": precision, "batch_size": batch,
                    "error": f"out of memory: {str(err).splitlines()[0]}", "ok": False})
            continue
        measured[(attention, precision)] = result
        report({"check": "throughput", "geometry": "enwik8_small" + (" (small)" if small else ""), **result,
                "ok": math.isfinite(result["last_loss"])})
    base, best = measured.get(("banded", "fp32")), measured.get(("fused", "bf16"))
    if base and best:
        speed = best["tokens_per_s"] / base["tokens_per_s"]
        memory = best["peak_memory_mb"] / base["peak_memory_mb"]
        report({"check": "targets", "fused_bf16_vs_banded_fp32_tokens_per_s": speed,
                "fused_bf16_vs_banded_fp32_peak_memory": memory, "memory_source": best["memory_source"],
                "target_speed": 3.0, "target_memory": 0.25,
                "meets_targets": speed >= 3.0 and memory <= 0.25 if device.type == "cuda" else None})


# ----------------------------------------------------------------------------------------------- command

def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="bash experiments/gpu_check.sh", description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--small", action="store_true", help="small shapes (a CPU runs the check in seconds)")
    parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    parser.add_argument("--steps", type=at_least(1), help="bf16 training updates per variant (default 50; 3 with --small)")
    parser.add_argument("--batch", type=at_least(1), default=4, help="rows of the enwik8-small throughput step (default 4)")
    parser.add_argument("--threads", type=threads_flag, default=0,
                        help=f"torch CPU threads, at most {MAX_THREADS} (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device, 0)
    steps = args.steps or (3 if args.small else 50)
    report = Report(output_file(args.out, "--out"))
    started = time.perf_counter()
    report({"check": "machine", "device": machine(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "small": args.small, "time": time.time()})
    for variant in VARIANTS:
        for span in (False, True):
            report(equality(variant, span, device, args.small))
    for variant in VARIANTS:
        report(bf16_training(variant, device, steps, args.small))
    if device.type == "cuda":
        for span in (False, True):
            report(host_syncs(device, span))
    throughput(device, args.batch if not args.small else 2, 2 if args.small else 3, args.small, report)
    failed = report.failed
    report({"check": "done", "failed": failed, "seconds": time.perf_counter() - started})
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(main)
