"""Numbers computed by the authors' own code (../shared/fixtures/authors_reference, see its
README.md) reproduced through this project's public paths:

- evaluation: `experiments.data prepare` the case's text, `experiments.convert` their
  checkpoint, `experiments.evaluate --text` in float32 and float64 (mean loss within 1e-5 and
  1e-7 relative, scored tokens exactly); every token and block in float64 in-process;
- training: their initial checkpoint converted, 20 updates of the trainer's step
  (`experiments.train_step.TrainStep`: optimizer, schedule, clipping, span penalty and clamp)
  on their stored batches (each loss within 1e-4 relative, learning rates exactly), then our
  final state exported with `experiments.convert --to-authors` and compared with their final
  file key by key: parameters, span values and optimizer state;
- export: their initial files are rebuilt exactly from ours (`--to-authors`);
- the authors' rule for adaptive-span trimming and cache length, for every span L.

The fixtures are skipped when ../shared is absent, except under CI=true, where they fail.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.distributed import DistContext
from experiments.run_config import RunConfig, load_run_config
from experiments.train_state import TrainState
from experiments.train_step import TrainStep
from model import AdaptiveSpanConfig, ModelConfig, build_model
from tests.conftest import PROJECT_ROOT, require_path

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "authors_reference"
EVAL_CASES = ("char_ffn", "char_all_attention_span", "word_adaptive_io")
TRAIN_CASES = ("train_char_all_attention_span", "train_word_adaptive_io")
EVAL_TOLERANCE = {"float32": 1e-5, "float64": 1e-7}  # relative, on the mean loss (README)
TRAIN_LOSS_TOLERANCE = {"float32": 1e-4, "float64": 1e-6}  # relative, per step (README)
# Final state against their float32 run: a few times the float32-vs-float64 gap of their own
# code (README: 6.8e-5 char, 1.5e-6 word on parameters, 9.5e-7 on z).
FINAL_PARAM_TOLERANCE = {"train_char_all_attention_span": 3e-4, "train_word_adaptive_io": 1e-5}  # absolute
FINAL_Z_TOLERANCE = 1e-5  # absolute
# Optimizer state (Adagrad accumulators, Adam moments): |ours - theirs| / max |theirs| per tensor;
# seen 1.5e-4 (char, an accumulator) and 4.3e-6 (word).
OPTIMIZER_STATE_TOLERANCE = {"train_char_all_attention_span": 1e-3, "train_word_adaptive_io": 5e-5}
SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def fixtures() -> Path:
    return require_path(FIXTURES, "the authors' reference fixtures")


def command(*args: str | Path) -> subprocess.CompletedProcess:
    """`python -m ARGS` from the project root; the test fails with its stderr if it fails."""
    proc = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"python -m {' '.join(map(str, args))}: {proc.stderr}"
    return proc


def expected_of(case_dir: Path) -> dict:
    return json.loads((case_dir / "expected.json").read_text())


def float64_reference(expected: dict) -> dict:
    """Their float64 numbers without the adaptive softmax's internal float32 casts (the README's
    reference for a float64 implementation); the plain float64 entry where there are no casts."""
    return expected.get("float64_no_internal_float32", expected["float64"])


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# ---------------------------------------------------------------- evaluation


@pytest.fixture(scope="module")
def prepared(fixtures, tmp_path_factory):
    """case -> folder with `data/` (the case's text prepared as a corpus) and `ours.pt` (their
    checkpoint converted), both made by the commands, once per case."""
    made: dict[str, Path] = {}

    def make(case: str) -> Path:
        if case not in made:
            made[case] = _prepare_and_convert(fixtures / case, tmp_path_factory.mktemp(case))
        return made[case]

    return make


def _prepare_and_convert(case_dir: Path, work: Path) -> Path:
    level = json.loads((case_dir / "geometry.json").read_text())["level"]
    source = work / "text"
    source.mkdir()
    for split in SPLITS:
        shutil.copyfile(case_dir / "text.txt", source / f"{split}.txt")
    order = ["--vocab-order", "frequency"] if level == "word" else []
    command("experiments.data", "prepare", "text", "--source", source, "--level", level, *order, "--out", work / "data")
    meta = json.loads((work / "data" / "meta.json").read_text())
    assert meta["vocab"] == json.loads((case_dir / "vocab.json").read_text())  # the authors' ids
    command("experiments.convert", case_dir / "authors_state.pt", "--config", case_dir / "config.yaml",
            "--out", work / "ours.pt")
    return work


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", EVAL_CASES)
def test_full_evaluation_command_gives_the_authors_mean_loss(case, dtype, fixtures, prepared):
    case_dir, work = fixtures / case, prepared(case)
    expected = expected_of(case_dir)
    proc = command("experiments.evaluate", case_dir / "config.yaml", "--checkpoint", work / "ours.pt",
                   "--text", case_dir / "text.txt", "--batch-size", expected["batching"]["rows_B"],
                   "--set", f"data.path={work / 'data'}", "--dtype", dtype)
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["tokens"] == expected["batching"]["tokens_scored"]
    reference = expected["float32"] if dtype == "float32" else float64_reference(expected)
    assert relative(record["loss"], reference["mean_loss"]) <= EVAL_TOLERANCE[dtype]
    if dtype == "float64":  # the as-released float64 value as well (README: within 1e-8 of the above)
        assert relative(record["loss"], expected["float64"]["mean_loss"]) <= EVAL_TOLERANCE[dtype]


@pytest.mark.parametrize("case", EVAL_CASES)
def test_every_token_and_block_matches_in_float64(case, fixtures, prepared):
    """Per-token nll (blocks x B x M) and per-block means, the authors' batching written out."""
    case_dir = fixtures / case
    expected, cfg = expected_of(case_dir), load_run_config(case_dir / "config.yaml")
    model = load_ours(cfg, prepared(case) / "ours.pt").double().eval()
    rows, block = expected["batching"]["rows_B"], expected["batching"]["block_size_M"]
    got = evaluate_blocks(model, np.load(case_dir / "tokens.npy"), rows, block)  # blocks x B x M
    reference = float64_reference(expected)
    per_token = case_dir / reference.get("per_token_file", "per_token_nll_float64.npy")
    np.testing.assert_allclose(got, np.load(per_token), rtol=0, atol=1e-12)  # seen: 3.6e-14
    assert got.shape[0] == expected["batching"]["blocks"]
    for mine, theirs in zip(got.mean(axis=(1, 2)), reference["per_block_mean_loss"]):
        assert relative(float(mine), theirs) <= EVAL_TOLERANCE["float64"]
    if "authors_trim_len_per_layer" in expected:  # the keys their code drops, and its cache lengths
        kept = [cfg.model.attn_span - trim for trim in expected["authors_trim_len_per_layer"]]
        assert [layer.attn.kept_span() for layer in model.layers] == kept
        assert [layer.attn.cache_size() for layer in model.layers] == expected["authors_cache_size_per_layer"]


def load_ours(cfg: RunConfig, path: Path) -> torch.nn.Module:
    model = build_model(cfg.model)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
    return model


@torch.no_grad()
def evaluate_blocks(model, tokens: np.ndarray, rows: int, block: int) -> np.ndarray:
    """Their full evaluation: `rows` contiguous rows, complete blocks only, caches from zeros."""
    row_len = len(tokens) // rows
    data = torch.from_numpy(tokens[: rows * row_len].reshape(rows, row_len))
    cache, out = model.init_cache(rows), []
    for k in range((row_len - 1) // block):
        nll, cache = model(data[:, k * block : (k + 1) * block], cache, data[:, k * block + 1 : (k + 1) * block + 1])
        out.append(nll.numpy())
    return np.stack(out)


# ---------------------------------------------------------------- training


def training_stream(batches: np.ndarray) -> np.ndarray:
    """The README's token stream for a trainer: row r = batches[k, r, :M] over k, then
    batches[-1, r, M]; the B rows laid end to end (so the trainer's step k reads batches[k])."""
    rows = np.concatenate([np.concatenate(list(batches[:, :, :-1]), axis=1), batches[-1, :, -1:]], axis=1)
    return rows.reshape(-1)


def train_like_the_authors(cfg: RunConfig, ours: Path, batches: np.ndarray, dtype: torch.dtype):
    """20 updates of the trainer's step from the converted weights: (losses, lrs, model, step)."""
    torch.manual_seed(cfg.train.seed)
    model = load_ours(cfg, ours).to(dtype)
    step = TrainStep(cfg, model, training_stream(batches), DistContext(rank=0, world_size=1, device=torch.device("cpu")))
    state, losses, lrs = TrainState(), [], []
    for _ in range(len(batches)):
        losses.append(step(state, 1.0))
        lrs.append(state.last_lr)
    assert state.step == len(batches)
    return losses, lrs, model, step, state


@pytest.fixture(scope="module")
def trained(fixtures, tmp_path_factory):
    """case -> (expected, cfg, work dir, float32 run) with their initial file converted by the command."""
    made: dict[str, tuple] = {}

    def make(case: str) -> tuple:
        if case not in made:
            case_dir, work = fixtures / case, tmp_path_factory.mktemp(case)
            command("experiments.convert", case_dir / "authors_state.pt", "--config", case_dir / "config.yaml",
                    "--out", work / "ours.pt")
            cfg = load_run_config(case_dir / "config.yaml")
            run = train_like_the_authors(cfg, work / "ours.pt", np.load(case_dir / "batches.npy"), torch.float32)
            made[case] = (expected_of(case_dir), cfg, work, run)
        return made[case]

    return make


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_twenty_training_steps_give_the_authors_losses_and_learning_rates(case, trained):
    expected, _, _, (losses, lrs, _, _, _) = trained(case)
    assert lrs == expected["learning_rate_per_step"]
    worst = max(relative(mine, theirs) for mine, theirs in zip(losses, expected["float32"]["loss_per_step"]))
    assert worst <= TRAIN_LOSS_TOLERANCE["float32"]


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_twenty_training_steps_in_float64_give_the_authors_float64_losses(case, fixtures, trained):
    expected, cfg, work, _ = trained(case)
    losses, _, model, _, _ = train_like_the_authors(cfg, work / "ours.pt", np.load(fixtures / case / "batches.npy"),
                                                    torch.float64)
    reference = float64_reference(expected)["loss_per_step"]
    assert max(relative(mine, theirs) for mine, theirs in zip(losses, reference)) <= TRAIN_LOSS_TOLERANCE["float64"]
    if "span" in expected:
        z = [layer.attn.span.z.detach().view(-1).tolist() for layer in model.layers]
        np.testing.assert_allclose(z, expected["span"]["final_z_per_layer_float64"], rtol=0, atol=1e-8)  # seen: 1.8e-9


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_final_state_exported_to_their_layout_matches_their_final_file(case, fixtures, trained):
    """Parameters, span values and optimizer state after 20 updates, compared in their layout
    (our run exported by `experiments.convert --to-authors`), index by index."""
    expected, cfg, work, (_, _, model, step, state) = trained(case)
    torch.save({"model": model.state_dict(), "optimizer": step.optimizer.state_dict(), "state": state.to_dict()},
               work / "ours_after.pt")
    command("experiments.convert", "--to-authors", work / "ours_after.pt", "--config", fixtures / case / "config.yaml",
            "--out", work / "theirs_after.pt")
    mine = torch.load(work / "theirs_after.pt", weights_only=True)
    theirs = torch.load(fixtures / case / "authors_state_after.pt", weights_only=True)
    assert list(mine["model"]) == list(theirs["model"]) and mine["scheduler_iter"] == theirs["scheduler_iter"]
    for key, value in theirs["model"].items():
        tolerance = FINAL_Z_TOLERANCE if key.endswith("current_val") else FINAL_PARAM_TOLERANCE[case]
        assert (mine["model"][key] - value).abs().max().item() <= tolerance, key
    _assert_optimizer_states_agree(mine["optimizer"], theirs["optimizer"], OPTIMIZER_STATE_TOLERANCE[case])


def _assert_optimizer_states_agree(mine: dict, theirs: dict, tolerance: float) -> None:
    assert [len(g["params"]) for g in mine["param_groups"]] == [len(g["params"]) for g in theirs["param_groups"]]
    group, their_group = mine["param_groups"][0], theirs["param_groups"][0]
    assert {k: v for k, v in group.items() if k != "params"} == {k: v for k, v in their_group.items() if k != "params"}
    assert sorted(mine["state"]) == sorted(theirs["state"])
    for index, their_state in theirs["state"].items():
        assert sorted(mine["state"][index]) == sorted(their_state)
        for name, value in their_state.items():
            if value.dim() == 0:  # the step counter
                assert float(mine["state"][index][name]) == float(value), (index, name)
                continue
            gap = (mine["state"][index][name] - value).abs().max().item()
            assert gap <= tolerance * value.abs().max().item(), (index, name)


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_export_rebuilds_their_initial_file_exactly(case, fixtures, trained):
    """Their file -> ours -> theirs: the same keys in the same order, the same tensors (ties
    shared), the same fresh optimizer state and scheduler count."""
    _, _, work, _ = trained(case)
    command("experiments.convert", "--to-authors", work / "ours.pt", "--config", fixtures / case / "config.yaml",
            "--out", work / "theirs.pt")
    mine = torch.load(work / "theirs.pt", weights_only=True)
    theirs = torch.load(fixtures / case / "authors_state.pt", weights_only=True)
    assert list(mine["model"]) == list(theirs["model"])
    for key, value in theirs["model"].items():
        assert mine["model"][key].dtype == value.dtype and torch.equal(mine["model"][key], value), key
    assert _storage_groups(mine["model"]) == _storage_groups(theirs["model"])
    for entry in ("iter_no", "scheduler_iter", "logger"):
        assert mine[entry] == theirs[entry], entry
    assert mine["optimizer"]["param_groups"] == theirs["optimizer"]["param_groups"]
    assert sorted(mine["optimizer"]["state"]) == sorted(theirs["optimizer"]["state"])
    for index, state in theirs["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(mine["optimizer"]["state"][index][name], value), (index, name)


def _storage_groups(state: dict) -> list[list[str]]:
    """Keys that share one tensor, as sorted groups (the ties of their model)."""
    groups: dict[int, list[str]] = {}
    for key, value in state.items():
        groups.setdefault(value.untyped_storage().data_ptr(), []).append(key)
    return sorted(sorted(keys) for keys in groups.values())


# ---------------------------------------------------------------- trimming rule


def authors_kept_and_cache(span: int, ramp: int, z_max: float) -> tuple[int, int]:
    """Their rule (README, 'Key trimming'): s = min(L, ceil(L max z) + R); they drop
    64 floor(min(L - 1, L - s) / 64) keys and cache min(L, L - dropped + 64) inputs."""
    needed = max(0, min(span, math.ceil(z_max * span) + ramp))
    dropped = 64 * math.floor(min(span - 1, span - needed) / 64)
    return span - dropped, min(span, span - dropped + 64)


@pytest.mark.parametrize("span", [16, 48, 64, 100, 128, 200, 257, 1000])
def test_trimming_keeps_the_keys_their_code_keeps_for_every_span(span):
    ramp = min(16, span)
    cfg = ModelConfig(variant="all_attention", vocab_size=5, num_layers=1, d_model=8, num_heads=2, attn_span=span,
                      num_persistent=2, adaptive_span=AdaptiveSpanConfig(enabled=True, ramp=ramp))
    layer_span = build_model(cfg).layers[0].attn.span
    for z_max in np.linspace(0.0, 1.0, 101):
        with torch.no_grad():
            layer_span.z.copy_(torch.tensor([z_max / 3, z_max]).view(2, 1, 1))
        expected = authors_kept_and_cache(span, ramp, layer_span.z.detach().max().item())
        assert (layer_span.kept_span(), layer_span.cache_size()) == expected, (span, z_max)
