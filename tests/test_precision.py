"""train.precision: fp32 | tf32 | bf16 (experiments/train_step.py), and the legacy `train.bf16`.

bf16 is autocast on the run's device, so it runs here on the CPU: every variant trains
20 updates of the trainer's own step (TrainStep) in bf16 and in fp32 from the same
initial weights and data, with the banded and the fused attention, and the bf16 run's
loss must stay within BF16_TOLERANCE of the fp32 run's at every update.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from experiments.config import parse_yaml
from experiments.distributed import DistContext
from experiments.run_config import RunConfig, run_config_from_dict
from experiments.train_state import TrainState
from experiments.train_step import TrainStep, apply_precision
from model import build_model
from model.errors import ConfigError
from tests.conftest import PROJECT_ROOT
from tests.model_helpers import VARIANT_FIELDS, VARIANTS

CPU = DistContext(rank=0, world_size=1, device=torch.device("cpu"))
STEPS = 20
BF16_TOLERANCE = 0.02
"""Nats per token: max over the 20 updates of |loss bf16 - loss fp32|. bf16 keeps 8
significant bits (relative rounding 2^-9 = 0.2%), so each matmul's output moves by ~0.1-0.4%
and the two trajectories drift apart a little with each update. Measured here (every
variant, banded and fused): at most 0.0074 nats at any update, at most 0.0017 nats over
the last five, while the fp32 loss falls by 1.5-2.1 nats over the 20 updates (more than
1.0 is asserted). 0.02 leaves ~3x the measured drift, and is 1% of what the runs learn:
a broken bf16 path (a softmax or the loss left in bf16 on logits this size, a bad cast in
a backward, a gradient lost to underflow) is off by far more or stops learning."""


def config(variant: str, attention: str, precision: str, span: bool = False) -> RunConfig:
    model = {"variant": variant, "vocab_size": 24, "num_layers": 2, "d_model": 16, "num_heads": 2, "attn_span": 16,
             "dropout": 0.0, "attention": attention, **VARIANT_FIELDS[variant]}
    if span:
        model["adaptive_span"] = {"enabled": True, "loss_coef": 1e-3, "ramp": 4, "init": 0.5, "trim_memory": True}
    return run_config_from_dict({
        "name": "precision", "model": model, "data": {"dataset": "lexicon", "path": "unused"},
        "optim": {"name": "adagrad", "lr": 0.07, "clip": 0.03, "warmup_steps": 3},
        "train": {"steps": STEPS, "block_size": 8, "batch_size": 4, "batch_split": 2, "device": "cpu",
                  "precision": precision}})


def learnable_stream(vocab: int, length: int) -> np.ndarray:
    """A fixed random 12-symbol motif repeated: a few updates learn part of it."""
    motif = np.random.default_rng(0).integers(0, vocab, size=12)
    return np.resize(motif, length).astype(np.int64)


def train(cfg: RunConfig, steps: int = STEPS) -> list[float]:
    torch.manual_seed(0)
    model = build_model(cfg.model)
    update = TrainStep(cfg, model, learnable_stream(cfg.model.vocab_size, 4 * (8 * (steps + 1) + 1)), CPU)
    state = TrainState()
    losses = torch.stack([update(state, 1.0) for _ in range(steps)]).tolist()
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    for group in update.optimizer.state.values():
        assert all(v.dtype == torch.float32 for v in group.values() if torch.is_tensor(v) and v.is_floating_point())
    return losses


@pytest.fixture(autouse=True)
def _full_fp32():
    yield
    apply_precision("fp32")  # precision is process-wide: leave the next test the default


@pytest.mark.parametrize("attention", ["banded", "fused"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_training_ends_within_tolerance_of_fp32(variant, attention):
    span = variant in ("all_attention", "head_split")  # adaptive span (trimmed) under autocast too
    fp32 = train(config(variant, attention, "fp32", span))
    bf16 = train(config(variant, attention, "bf16", span))
    assert all(math.isfinite(v) for v in bf16)
    assert fp32[0] - np.mean(fp32[-5:]) > 1.0, fp32  # the runs learn: the drift below is small beside that
    drift = max(abs(a - b) for a, b in zip(bf16, fp32))
    assert drift <= BF16_TOLERANCE, f"{variant}/{attention}: bf16 drifts {drift:.4f} nats from fp32"
    assert bf16 != fp32  # autocast did act


def test_tf32_sets_the_process_matmul_precision_and_fp32_resets_it():
    apply_precision("tf32")
    assert torch.get_float32_matmul_precision() == "high"
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    apply_precision("fp32")
    assert torch.get_float32_matmul_precision() == "highest"
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    apply_precision("bf16")  # autocast regions run in bf16; what stays fp32 is full fp32
    assert torch.get_float32_matmul_precision() == "highest"


def test_a_tf32_step_trains_on_cpu():
    losses = train(config("all_attention", "banded", "tf32"), steps=3)
    assert all(math.isfinite(v) for v in losses)


def _train_section(text: str) -> dict:
    cfg = config("all_attention", "banded", "fp32").to_dict()
    cfg["train"] = {k: v for k, v in cfg["train"].items() if k != "precision"} | parse_yaml(text)
    return cfg


@pytest.mark.parametrize("legacy, precision", [(False, "fp32"), (True, "bf16")])
def test_legacy_bf16_key_loads_as_precision_and_keeps_the_run_id(legacy, precision):
    old = run_config_from_dict(_train_section(f"bf16: {str(legacy).lower()}"))
    new = run_config_from_dict(_train_section(f"precision: {precision}"))
    assert old.train.precision == precision
    assert old.config_hash == new.config_hash


def test_the_three_precisions_have_three_run_ids_and_compile_none():
    hashes = {run_config_from_dict(_train_section(f"precision: {p}")).config_hash for p in ("fp32", "tf32", "bf16")}
    assert len(hashes) == 3
    compiled = run_config_from_dict(_train_section("{precision: fp32, compile: true}"))
    assert compiled.config_hash == run_config_from_dict(_train_section("precision: fp32")).config_hash


def test_legacy_and_new_keys_together_or_a_bad_precision_are_refused():
    with pytest.raises(ConfigError, match="train.bf16.*precision only"):
        run_config_from_dict(_train_section("{bf16: false, precision: fp32}"))
    with pytest.raises(ConfigError, match="train.precision.*fp32, tf32, bf16"):
        run_config_from_dict(_train_section("precision: fp16"))
    with pytest.raises(ConfigError, match="train.bf16"):
        run_config_from_dict(_train_section("bf16: 1"))


def test_committed_run_directories_written_with_bf16_false_keep_their_ids():
    """The legacy runs' config.yaml files (tests/fixtures/legacy_wt2_adam, once results/wt2_char) say
    `train: {bf16: false}`: they load as fp32, and their folders' ids are what the hash of that config
    gives (the legacy hash where cadence fields left the hash since: experiments/run_config.py)."""
    from experiments.run_config import load_run_config

    dirs = sorted((PROJECT_ROOT / "tests" / "fixtures" / "legacy_wt2_adam" / "runs").glob("*/*/config.yaml"))
    assert len(dirs) == 20
    for path in dirs:
        assert "bf16: false" in path.read_text()
        cfg = load_run_config(path)
        assert cfg.train.precision == "fp32"
        hashes = {cfg.config_hash, getattr(cfg, "legacy_config_hash", cfg.config_hash)}
        assert path.parent.name.rsplit("-", 1)[1] in hashes, path
