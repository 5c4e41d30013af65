"""Training throughput:  python -m experiments.benchmark CONFIG.yaml [--set k=v ...] [--steps N] [--json] [--csv FILE] [--profile]

Times the trainer's own update (experiments/train_step.py TrainStep: the run's
`train.precision`, `model.attention`, `train.batch_split` and `train.compile`, forward +
backward + clipping + optimizer step, the cache carried from block to block) on random
tokens, and reports tokens/s, peak memory, model FLOPs per token and
model-MFU = FLOPs/token x tokens/s / the matmul peak of the precision the step runs in
(fp32, TF32 or bf16), measured in the same process: a 2048^3 torch.mm in that dtype and
matmul precision, median of repeats, the larger of one median before and one after the
timed steps. Measuring the peak in the same run makes the ratio comparable across noisy
machines.

Before any step: the memory preflight of train (experiments/memory_check.py), and a line on stderr
naming the device (a GPU config runs on the CPU when no GPU is visible, and says so); a step
slower than SLOW_STEP_S is reported on stderr as it ends.

Peak memory: on CUDA the caching allocator's peak (`torch.cuda.max_memory_allocated`)
from the start of the timed steps (the model and optimizer state are in it); on CPU the
process's peak resident set size since it started (`ru_maxrss`), everything included.
"""
from __future__ import annotations

import csv
import io
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from experiments.atomic import atomic_write_text
from experiments import strict_json
from experiments.cli import ArgumentParser, at_least, output_file, run_cli
from experiments.config import config_files
from experiments.distributed import DistContext, resolve_device
from experiments.memory_check import check_memory
from experiments.run_config import RunConfig, load_run_config
from experiments.train_state import TrainState
from experiments.train_step import TrainStep, apply_precision
from model.errors import UserError
from model import build_model
from model.attention import PROJECTION
from model.summary import summarize

WARMUP_STEPS = 2
MATMUL_SIZE = 2048
MATMUL_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}
"""The dtype of the peak matmul for each train.precision (tf32: fp32 tensors on TF32 tensor cores)."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], None], repeats: int, device: torch.device, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(device: torch.device, precision: str = "fp32", repeats: int = 7) -> float:
    """The matmul peak of `precision` on `device`, GFLOP/s (sets the process's matmul precision)."""
    apply_precision(precision)
    dtype = MATMUL_DTYPES[precision]
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device, dtype=dtype)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device, dtype=dtype)
    seconds = median_seconds(lambda: torch.mm(a, b), repeats, device, warmup=2)
    return 2 * MATMUL_SIZE**3 / seconds / 1e9


def attention_used(cfg: RunConfig, device: torch.device) -> str:
    """The attention implementation a step runs (ModelConfig.attention_on)."""
    return cfg.model.attention_on(device.type)


def random_tokens(cfg: RunConfig, blocks: int) -> np.ndarray:
    """Random ids for `blocks` training blocks in every row, without a data restart."""
    gen = np.random.default_rng(cfg.train.seed)
    length = cfg.train.batch_size * (cfg.train.block_size * (blocks + 1) + 1)
    return gen.integers(0, cfg.model.vocab_size, size=length).astype(np.int64)


def new_step(cfg: RunConfig, device: torch.device, blocks: int) -> tuple[TrainStep, TrainState]:
    """The trainer's update on a freshly seeded model over `blocks` blocks of random tokens, and its state."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model).to(device)
    return TrainStep(cfg, model, random_tokens(cfg, blocks), DistContext(rank=0, world_size=1, device=device)), TrainState()


SLOW_STEP_S = 10.0
"""A step slower than this is reported on stderr as it ends (progress on a config too big for the machine)."""


def timed_steps(cfg: RunConfig, device: torch.device, steps: int, warmup: int = WARMUP_STEPS) -> dict[str, Any]:
    """Median seconds of the trainer's update and the peak memory around it."""
    update, state = new_step(cfg, device, steps + warmup)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    losses: list[torch.Tensor] = []

    def step() -> None:
        start = time.perf_counter()
        losses.append(update(state, 1.0))
        if time.perf_counter() - start > SLOW_STEP_S:
            print(f"  step {len(losses)} of {warmup + steps}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

    seconds = median_seconds(step, steps, device, warmup=warmup)
    return {"seconds": seconds, "peak_memory_mb": peak_memory_mb(device), "last_loss": losses[-1].item()}


OP_KINDS = (
    ("matmul", ("aten::mm", "aten::bmm", "aten::addmm", "aten::addmm_", "aten::baddbmm", "aten::baddbmm_")),
    ("softmax", ("aten::_softmax", "aten::_softmax_backward_data", "aten::_log_softmax", "aten::_log_softmax_backward_data")),
    ("layer norm", ("aten::native_layer_norm", "aten::native_layer_norm_backward")),
    ("copy, fill, cat", ("aten::copy_", "aten::cat", "aten::fill_", "aten::zero_", "aten::index_fill_", "aten::clone")),
)
STEP_PARTS = (("banded attention", "_BandedAttention"), ("K/V projection", PROJECTION), ("K/V projection", "_ContextProjection"),
              ("optimizer", "Optimizer."))
"""(part, event name prefix): an op counts in the part of its innermost named region."""


def profile_breakdown(cfg: RunConfig, device: torch.device, steps: int = 3, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Self CPU time of `steps` updates under torch.profiler, ms per step, by op kind and by
    part of the step (an op belongs to the part of its innermost enclosing region)."""
    update, state = new_step(cfg, device, steps + warmup)
    for _ in range(warmup):
        update(state, 1.0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            update(state, 1.0)
    kinds: dict[str, float] = {}
    parts: dict[str, float] = {}
    for event in prof.events():
        ms = event.self_cpu_time_total / 1000 / steps
        kinds[_op_kind(event.name)] = kinds.get(_op_kind(event.name), 0.0) + ms
        parts[_step_part(event)] = parts.get(_step_part(event), 0.0) + ms
    return {"by_op_kind": kinds, "by_part": parts}


def _op_kind(name: str) -> str:
    kind = next((kind for kind, ops in OP_KINDS if name in ops), None)
    return kind or ("other aten ops" if name.startswith("aten::") else "Python, autograd")


def _step_part(event) -> str:
    while event is not None:
        part = next((part for part, prefix in STEP_PARTS if event.name.startswith(prefix)), None)
        if part:
            return part
        event = event.cpu_parent
    return "rest of the model"


def print_breakdown(breakdown: dict[str, dict[str, float]]) -> None:
    for title, table in (("by op kind", breakdown["by_op_kind"]), ("by part of the step", breakdown["by_part"])):
        total = sum(table.values())
        cells = [f"{name} {ms:.1f} ({100 * ms / total:.0f}%)" for name, ms in sorted(table.items(), key=lambda kv: -kv[1])]
        print(f"  {title} (self CPU ms per step): " + ", ".join(cells))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        names = [l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def benchmark(cfg: RunConfig, device: torch.device, steps: int, warmup: int = WARMUP_STEPS) -> dict[str, Any]:
    """One benchmark record of `cfg`'s training step on `device`."""
    precision = cfg.train.precision
    # The peak is the larger of two medians, one before and one after the timed steps:
    # a momentarily slow machine must not lower the peak and so inflate the MFU.
    before = matmul_gflops(device, precision)
    timed = timed_steps(cfg, device, steps, warmup)
    peak = max(before, matmul_gflops(device, precision))
    tokens_per_s = cfg.train.batch_size * cfg.train.block_size / timed["seconds"]
    facts = summarize(cfg.model)
    return {"name": cfg.name, "variant": cfg.model.variant, "num_layers": cfg.model.num_layers,
            "d_model": cfg.model.d_model, "num_heads": cfg.model.num_heads, "attn_span": cfg.model.attn_span,
            "num_persistent": cfg.model.num_persistent, "tokens_per_s": tokens_per_s,
            "ms_per_step": 1000 * timed["seconds"], "flops_per_token": facts["flops_per_token"],
            "matmul_gflops": peak, "model_mfu": facts["flops_per_token"] * tokens_per_s / (peak * 1e9),
            "peak_memory_mb": timed["peak_memory_mb"],
            "memory_source": "cuda_allocator" if device.type == "cuda" else "process_peak_rss",
            "precision": precision, "attention": attention_used(cfg, device), "batch_size": cfg.train.batch_size,
            "block_size": cfg.train.block_size, "batch_split": cfg.train.batch_split, "compile": cfg.train.compile,
            "last_loss": timed["last_loss"], "device": machine(device), "torch": torch.__version__}


def append_csv(path: Path, row: dict[str, Any]) -> None:
    """Add `row` to the CSV at `path`; columns of earlier rows that `row` lacks are kept (blank for it)."""
    rows = list(csv.DictReader(path.open())) if path.exists() else []
    fields = list(row) + [k for k in (rows[0] if rows else {}) if k not in row]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows([{k: r.get(k, "") for k in fields} for r in rows] + [row])
    atomic_write_text(path, out.getvalue())


def bench_config(path: str, overrides: Sequence[str]) -> RunConfig:
    """A benchmark command's run config, its `train.threads` applied to this process.
    Raises UserError for a bad config or override."""
    cfg = load_run_config(path, list(overrides))
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m experiments.benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="run config YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--steps", type=at_least(1), default=10, help="timed steps (median reported)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--csv", type=Path, help="append the result as a row of this CSV")
    parser.add_argument("--profile", action="store_true", help="also profile 3 more steps: self CPU time by op kind and part")
    args = parser.parse_args(argv)
    output_file(args.csv, "--csv", inputs=config_files(args.config))
    cfg = bench_config(args.config, args.set)
    device = resolve_device("cpu" if cfg.train.device == "cpu" else "auto", 0)  # a GPU config runs on CPU without one
    memory_warning = check_memory(cfg, device, 1)
    if memory_warning:  # a timing of a config that does not fit would end in the kernel's OOM kill
        raise UserError(f"not timed: {memory_warning}")
    if cfg.train.device == "cuda" and device.type == "cpu":
        print("note: train.device is cuda but no GPU is visible: timing on the CPU", file=sys.stderr)
    print(f"timing {cfg.name}: {WARMUP_STEPS} warm-up and {args.steps} timed steps on {machine(device)}", file=sys.stderr, flush=True)
    result = benchmark(cfg, device, args.steps)
    breakdown = profile_breakdown(cfg, device) if args.profile else None
    if args.csv:
        append_csv(args.csv, result)
    if args.json:
        print(strict_json.dumps(result | ({"profile": breakdown} if breakdown else {})))
    else:
        print(f"{result['name']}: {result['tokens_per_s']:,.0f} tokens/s, {result['ms_per_step']:.1f} ms/step, "
              f"{result['precision']}, {result['attention']} attention, model-MFU {100 * result['model_mfu']:.1f}% "
              f"of {result['matmul_gflops']:.1f} GFLOP/s {result['precision']} matmul peak, "
              f"peak memory {result['peak_memory_mb']:,.0f} MB ({result['memory_source']}; {result['device']})")
        if breakdown:
            print_breakdown(breakdown)
    return 0


if __name__ == "__main__":
    run_cli(main)
