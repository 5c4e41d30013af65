"""Training throughput:  python -m experiments.benchmark CONFIG.yaml [--set k=v ...] [--json] [--csv FILE]

Times full training steps (forward + backward + optimizer step, cache carried
from block to block, random tokens) and reports tokens/s, peak memory, model
FLOPs per token and model-MFU = FLOPs/token x tokens/s / the fp32 matmul peak
measured in the same process (a 2048^3 torch.mm, median of repeats, the larger of one
median before and one after the timed steps). Measuring
the peak in the same run makes the ratio comparable across noisy machines.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from experiments.atomic import atomic_write_text
from experiments.cli import run_cli
from experiments.optim import build_optimizer, clip_global_
from experiments.run_config import load_run_config
from model import build_model
from model.errors import UserError
from model.summary import summarize

MATMUL_SIZE = 2048


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], None], repeats: int, device: torch.device, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(device: torch.device, repeats: int = 7) -> float:
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device)
    seconds = median_seconds(lambda: torch.mm(a, b), repeats, device, warmup=2)
    return 2 * MATMUL_SIZE**3 / seconds / 1e9


def step_seconds(cfg, device: torch.device, steps: int) -> float:
    """Median wall time of one training step of `cfg` on random tokens."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(cfg.optim, params)
    batch, block = cfg.train.batch_size, cfg.train.block_size
    cache = [model.init_cache(batch, device=device)]

    def step() -> None:
        tokens = torch.randint(0, cfg.model.vocab_size, (batch, block + 1), device=device)
        optimizer.zero_grad(set_to_none=True)
        nll, cache[0] = model(tokens[:, :-1], cache[0], tokens[:, 1:])
        (nll.mean() + model.span_loss()).backward()
        clip_global_(cfg.optim, params)
        optimizer.step()
        model.clamp_span_()

    return median_seconds(step, steps, device, warmup=2)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{cpu}, {torch.get_num_threads()} threads"


def benchmark(cfg, device: torch.device, steps: int) -> dict[str, Any]:
    # The peak is the larger of two medians, one before and one after the timed steps:
    # a momentarily slow machine must not lower the peak and so inflate the MFU.
    before = matmul_gflops(device)
    seconds = step_seconds(cfg, device, steps)
    peak = max(before, matmul_gflops(device))
    tokens_per_s = cfg.train.batch_size * cfg.train.block_size / seconds
    facts = summarize(cfg.model)
    return {"name": cfg.name, "variant": cfg.model.variant, "attn_span": cfg.model.attn_span,
            "num_persistent": cfg.model.num_persistent, "tokens_per_s": tokens_per_s, "ms_per_step": 1000 * seconds,
            "flops_per_token": facts["flops_per_token"], "matmul_gflops": peak,
            "model_mfu": facts["flops_per_token"] * tokens_per_s / (peak * 1e9),
            "peak_rss_mb": peak_memory_mb(device), "device": machine(), "torch": torch.__version__}


def append_csv(path: Path, row: dict[str, Any]) -> None:
    rows = list(csv.DictReader(path.open())) if path.exists() else []
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(row))
    writer.writeheader()
    writer.writerows([{k: r.get(k, "") for k in row} for r in rows] + [row])
    atomic_write_text(path, out.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="run config YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--csv", type=Path, help="append the result as a row of this CSV")
    args = parser.parse_args(argv)
    if args.steps < 1:
        raise UserError("--steps must be >= 1")
    cfg = load_run_config(args.config, args.set)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = torch.device("cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu")
    result = benchmark(cfg, device, args.steps)
    if args.csv:
        append_csv(args.csv, result)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['name']}: {result['tokens_per_s']:,.0f} tokens/s, {result['ms_per_step']:.1f} ms/step, "
              f"model-MFU {100 * result['model_mfu']:.1f}% of {result['matmul_gflops']:.1f} GFLOP/s matmul peak, "
              f"peak memory {result['peak_rss_mb']:,.0f} MB ({result['device']})")
    return 0


if __name__ == "__main__":
    run_cli(main)
