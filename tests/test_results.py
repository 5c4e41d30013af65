"""The committed CPU reproductions (results/wt2_char, results/anchor_wt2) are what their run directories say.

Every number in runs.csv and figure2.csv must come back when the copied run
directories are collected again, and every run must carry its provenance.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis.claims import evaluate_claims, format_claims
from analysis.collect import collect_runs, load_runs, unique_runs
from analysis.figure2 import figure2_data
from analysis.inputs import resolve_run_dirs
from tests.conftest import PROJECT_ROOT

RESULTS = PROJECT_ROOT / "results" / "wt2_char"
RUN_DIRS = sorted(resolve_run_dirs([RESULTS / "runs"]))


def test_every_run_is_done_with_its_provenance():
    assert len(RUN_DIRS) == 28  # left: 5 points x 3 seeds; right: 3 points x 3 seeds + 2 x 2 (N=256 copied into both)
    for run_dir in RUN_DIRS:
        status = json.loads((run_dir / "status.json").read_text())
        provenance = json.loads((run_dir / "provenance.json").read_text())
        assert status["state"] == "DONE", run_dir
        assert {"git_sha", "torch", "host", "command"} <= set(provenance), run_dir


def test_committed_tables_match_the_runs():
    committed = pd.read_csv(RESULTS / "runs.csv").set_index("run_id").sort_index()
    collected = unique_runs(collect_runs(RUN_DIRS)).set_index("run_id").sort_index()  # shared runs once
    assert list(committed.index) == list(collected.index)
    for column in ("dev_bpc", "test_bpc", "params_total", "params_non_embedding"):
        assert committed[column].to_numpy() == pytest.approx(collected[column].to_numpy(), rel=1e-9), column


def test_committed_figure_numbers_match_the_runs():
    plotted = pd.read_csv(RESULTS / "figure2.csv")
    again = figure2_data(load_runs([RESULTS / "runs"]))
    assert list(plotted["label"]) == list(again["label"])
    assert plotted["mean"].to_numpy() == pytest.approx(again["mean"].to_numpy(), rel=1e-9, nan_ok=True)


def test_committed_claims_match_the_runs():
    """claims.md is what `analysis.report --claims` says of the copied runs today."""
    again = format_claims(evaluate_claims(load_runs([RESULTS / "runs"])), "markdown")
    assert (RESULTS / "claims.md").read_text() == again


def test_committed_demo_check_matches_its_runs():
    """results/demo_check: 24 runs (8 configurations x 3 seeds); its tables are what the runs say."""
    from analysis.report import compare_variants, format_report

    check = PROJECT_ROOT / "results" / "demo_check"
    runs = load_runs([check / "runs"])
    assert len(runs) == 24 and (runs.groupby("config_group").size() == 3).all()
    assert (check / "comparison.md").read_text() == format_report(compare_variants(runs, "transformer"), "markdown")
    assert (check / "claims.md").read_text() == format_claims(evaluate_claims(runs), "markdown")


def test_committed_anchor_pair_matches_its_runs():
    """results/anchor_wt2: the transformer and the all-attention model at equal parameters, 2 seeds
    each, DONE with provenance; runs.csv, comparison.md and claims.md are what the runs say."""
    from analysis.report import compare_variants, format_report

    anchor = PROJECT_ROOT / "results" / "anchor_wt2"
    run_dirs = sorted(resolve_run_dirs([anchor / "runs"]))
    assert len(run_dirs) == 4
    for run_dir in run_dirs:
        assert json.loads((run_dir / "status.json").read_text())["state"] == "DONE", run_dir
        assert {"git_sha", "torch", "host", "command"} <= set(json.loads((run_dir / "provenance.json").read_text()))
    runs = load_runs([anchor / "runs"])
    assert sorted(runs["variant"]) == ["all_attention"] * 2 + ["transformer"] * 2
    assert runs["params_total"].max() / runs["params_total"].min() < 1.01  # equal parameters
    committed = pd.read_csv(anchor / "runs.csv").set_index("run_id").sort_index()
    collected = collect_runs(run_dirs).set_index("run_id").sort_index()
    assert committed["dev_bpc"].to_numpy() == pytest.approx(collected["dev_bpc"].to_numpy(), rel=1e-9)
    assert (anchor / "comparison.md").read_text() == format_report(compare_variants(runs, "transformer"), "markdown")
    assert (anchor / "claims.md").read_text() == format_claims(evaluate_claims(runs), "markdown")
