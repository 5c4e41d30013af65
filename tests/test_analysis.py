"""analysis/: collect, Figure 2, Tables 1-2 and variant reports on fixture run directories.

tests/fixtures/runs holds two grids written to the run-directory contract (DESIGN §4):
fig2_demo (lexicon, bpc, two seeds per point, a requeued run, a FAILED run with a
torn metrics line) and paper_scale (paper-size all-attention runs for the tables).
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.collect import collect_curves, collect_runs, main as collect_main
from experiments.metrics import read_metrics
from analysis.figure2 import figure2_data, write_figure2
from analysis.inputs import resolve_run_dirs
from analysis.published import load_published
from analysis.report import compare_variants, format_report
from analysis.tables import table_numbers, write_tables
from model.errors import UserError

PROJECT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "runs"
DEMO = FIXTURES / "fig2_demo"
PAPER = FIXTURES / "paper_scale"
# Final dev bpc of seeds 1 and 2 per (variant, N) in fig2_demo's eval.json files.
DEV = {("attention_only", 0): (2.50, 2.60), ("all_attention", 4): (2.30, 2.34), ("all_attention", 16): (2.10, 2.16),
       ("transformer", 0): (2.05, 2.11), ("attn_split", 16): (2.20, 2.24), ("head_split", 16): (2.25, 2.27),
       ("single_head", 16): (2.28, 2.36), ("ffn_attn", 16): (2.40, 2.44)}
PARAMS = {("attention_only", 0): 17000, ("all_attention", 4): 9000, ("all_attention", 16): 10000,
          ("transformer", 0): 17500, ("attn_split", 16): 10000, ("head_split", 16): 9500,
          ("single_head", 16): 10200, ("ffn_attn", 16): 12000}
FLOOR = 1.8


def mean_std(values: tuple[float, ...]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1))


def run_dir(name: str) -> Path:
    (found,) = DEMO.glob(f"{name}-*")
    return found


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    return collect_runs(resolve_run_dirs([FIXTURES]))


@pytest.fixture(scope="module")
def demo_runs(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["grid"] == "fig2_demo"]


def test_inputs_scan_nested_folders_once() -> None:
    dirs = resolve_run_dirs([FIXTURES, DEMO, run_dir("transformer-n0-s1")])
    assert len(dirs) == 20 and len(set(dirs)) == 20


def test_collect_runs_one_row_per_run(runs: pd.DataFrame) -> None:
    assert len(runs) == 20
    assert runs["state"].value_counts().to_dict() == {"DONE": 19, "FAILED": 1}
    row = runs.set_index("name").loc["attention-only-n0-s1"]
    assert (row["variant"], row["num_persistent"], row["num_layers"], row["seed"]) == ("attention_only", 0, 4, 1)
    assert (row["unit"], row["dev_bpc"], row["test_bpc"], row["params_total"]) == ("bpc", 2.50, 2.52, 17000)
    # tokens/s: the median of the logged train intervals (eval.json says 5000, its last interval alone)
    assert (row["flops_per_token"], row["tokens_per_s"], row["entropy_floor_bpc"]) == (34000, 20480.0, FLOOR)
    assert (row["model.variant"], row["model.adaptive_cutoffs"]) == ("attention_only", "[]")
    assert pd.isna(row["model.ffn_size"])
    assert row["git_sha"].startswith("0123456789") and row["attempts"] == 1 and row["eval_full"]
    # the WikiText-103 fixture's test split was capped (eval.max_tokens), so its evaluation is not full
    assert runs.set_index("name").loc["wt103-s1", "eval_full"] == False  # noqa: E712 (a numpy bool)


def test_collect_runs_keeps_unfinished_runs(runs: pd.DataFrame) -> None:
    failed = runs.set_index("name").loc["all-attention-n4-s3"]
    assert (failed["state"], failed["last_step"], failed["attempts"]) == ("FAILED", 250, 1)
    assert failed["error"].startswith("RuntimeError") and np.isnan(failed["dev_bpc"]) and pd.isna(failed["unit"])
    assert runs.set_index("name").loc["all-attention-n16-s1", "attempts"] == 2


def test_read_metrics_requeue_keeps_last_and_drops_torn_line() -> None:
    records = read_metrics(run_dir("all-attention-n16-s1") / "metrics.jsonl")
    assert [(r["split"], r["step"], r["loss"], r["attempt"]) for r in records] == [
        ("train", 100, 1.9, 1), ("train", 200, 1.8, 1), ("val_partial", 200, 1.85, 1),
        ("train", 300, 1.7, 2), ("train", 400, 1.6, 2), ("val_partial", 400, 1.65, 2)]
    torn = read_metrics(run_dir("all-attention-n4-s3") / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in torn] == [(100, 2.0), (200, 1.9)]


def test_read_metrics_recovers_appended_record_and_warns(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    # line 2: a torn record with the requeued attempt's first record appended to it
    path.write_text('{"step": 1, "split": "train", "loss": 3.0}\n{"step": 2, "spl{"step": 2, "split": "train", '
                    '"loss": 2.5}\nnot json\n{"step": 3, "split": "train", "loss": 2.0}\n')
    with pytest.warns(UserWarning, match="metrics.jsonl:3"):
        assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [(1, 3.0), (2, 2.5), (3, 2.0)]


def test_collect_curves_deduplicated(demo_runs: pd.DataFrame) -> None:
    curves = collect_curves(resolve_run_dirs([DEMO]))
    assert len(curves) == 16 * 6 + 2  # six records per finished run, two readable ones in the failed run
    assert not curves.duplicated(["run_id", "split", "step"]).any()
    requeued = curves[(curves["name"] == "all-attention-n16-s1") & (curves["split"] == "train")]
    assert requeued["step"].tolist() == [100, 200, 300, 400]
    assert requeued["loss"].tolist() == [1.9, 1.8, 1.7, 1.6] and requeued["attempt"].tolist() == [1, 1, 2, 2]


def test_collect_cli_writes_csvs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert collect_main([str(DEMO), "--out", str(tmp_path)]) == 0
    written = pd.read_csv(tmp_path / "runs.csv")
    assert len(written) == 17 and set(written["grid"]) == {"fig2_demo"}
    assert len(pd.read_csv(tmp_path / "curves.csv")) == 98
    assert "17 runs in 1 grid(s) (fig2_demo): DONE 16, FAILED 1" in capsys.readouterr().out


def test_figure2_data_equals_fixture_means(demo_runs: pd.DataFrame) -> None:
    data = figure2_data(demo_runs, load_published())
    assert set(data["series"]) == {"ours", "transformer"}  # no published number for lexicon
    for _, row in data.iterrows():
        mean, std = mean_std(DEV[(row["variant"], row["num_persistent"])])
        assert (row["mean"], row["std"], row["n"]) == (pytest.approx(mean), pytest.approx(std), 2)
    right = data[data["panel"] == "right"]
    assert right["variant"].tolist() == ["all_attention", "attn_split", "head_split", "single_head", "ffn_attn"]
    assert right["num_persistent"].tolist() == [16] * 5 and right["x"].tolist() == [0, 1, 2, 3, 4]
    left = data[(data["panel"] == "left") & (data["series"] == "ours")].set_index("num_persistent")
    assert left.loc[4, "x"] == 2.0 and left.loc[16, "x"] == 4.0 and left.loc[0, "x"] < 2.0


def test_figure2_overlays_published_dev_points(runs: pd.DataFrame) -> None:
    enwik8 = runs[runs["dataset"] == "enwik8"]
    published = figure2_data(enwik8, load_published()).query("series != 'ours'")
    assert published[["series", "num_persistent", "mean"]].values.tolist() == [
        ["published (authors_readme)", 1024, 1.03], ["published (authors_readme)", 2048, 1.00]]
    assert set(figure2_data(enwik8, None)["series"]) == {"ours"}


def test_figure2_bytes_identical_across_renders(demo_runs: pd.DataFrame, tmp_path: Path) -> None:
    data = figure2_data(demo_runs, load_published())
    first = write_figure2(data, tmp_path / "a", with_published=True)
    second = write_figure2(figure2_data(demo_runs, load_published()), tmp_path / "b", with_published=True)
    assert [p.name for p in first] == ["figure2.png", "figure2.pdf", "figure2.csv"]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert first[0].read_bytes().startswith(b"\x89PNG") and first[1].read_bytes().startswith(b"%PDF")


def test_published_sources_kept_apart() -> None:
    published = load_published()
    assert set(published["source"]) == {"paper", "authors_readme", "cited"}
    wt103 = published[(published["dataset"] == "wikitext-103") & published["num_layers"].notna()]
    by_source = wt103.pivot(index="source", columns="split", values="value")
    assert by_source.loc["paper"].tolist() == [19.7, 20.6] and by_source.loc["authors_readme"].tolist() == [18.8, 19.7]
    paper_test = published.query("source == 'paper' and split == 'test' and metric == 'bpc'")
    assert sorted(zip(paper_test["dataset"], paper_test["params_m"], paper_test["value"])) == [
        ("enwik8", 39, 1.01), ("enwik8", 114, 0.98), ("text8", 38, 1.11), ("text8", 114, 1.08)]


def test_table_numbers_against_fixture(runs: pd.DataFrame) -> None:
    table1 = table_numbers(runs, load_published(), ("enwik8", "text8")).set_index(["dataset", "source", "params_paper_m"])
    small = table1.loc[("enwik8", "paper", 39)]
    mean, std = mean_std((1.03, 1.05))
    assert (small["test_paper"], small["test_ours"], small["test_std"], small["test_n"]) == (
        1.01, pytest.approx(mean), pytest.approx(std), 2)
    assert small["test_delta"] == pytest.approx(mean - 1.01) and small["params_ours"] == 38_500_000
    readme = table1.loc[("enwik8", "authors_readme", 39)]
    assert readme["dev_delta"] == pytest.approx(np.mean((1.05, 1.07)) - 1.03)
    assert table1.loc[("text8", "paper", 38), "test_n"] == 0 and np.isnan(table1.loc[("text8", "paper", 38), "test_ours"])
    table2 = table_numbers(runs, load_published(), ("wikitext-103",)).set_index("source")
    assert table2.loc["paper", "dev_delta"] == pytest.approx(21.0 - 19.7)
    assert table2.loc["paper", "test_delta"] == pytest.approx(22.0 - 20.6)


def test_tables_written_as_markdown_and_latex(runs: pd.DataFrame, tmp_path: Path) -> None:
    write_tables(runs, tmp_path)
    table1 = (tmp_path / "table1.md").read_text()
    assert "| enwik8 | All-attention network + adaptive span | paper | 39M | 38.50M | — | 1.060 ± 0.014 (n=2) | — " \
           "| 1.01 | 1.040 ± 0.014 (n=2) | +0.030 |" in table1
    assert "| text8 | All-attention network + adaptive span | paper | 38M | — |" in table1
    # The WikiText-103 run's test split was capped (eval.max_tokens): its cells say so, the full enwik8 ones do not.
    assert "| 19.7 | 21.00 (n=1) * | +1.30 * | 20.6 | 22.00 (n=1) * | +1.40 * |" in (tmp_path / "table2.md").read_text()
    assert "part of the split (eval.max_tokens)" in table1 and "(n=2) *" not in table1
    assert r"1.040 $\pm$ 0.014 (n=2)" in (tmp_path / "table1.tex").read_text()


def test_compare_variants_deltas(demo_runs: pd.DataFrame) -> None:
    table = compare_variants(demo_runs, "transformer")
    base_mean = np.mean(DEV[("transformer", 0)])
    assert table["is_baseline"].tolist() == [True] + [False] * 7 and set(table["metric"]) == {"dev_bpc"}
    for _, row in table.iterrows():
        key = (row["variant"], row["num_persistent"])
        mean, std = mean_std(DEV[key])
        assert (row["mean"], row["std"], row["n"]) == (pytest.approx(mean), pytest.approx(std), 2)
        assert row["delta"] == pytest.approx(mean - base_mean)
        assert row["delta_params"] == PARAMS[key] - PARAMS[("transformer", 0)]
        assert row["floor_gap"] == pytest.approx(mean - FLOOR)


def test_compare_variants_baseline_choice(demo_runs: pd.DataFrame) -> None:
    with pytest.raises(UserError, match="ambiguous"):
        compare_variants(demo_runs, "all_attention")
    table = compare_variants(demo_runs, "all_attention:16", split="test")
    base = table[table["is_baseline"]].iloc[0]
    assert (base["variant"], base["num_persistent"], base["delta"], base["metric"]) == ("all_attention", 16, 0.0, "test_bpc")


def test_report_formats(demo_runs: pd.DataFrame) -> None:
    table = compare_variants(demo_runs, "transformer")
    assert len(pd.read_csv(io.StringIO(format_report(table, "csv")))) == 8
    markdown = format_report(table, "markdown")
    assert "| transformer (baseline) | 0 | 2 | 2 | 2.080 ± 0.042 | +0.000 | 17.5k | +0 |" in markdown
    assert "| attention_only | 0 | 4 | 2 | 2.550 ± 0.071 | +0.470 | 17.0k | -500 |" in markdown
    assert r"\begin{tabular}" in format_report(table, "latex")


@pytest.mark.parametrize("module", ["collect", "figure2", "tables", "report"])
def test_cli_missing_dir_is_one_line_error(module: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", f"analysis.{module}", str(tmp_path / "missing")],
                            cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "missing" in result.stderr


def test_report_cli_on_fixture(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "analysis.report", str(DEMO), "--format", "csv"],
                            cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "1 run(s) without a final evaluation left out (FAILED 1)" in result.stderr
    assert set(pd.read_csv(io.StringIO(result.stdout))["variant"]) == {v for v, _ in DEV}


def test_the_same_configuration_in_two_grids_counts_once(tmp_path):
    """Copies of one run under two grid folders (same config hash) are one seed, not two."""
    import shutil

    from analysis.collect import load_runs

    source = FIXTURES / "fig2_demo" / "all-attention-n4-s1-a370445d"
    for grid, name in (("left", "all-attention-n4-s1-a370445d"), ("right", "all-attn-s1-a370445d")):
        shutil.copytree(source, tmp_path / grid / name)
    runs = load_runs([tmp_path])
    assert len(runs) == 1 and runs["run_id"].iloc[0].endswith("a370445d")


# --- GRID.yaml inputs follow the grid's manifest (what was submitted, with which --set/--only) ---


def _tiny_grid(folder: Path, name: str = "four") -> Path:
    """A 2 x 2 grid that expands without data (run ids only); no run of it is trained here."""
    import json

    import yaml

    from tests.helpers import TINY_RUN

    base = json.loads(json.dumps(TINY_RUN))
    base["data"]["path"] = str(folder / "no-corpus")
    base["grid"] = {"model.num_persistent": [4, 8], "model.num_layers": [1, 2]}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def _record(grid: Path, root: Path, overrides: list[str], only: list[str], runs: list[str] | None = None,
            fixture: str | None = None):
    """Record a submission of `grid` as slurm.submit does (every run of the expansion unless `runs`), and
    give each run a run directory: a copy of the fixture run `fixture`, or just its config.yaml."""
    import shutil

    from experiments import manifest
    from experiments.grid import load_grid

    grid_dir = root / grid.stem
    submission = manifest.new_submission(grid, overrides, only)
    ids = runs or [cfg.run_id for cfg in load_grid(grid, only, overrides).runs]
    for index, run_id in enumerate(ids):
        if fixture:
            shutil.copytree(run_dir(fixture), grid_dir / run_id)
        else:
            (grid_dir / run_id).mkdir(parents=True)
            (grid_dir / run_id / "config.yaml").write_text("name: x\n")
    return manifest.record_jobs(grid_dir, submission, [(r, grid_dir / r, str(900 + i), i) for i, r in enumerate(ids)],
                                "local")


def _ids(grid: Path, overrides=(), only=()) -> list[str]:
    from experiments.grid import load_grid

    return [cfg.run_id for cfg in load_grid(grid, only, overrides).runs]


def test_manifest_records_every_submission_with_its_settings(tmp_path: Path) -> None:
    from experiments import manifest

    grid, root = _tiny_grid(tmp_path), tmp_path / "root"
    first = _record(grid, root, ["train.steps=3"], ["model.num_layers=1"])
    # one command, two job arrays: one submission
    grid_dir = root / "four"
    second = manifest.new_submission(grid, ["train.steps=5"], [])
    a, b = _ids(grid, ["train.steps=5"])[:2]
    manifest.record_jobs(grid_dir, second, [(a, grid_dir / a, "11_0", 0)], "slurm")
    manifest.record_jobs(grid_dir, second, [(b, grid_dir / b, "12_0", 0)], "slurm")
    loaded = manifest.load(grid_dir)
    assert [(s.number, s.overrides, s.only, len(s.runs)) for s in loaded.submissions] == [
        (1, ["train.steps=3"], ["model.num_layers=1"], 2), (2, ["train.steps=5"], [], 2)]
    assert first.number == 1 and loaded.submissions[1].executor == "slurm"
    assert loaded.runs[b] == {**loaded.runs[b], "job_id": "12_0", "run_dir": b, "submission": 2}
    assert loaded.run_dir(b) == grid_dir / b and loaded.submissions_of(a) == [2]
    assert "--set train.steps=3 --only model.num_layers=1, 2 runs" in loaded.submissions[0].describe()


def test_manifest_written_before_submissions_were_recorded_still_reads(tmp_path: Path) -> None:
    import json

    from experiments import manifest

    grid, root = _tiny_grid(tmp_path), tmp_path / "root"
    old_ids = _ids(grid)[:2]
    (root / "four").mkdir(parents=True)
    (root / "four" / "manifest.json").write_text(json.dumps({
        r: {"job_id": f"7_{i}", "array_index": i, "executor": "slurm", "submitted": f"2024-01-0{i + 1}T10:00:00"}
        for i, r in enumerate(old_ids)}))
    loaded = manifest.load(root / "four")
    (legacy,) = loaded.submissions
    assert set(legacy.runs) == set(old_ids) and not legacy.settings_known and legacy.time == "2024-01-01T10:00:00"
    assert loaded.runs[old_ids[1]]["job_id"] == "7_1" and loaded.run_dir(old_ids[1]) == root / "four" / old_ids[1]
    # The plain expansion stands for its settings: the grid's other runs show as not submitted.
    shown = manifest.select(grid, root)
    assert [(r.run_id, r.submitted) for r in shown.runs] == [(r, r in old_ids) for r in _ids(grid)]
    # A new submission keeps the old runs as submission #1.
    _record(grid, root, ["train.steps=3"], [])
    again = manifest.load(root / "four")
    assert [s.number for s in again.submissions] == [1, 2] and again.submissions[0].overrides is None
    assert set(again.runs) == set(old_ids) | set(_ids(grid, ["train.steps=3"]))


def test_selection_shows_the_submitted_runs_not_a_fresh_expansion(tmp_path: Path) -> None:
    from experiments import manifest

    grid, root = _tiny_grid(tmp_path), tmp_path / "root"
    never = manifest.select(grid, root)
    assert not never.manifest.exists and [r.submitted for r in never.runs] == [False] * 4
    _record(grid, root, ["train.steps=3"], ["model.num_layers=1"])
    everything = manifest.select(grid, root)
    submitted = _ids(grid, ["train.steps=3"], ["model.num_layers=1"])
    # the other runs of the same expansion are "not submitted"; the plain grid's runs are not shown at all
    assert [(r.run_id, r.submitted) for r in everything.runs] == [(r, r in submitted) for r in _ids(grid, ["train.steps=3"])]
    assert [s.number for s in everything.shown] == [1] and "every submission" in everything.header()[0]
    narrowed = manifest.select(grid, root, ["train.steps=3"], ["model.num_persistent=8"])
    assert [(r.run_id, r.submitted) for r in narrowed.runs] == [
        (r, r in submitted) for r in _ids(grid, ["train.steps=3"], ["model.num_persistent=8"])]
    assert "matching --set train.steps=3 --only model.num_persistent=8" in narrowed.summary()
    other = manifest.select(grid, root, ["train.steps=4"])
    assert not other.submitted_runs() and other.shown == []
    with pytest.raises(UserError, match="no such grid file"):
        manifest.select(tmp_path / "missing.yaml", root)


def test_grid_input_resolves_the_submitted_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from analysis.inputs import add_inputs_argument, selection

    grid, root = _tiny_grid(tmp_path), tmp_path / "root"
    _record(grid, root, ["train.steps=3"], ["model.num_layers=1"])
    _record(grid, root, ["train.steps=5"], ["model.num_persistent=4"])
    first, second = _ids(grid, ["train.steps=3"], ["model.num_layers=1"]), _ids(grid, ["train.steps=5"], ["model.num_persistent=4"])
    # every submission, whatever it was submitted with
    assert resolve_run_dirs([grid], root=root) == [(root / "four" / r).resolve() for r in first + second]
    assert "4 submitted run(s) from submission(s) #1" in capsys.readouterr().err
    # --set/--only given anywhere on the command line narrow it to that expansion
    parser = argparse.ArgumentParser()
    add_inputs_argument(parser)
    args = parser.parse_args(["--set", "train.steps=5", str(grid), "--root", str(root), "--only", "model.num_layers=2"])
    assert resolve_run_dirs(args.inputs, **selection(args)) == [(root / "four" / second[1]).resolve()]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 submitted run(s) matching --set train.steps=5 --only model.num_layers=2" in err
    assert "submission(s) #2" in err and "#1" not in err
    with pytest.raises(UserError, match="no run directory .* matching --set train.steps=4"):
        resolve_run_dirs([grid], root=root, overrides=["train.steps=4"])
    with pytest.raises(UserError, match="select the runs of a GRID.yaml"):
        resolve_run_dirs([root / "four"], overrides=["train.steps=3"])


def test_grid_input_without_a_manifest_reads_the_expansion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid, root = _tiny_grid(tmp_path), tmp_path / "root"
    placed = _ids(grid)[1]
    (root / "four" / placed).mkdir(parents=True)
    (root / "four" / placed / "config.yaml").write_text("name: x\n")
    assert resolve_run_dirs([grid], root=root) == [(root / "four" / placed).resolve()]
    err = capsys.readouterr().err
    assert "no manifest.json" in err
    # the runs left out are said (a fresh-user finding: a run folder removed was dropped silently)
    assert "note: 3 of the runs have no config.yaml" in err and "left out" in err


def test_report_cli_on_a_grid_submitted_with_set_and_only(tmp_path: Path) -> None:
    grid, root = _tiny_grid(tmp_path), tmp_path / "root"
    wanted = ["--set", "train.steps=3", "--only", "model.num_layers=1"]
    _record(grid, root, ["train.steps=3"], ["model.num_layers=1"], runs=_ids(grid, ["train.steps=3"], ["model.num_layers=1"])[:1],
            fixture="transformer-n0-s1")
    _record(grid, root, ["train.steps=3"], ["model.num_layers=1"], runs=_ids(grid, ["train.steps=3"], ["model.num_layers=1"])[1:],
            fixture="all-attention-n4-s1")
    _record(grid, root, ["train.steps=9"], [], runs=_ids(grid, ["train.steps=9"])[:1], fixture="attention-only-n0-s1")
    cmd = [sys.executable, "-m", "analysis.report", str(grid), "--root", str(root), *wanted, "--format", "csv"]
    result = subprocess.run(cmd, cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert set(pd.read_csv(io.StringIO(result.stdout))["variant"]) == {"transformer", "all_attention"}
    assert "from submission(s) #1" in result.stderr and "#2" in result.stderr and "#3" not in result.stderr


# --- Figure 2 readability: axis names, the transformer's band, intervals, n and depth per point ---


def test_figure2_axis_names_corpus_and_evaluated_subset(demo_runs: pd.DataFrame) -> None:
    data = figure2_data(demo_runs)
    assert set(data["dataset_label"]) == {"lexicon (synthetic)"} and set(data["subset"]) == {"whole valid split"}
    capped = demo_runs.assign(**{"dataset": "text", "data_name": "wikitext-2-char", "eval.max_tokens": 200_000})
    again = figure2_data(capped)
    assert set(again["dataset_label"]) == {"WikiText-2 characters"}
    assert set(again["subset"]) == {"first 200k characters of valid"}


def test_figure2_points_carry_their_95_percent_interval(demo_runs: pd.DataFrame) -> None:
    from analysis.aggregate import t_quantile

    data = figure2_data(demo_runs)
    (reference,) = data[data["panel"] == "reference"].itertuples()
    assert (reference.series, reference.label) == ("transformer", "transformer, 2 layers")
    for row in data.itertuples():
        _, std = mean_std(DEV[(row.variant, row.num_persistent)])
        assert row.ci == pytest.approx(t_quantile(1) * std / np.sqrt(2))  # 12.706 x std / sqrt(n) at n = 2


def test_figure2_published_points_beside_ours_only_when_comparable(runs: pd.DataFrame) -> None:
    enwik8 = runs[runs["dataset"] == "enwik8"]  # 38.50M parameters, evaluated on the whole split
    published = figure2_data(enwik8, load_published()).query("series != 'ours'").set_index("num_persistent")
    assert published.loc[1024, "panel"] == "left" and published.loc[2048, "panel"] == "published"  # 39M / 114M
    capped = figure2_data(enwik8.assign(eval_full=False), load_published()).query("series != 'ours'")
    assert set(capped["panel"]) == {"published"}


def test_figure2_draws_points_with_intervals_labels_and_the_claims(demo_runs: pd.DataFrame, tmp_path: Path) -> None:
    from matplotlib.container import BarContainer, ErrorbarContainer

    from analysis.claims import evaluate_claims
    from analysis.figure2 import render_figure

    data, claims = figure2_data(demo_runs), evaluate_claims(demo_runs)
    figure = render_figure(data, with_published=False, claims=claims)
    left, right = figure.axes[:2]
    for ax in (left, right):
        assert ax.get_ylabel() == "dev bpc (lower is better)\nlexicon (synthetic), whole valid split"
        assert not any(isinstance(c, BarContainer) for c in ax.containers)  # points, not bars from a baseline
        assert any(isinstance(c, ErrorbarContainer) for c in ax.containers)
        assert "2 layers\nn=2" in [t.get_text() for t in ax.texts]
    assert left.get_ylim() == right.get_ylim()
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert legend[0] == "transformer, 2 layers (n=2; 95% CI band)"
    text = "\n".join(t.get_text() for t in figure.texts)
    assert "(c) the joint softmax better than each separate variant: inconclusive at n=2" in text
    paths = write_figure2(data, tmp_path / "a", False, claims)
    assert paths[0].read_bytes() == write_figure2(data, tmp_path / "b", False, claims)[0].read_bytes()


def test_figure2_wraps_long_claim_lines_inside_the_figure(demo_runs: pd.DataFrame) -> None:
    """A comparison's line with a long note (head-split's, in results/wt2_char) ran off the right edge."""
    from analysis.claims import evaluate_claims
    from analysis.figure2 import TEXT_WIDTH, render_figure

    claims = evaluate_claims(demo_runs)
    claims.loc[claims.index[-1], "note"] = "a note long enough to need a second line " * 4
    lines = "\n".join(t.get_text() for t in render_figure(figure2_data(demo_runs), False, claims).texts).splitlines()
    assert max(len(line) for line in lines) <= TEXT_WIDTH
    continued = [i for i, line in enumerate(lines) if line.startswith("        ") and "second line" in line]
    assert continued and lines[continued[0] - 1].startswith("      ") and not lines[continued[0] - 1].startswith("        ")


def test_folder_scan_skips_hidden_folders(tmp_path: Path) -> None:
    """`submit --force` keeps the old run under <grid>/.replaced/: a folder scan never reads it."""
    from analysis.inputs import scan_run_dirs

    for rel in ("grid/run-a", "grid/.replaced/run-a-20261129", "grid/.submitit/x/run"):
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "config.yaml").write_text("name: x\n")
    assert scan_run_dirs(tmp_path) == [tmp_path / "grid" / "run-a"]


@pytest.mark.parametrize("body", [
    '{"format": 2, "runs": 5, "submissions": 3}',  # a fresh-user finding: TypeError traceback in slurm.status
    '{"format": 2, "runs": {}, "submissions": 3}',
    '{"format": 2, "runs": {}, "submissions": [{"number": "1"}]}',
    '{"format": 2, "runs": {}, "submissions": [{"number": 1, "overrides": "a=b"}]}',
    '{"format": 2, "runs": {"r": {"run_dir": 3}}}',
    '{"format": 2, "runs": {"r": {"submission": "one"}}}',
    '{"r": 5}',
    '[1, 2]',
])
def test_manifest_of_the_wrong_shape_is_one_error_naming_the_file(tmp_path, body):
    """Every reader of a grid's manifest.json (slurm.status, slurm.submit, the analysis
    commands) gets one UserError naming the file for valid JSON of another shape."""
    from experiments import manifest

    (tmp_path / "manifest.json").write_text(body)
    with pytest.raises(UserError) as info:
        manifest.load(tmp_path)
    assert "manifest.json" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("body", [b'{"format": 2, "ru', b"\xff\xfe{}", None])
def test_a_torn_undecodable_or_unreadable_manifest_is_one_error_with_the_way_out(tmp_path, body):
    """Undecodable bytes raised UnicodeDecodeError, a folder in its place IsADirectoryError."""
    from experiments import manifest

    if body is None:
        (tmp_path / "manifest.json").mkdir()
    else:
        (tmp_path / "manifest.json").write_bytes(body)
    with pytest.raises(UserError) as info:
        manifest.load(tmp_path)
    assert "manifest.json" in str(info.value) and "\n" not in str(info.value)
    assert "move it aside" in str(info.value)


def test_tokens_per_s_is_the_median_of_the_logged_intervals_not_the_last(tmp_path: Path) -> None:
    """eval.json's tokens/s is the last logging interval's: runs of one FLOP count read 8.0k to
    14.8k in a committed comparison (a fresh-user doubt)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir("attention-only-n0-s1"), run)
    lines = [json.dumps({"step": 100 * (i + 1), "split": "train", "loss": 1.0, "tokens_per_s": rate})
             for i, rate in enumerate([9000.0, 1000.0, 9100.0, 9200.0, 500.0])]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert collect_runs([run]).iloc[0]["tokens_per_s"] == 9000.0
    (run / "metrics.jsonl").write_text("")
    assert collect_runs([run]).iloc[0]["tokens_per_s"] == 5000.0  # no interval logged: eval.json's figure
