"""analysis.claims / `analysis.report --claims`: each verdict comes out as constructed.

Run folders are written here from the fig2_demo fixtures' configs (one per variant), with
dev bpc chosen per seed so that the paired difference all-attention - other has a known
mean and spread. Every seed shifts both sides alike (a seed effect of 0.05 bpc per seed):
pairing by seed removes it, so tight intervals come out tight.
"""
from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis.aggregate import t_quantile
from analysis.claims import (INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTED, REPRODUCED, claim_verdicts, evaluate_claims,
                             format_claims)
from analysis.collect import load_runs

PROJECT = Path(__file__).resolve().parents[1]
DEMO = PROJECT / "tests" / "fixtures" / "runs" / "fig2_demo"
TEMPLATES = {"transformer": "transformer-n0-s1", "attention_only": "attention-only-n0-s1",
             "all_attention": "all-attention-n16-s1", "attn_split": "attn-split-n16-s1",
             "head_split": "head-split-n16-s1", "single_head": "single-head-n16-s1", "ffn_attn": "ffn-attn-n16-s1"}
SEEDS = (0, 1, 2, 3)
ALTERNATING = (1, -1, 1, -1)  # spread of the paired differences around their mean, per seed
PARAMS = 10_000
JOINT = 2.0  # all-attention's dev bpc at seed 0


def joint_bpc(seed: int) -> float:
    return JOINT + 0.05 * seed


def write_run(root: Path, variant: str, seed: int, dev_bpc: float, *, num_layers: int | None = None,
              num_persistent: int | None = None, params: int = PARAMS, steps: int | None = None,
              params_persistent: int | None = None) -> Path:
    """A finished run folder of `variant` (the fixture's config, with these changes) scoring `dev_bpc`."""
    (template,) = DEMO.glob(f"{TEMPLATES[variant]}-*")
    config = yaml.safe_load((template / "config.yaml").read_text())
    config["train"]["seed"] = seed
    for section, key, value in (("model", "num_layers", num_layers), ("model", "num_persistent", num_persistent),
                                ("train", "steps", steps)):
        if value is not None:
            config[section][key] = value
    model = config["model"]
    config.update(grid="claims", name=f"{variant}-L{model['num_layers']}-N{model['num_persistent']}-s{seed}")
    run_dir = root / config["name"]
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (run_dir / "status.json").write_text(json.dumps({"state": "DONE", "step": 400, "attempt": 1}))
    (run_dir / "provenance.json").write_text(json.dumps({"git_sha": "0" * 40}))
    scores = {"loss": dev_bpc * math.log(2), "bpc": dev_bpc, "tokens": 1000, "full": True}
    facts = {"params_total": params} if params_persistent is None else {"params_total": params,
                                                                         "params_persistent": params_persistent}
    (run_dir / "eval.json").write_text(json.dumps({"unit": "bpc", "valid": scores, "test": scores, **facts}))
    return run_dir


def write_pair(root: Path, other: str, mean: float, spread: float, seeds=SEEDS, **other_options) -> None:
    """all-attention (N=16, 2 layers) and `other`, such that all-attention - other over seeds has
    mean `mean` and alternates by ±`spread`; all-attention is written once per seed."""
    for seed, sign in zip(seeds, ALTERNATING):
        if not any(root.glob(f"all_attention-L2-N16-s{seed}")):
            write_run(root, "all_attention", seed, joint_bpc(seed))
        write_run(root, other, seed, joint_bpc(seed) - (mean + sign * spread), **other_options)


def claims(root: Path, **options) -> pd.DataFrame:
    return evaluate_claims(load_runs([root]), **options)


def verdict(table: pd.DataFrame, claim: str) -> str:
    return claim_verdicts(table).set_index("claim").loc[claim, "verdict"]


def test_t_quantile_matches_the_tables() -> None:
    assert [round(t_quantile(df), 3) for df in (1, 2, 3, 4, 9, 30)] == [12.706, 4.303, 3.182, 2.776, 2.262, 2.042]
    assert t_quantile(1000) == pytest.approx(1.962, abs=1e-3) and t_quantile(5, 0.9) == pytest.approx(2.015, abs=1e-3)


@pytest.mark.parametrize("mean, spread, expected", [
    (0.005, 0.001, REPRODUCED),  # interval about [0.003, 0.007], inside ±0.02
    (0.100, 0.001, NOT_REPRODUCED),  # entirely above +δ
    (-0.100, 0.001, NOT_REPRODUCED),  # entirely below -δ (all-attention much better: not equivalent)
    (0.010, 0.020, INCONCLUSIVE),  # straddles +δ
])
def test_claim_a_equivalence_within_delta(tmp_path: Path, mean: float, spread: float, expected: str) -> None:
    write_pair(tmp_path, "transformer", mean, spread)
    table = claims(tmp_path)
    row = table[table["claim"] == "a"].iloc[0]
    half = t_quantile(3) * spread * math.sqrt(4 / 3) / 2  # sd of (+s, -s, +s, -s) is s * sqrt(4/3)
    assert (row["n"], row["mean_diff"]) == (4, pytest.approx(mean))
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert row["verdict"] == expected == verdict(table, "a")
    assert row["ours"] == "all-attention N=16, 2 layers" and row["other"] == "transformer, 2 layers"


def test_claim_a_delta_is_a_flag_in_the_metrics_units(tmp_path: Path) -> None:
    write_pair(tmp_path, "transformer", 0.05, 0.001)
    assert verdict(claims(tmp_path), "a") == NOT_REPRODUCED  # default δ = 0.02 bpc
    assert verdict(claims(tmp_path, delta=0.1), "a") == REPRODUCED


@pytest.mark.parametrize("mean, spread, expected", [
    (-0.100, 0.001, REPRODUCED), (0.100, 0.001, NOT_REPRODUCED), (-0.010, 0.050, INCONCLUSIVE)])
def test_claim_b_attention_only_worse(tmp_path: Path, mean: float, spread: float, expected: str) -> None:
    write_pair(tmp_path, "attention_only", mean, spread)
    table = claims(tmp_path)
    assert verdict(table, "b") == expected
    assert table.set_index("claim").loc["b", "other"] == "attention-only, 4 layers"


@pytest.mark.parametrize("differences, expected", [
    ({"attn_split": -0.1, "head_split": -0.1, "single_head": -0.1, "ffn_attn": -0.1}, REPRODUCED),
    ({"attn_split": -0.1, "head_split": -0.1, "single_head": -0.1, "ffn_attn": +0.1}, NOT_REPRODUCED),
    ({"attn_split": -0.1, "head_split": -0.1, "single_head": -0.1, "ffn_attn": "noisy"}, INCONCLUSIVE),
])
def test_claim_c_joint_beats_every_separate_variant(tmp_path: Path, differences: dict, expected: str) -> None:
    for variant, mean in differences.items():
        write_pair(tmp_path, variant, *((-0.01, 0.05) if mean == "noisy" else (mean, 0.001)))
    table = claims(tmp_path)
    rows = table[table["claim"] == "c"].set_index("other")["verdict"]
    assert len(rows) == 4 and verdict(table, "c") == expected
    assert rows["ffn-attn N=16, 2 layers"] == {REPRODUCED: REPRODUCED, NOT_REPRODUCED: NOT_REPRODUCED,
                                               INCONCLUSIVE: INCONCLUSIVE}[expected]
    assert (rows.drop("ffn-attn N=16, 2 layers") == REPRODUCED).all()
    assert set(table.loc[table["claim"] != "c", "verdict"]) == {NOT_TESTED}  # no transformer, no N = 0 here


def test_one_seed_is_inconclusive_with_no_interval(tmp_path: Path) -> None:
    write_pair(tmp_path, "transformer", 0.0, 0.0, seeds=(0,))
    row = claims(tmp_path).iloc[0]
    assert (row["n"], row["verdict"]) == (1, INCONCLUSIVE) and math.isnan(row["ci_low"])
    assert "fewer than 2 seed pairs" in row["note"]
    assert "| no interval (n < 2) | inconclusive at n=1 |" in format_claims(claims(tmp_path))


def test_pairs_by_seed_and_counts_the_unpaired(tmp_path: Path) -> None:
    write_pair(tmp_path, "transformer", 0.005, 0.001)
    write_run(tmp_path, "all_attention", 7, 1.0)  # no transformer seed 7: left out of the pairs
    row = claims(tmp_path).iloc[0]
    assert (row["n"], row["mean_diff"], row["verdict"]) == (4, pytest.approx(0.005), REPRODUCED)
    assert "1 run(s) without a seed on the other side left out" in row["note"]


def test_equal_parameters_and_best_point_choose_the_sides(tmp_path: Path) -> None:
    write_pair(tmp_path, "transformer", 0.005, 0.001)
    for seed in SEEDS:  # a better all-attention, but 10% larger: not at equal parameters
        write_run(tmp_path, "all_attention", seed, 1.0, num_persistent=32, params=11_000)
        # a worse all-attention at equal parameters: not the best
        write_run(tmp_path, "all_attention", seed, 3.0, num_persistent=8)
    row = claims(tmp_path).iloc[0]
    assert (row["ours"], row["verdict"]) == ("all-attention N=16, 2 layers", REPRODUCED)
    assert claims(tmp_path, tolerance=0.2).iloc[0]["ours"] == "all-attention N=32, 2 layers"


def test_joint_side_of_c_has_the_variants_depth(tmp_path: Path) -> None:
    write_pair(tmp_path, "attn_split", -0.1, 0.001)
    for seed in SEEDS:  # the best all-attention overall, but 3 layers: not the ablation's pair
        write_run(tmp_path, "all_attention", seed, 1.0, num_layers=3)
    row = claims(tmp_path).set_index("claim").loc["c"]
    assert (row["ours"], row["verdict"]) == ("all-attention N=16, 2 layers", REPRODUCED)


def test_joint_side_of_c_has_the_variants_persistent_budget(tmp_path: Path) -> None:
    """The demo's case: all-attention at N = 32 is the best point overall, but the integration
    variant ran at N = 128; (c) compares it with all-attention at N = 128 (Figure 2, right)."""
    root = tmp_path / "runs"
    for seed in SEEDS:
        write_run(root, "all_attention", seed, 1.0, num_persistent=32, params_persistent=32 * 64)
        write_run(root, "all_attention", seed, joint_bpc(seed), num_persistent=128, params_persistent=128 * 64)
        write_run(root, "attn_split", seed, joint_bpc(seed) + 0.1, num_persistent=128, params_persistent=128 * 64)
    row = claims(root).set_index("claim").loc["c"]
    assert (row["ours"], row["verdict"]) == ("all-attention N=128, 2 layers", REPRODUCED)
    for run in root.glob("all_attention-L2-N128-*"):
        run.rename(tmp_path / run.name)  # out of the runs read below
    row = claims(root).set_index("claim").loc["c"]
    assert row["verdict"] == NOT_TESTED and "persistent parameters" in row["note"]


def test_sides_trained_differently_are_noted(tmp_path: Path) -> None:
    for seed in SEEDS:
        write_run(tmp_path, "all_attention", seed, joint_bpc(seed))
        write_run(tmp_path, "transformer", seed, joint_bpc(seed), steps=800)
    assert "also differ in train.steps" in claims(tmp_path).iloc[0]["note"]


def test_report_cli_prints_the_claims(tmp_path: Path) -> None:
    write_pair(tmp_path, "transformer", 0.005, 0.001)
    write_pair(tmp_path, "attention_only", 0.1, 0.001)
    write_pair(tmp_path, "single_head", -0.01, 0.05)
    command = [sys.executable, "-m", "analysis.report", "--claims", str(tmp_path)]
    result = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "two-sided 95% Student-t interval" in out and "±δ = ±0.02 bpc" in out
    assert "| 4 | +0.005 | [+0.003, +0.007] | reproduced |" in out
    assert "- **(a)** all-attention within δ of the transformer at equal parameters: **reproduced**" in out
    assert "**(b)** N = 0 (attention-only) worse than the best N > 0 at equal parameters: **not reproduced**" in out
    assert "**(c)** the joint softmax better than each separate variant: **inconclusive at n=4**" in out
    csv = subprocess.run(command + ["--format", "csv", "--delta", "0.001"], cwd=PROJECT, capture_output=True,
                         text=True, timeout=120)
    table = pd.read_csv(io.StringIO(csv.stdout))
    assert table.set_index("claim").loc["a", "verdict"] == NOT_REPRODUCED and set(table["delta"]) == {0.001}
