"""Grid expansion: deterministic, explicit, validated before anything runs."""
from __future__ import annotations

import textwrap

import pytest

from experiments.grid import load_grid
from model.errors import ConfigError, UserError
from tests.test_config import VALID


def write_grid(tmp_path, body: str):
    (tmp_path / "base.yaml").write_text(VALID)
    path = tmp_path / "sweep.yaml"
    path.write_text("base: base.yaml\n" + textwrap.dedent(body))
    return path


def test_cartesian_product_runs_and_seeds(tmp_path):
    grid = load_grid(write_grid(tmp_path, """
        grid:
          model.num_persistent: [4, 8]
          model.num_layers: [1, 2]
        runs:
          - {name: joint}
          - {name: split, model.variant: attn_split}
        seeds: [0, 1]
    """))
    assert grid.name == "sweep" and len(grid.runs) == 2 * 4 * 2
    first = grid.runs[0]
    assert first.name == "joint-num_persistent=4-num_layers=1-seed=0" and first.grid == "sweep"
    assert [r.train.seed for r in grid.runs[:2]] == [0, 1]
    assert {r.model.variant for r in grid.runs} == {"all_attention", "attn_split"}
    assert len({r.run_id for r in grid.runs}) == len(grid.runs)
    again = load_grid(tmp_path / "sweep.yaml")
    assert [r.run_id for r in again.runs] == [r.run_id for r in grid.runs]


def test_only_filters_on_resolved_values(tmp_path):
    path = write_grid(tmp_path, "grid:\n  model.num_persistent: [4, 8]\nseeds: [0, 1]\n")
    picked = load_grid(path, ["model.num_persistent=8", "train.seed=1"])
    assert [(r.model.num_persistent, r.train.seed) for r in picked.runs] == [(8, 1)]


def test_run_dirs_are_grid_name_and_run_id(tmp_path):
    grid = load_grid(write_grid(tmp_path, "seeds: [5]\n"))
    assert grid.run_dirs(tmp_path / "root") == [tmp_path / "root" / "sweep" / grid.runs[0].run_id]


@pytest.mark.parametrize("body,key", [
    ("grid:\n  model.num_persistent: 4\n", "grid.model.num_persistent"),
    ("grid:\n  model.num_persistant: [4]\n", "model.num_persistant"),
    ("grid:\n  model.num_heads: [3]\n", "model.num_heads"),
    ("runs: {name: x}\n", "runs"),
    ("seeds: [a]\n", "seeds"),
    ("grid:\n  train.seed: [1, 1]\n", "same run"),
    # a key set twice: the later value won silently, under the other's name (a fresh-user finding)
    ("grid:\n  train.seed: [0, 1]\nseeds: [0]\n", "seeds: train.seed is also swept by grid"),
    ("grid:\n  model.num_persistent: [4, 8]\nruns:\n  - {name: a, model.num_persistent: 2}\n",
     r"runs\[0\]\.model\.num_persistent: is also swept by grid"),
    ("seeds: [0, 1]\nruns:\n  - {name: a, train: {seed: 3}}\n", r"runs\[0\]\.train\.seed: is also set by seeds"),
])
def test_bad_grids_are_rejected(tmp_path, body, key):
    with pytest.raises(ConfigError, match=key):
        load_grid(write_grid(tmp_path, body))


@pytest.mark.parametrize("stem", [".", "..", ".hidden", "-dash", "a b"])
def test_a_grid_whose_name_is_not_a_plain_folder_is_refused(tmp_path, stem):
    """The grid's name is its folder under the results root: `..yaml` would write runs into the root."""
    good = write_grid(tmp_path, "runs: [{name: joint}]\n")
    bad = tmp_path / f"{stem}.yaml"
    bad.write_text(good.read_text())
    with pytest.raises(UserError, match="not a plain folder name") as err:
        load_grid(bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("runs", [
    "[{name: a}, {name: b}]",
    "[{name: a}, {name: b, train.log_every: 7}]",  # log_every is not hashed: still one run
])
def test_points_that_are_one_run_under_two_names_are_refused(tmp_path, runs):
    """The name is not in the config hash, so both points trained into two folders and
    analysis.collect kept one (a fresh-user finding); seeds differ in the hash and stay allowed."""
    first = load_grid(write_grid(tmp_path, "runs: [{name: a}]\nseeds: [0, 1]\n")).runs[0]
    path = write_grid(tmp_path, f"runs: {runs}\nseeds: [0, 1]\n")
    with pytest.raises(ConfigError) as err:
        load_grid(path)
    message = str(err.value)
    assert f"points 0 (a-seed=0) and 2 (b-seed=0) are the same run (config hash {first.config_hash})" in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="same run"):
        load_grid(path, ["train.seed=1"])  # --only does not hide a broken grid
