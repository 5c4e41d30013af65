"""A configuration in two grids of one results root trains once (experiments/store.py)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
from pathlib import Path

import pytest

from analysis.collect import load_runs
from experiments import store
from experiments.grid import load_grid
from slurm import manifest, status as slurm_status, submit as slurm_submit
from slurm.job import read_attempts
from slurm.profile import load_profile
from tests.conftest import PROJECT_ROOT
from tests.helpers import prepare_lexicon
from tests.test_slurm import wait_done, write_grid

PAPER = PROJECT_ROOT / "experiments" / "paper"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return prepare_lexicon(tmp_path_factory.mktemp("lexicon") / "lexicon")


def _run(command, grid: Path, root: Path, *args: str) -> str:
    """A command's stdout, run in this process (a new interpreter would cost seconds for its imports)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert command([str(grid), "--root", str(root), *args]) == 0, out.getvalue()
    return out.getvalue()


def submit(grid: Path, root: Path, *args: str) -> str:
    return _run(slurm_submit.main, grid, root, "--executor", "local", *args)


def status(grid: Path, root: Path, *args: str) -> str:
    return _run(slurm_status.main, grid, root, *args)


def _row(table: str, run_id: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(run_id + " "))


def _metrics_files(root: Path) -> set[str]:
    """Every metrics.jsonl under the root, once however many grids link to its directory."""
    return {os.path.realpath(Path(d) / "metrics.jsonl") for d, _, files in os.walk(root) if "metrics.jsonl" in files}


def test_a_run_two_grids_share_trains_once_and_both_grids_read_it(corpus, tmp_path):
    alpha = write_grid(tmp_path, corpus, "alpha", {"runs": [{"name": "alpha-p8"}]})
    beta = write_grid(tmp_path, corpus, "beta", {"runs": [{"name": "beta-p8"}, {"name": "beta-p4", "model.num_persistent": 4}]})
    root = tmp_path / "root"
    (shared_a,), (shared_b, own_b) = load_grid(alpha).runs, load_grid(beta).runs
    assert shared_a.config_hash == shared_b.config_hash and shared_a.run_id != shared_b.run_id
    submit(alpha, root, "--wait")
    second = submit(beta, root, "--wait")
    row = _row(second, shared_b.run_id)
    assert " DONE " in row and "shared with grid alpha" in row, second
    assert "1 done, 0 active, 1 to submit" in second and "submitted 1 runs" in second

    entry, real = root / "beta" / shared_b.run_id, root / "alpha" / shared_a.run_id
    assert entry.is_symlink() and entry.resolve() == real.resolve()
    assert len(_metrics_files(root)) == 2  # the shared run's and beta-p4's
    assert json.loads((real / "status.json").read_text())["attempt"] == 1 and len(read_attempts(real)) == 1
    assert shared_b.run_id not in manifest.load(root / "beta")  # beta submitted only its own run
    for grid, count in ((alpha, 1), (beta, 2)):
        runs = load_runs([grid], root=root)
        assert len(runs) == count and shared_a.config_hash in set(runs["config_hash"])
    for found in (load_runs([beta], root=root), load_runs([root / "beta"])):  # by grid file, by folder (the link)
        shared = found.set_index("config_hash").loc[shared_b.config_hash]
        assert (shared["grid"], shared["name"], shared["run_id"]) == ("beta", shared_b.name, shared_b.run_id)
    assert len(load_runs([root / "alpha", root / "beta"])) == 2  # the shared run once
    table = status(beta, root)
    assert " DONE " in _row(table, shared_b.run_id) and "not submitted" not in table
    submit(beta, root, "--force", "--only", "name=beta-p8", "--wait")  # rerun, for both grids, from beta
    table = status(alpha, root)
    job = manifest.load(root / "beta")[shared_b.run_id]["job_id"]
    assert f" other {job} " in _row(table, shared_a.run_id), table  # not alpha's submission number
    assert f"{shared_a.run_id}: job {job} is submission #2 of grid beta" in table, table


def _processes_of(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        children.setdefault(int(text[text.rindex(")") + 2:].split()[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        found.append(queue.pop(0))
        queue += children.get(found[-1], [])
    return found


def _signal_tree(pid: int, sig: signal.Signals) -> None:
    """Stop (or continue) a local job: its controller first, so that it starts nothing meanwhile."""
    os.kill(pid, sig)
    for child in _processes_of(pid)[1:]:
        os.kill(child, sig)


def test_a_run_another_grid_is_training_is_not_submitted_again_nor_cancelled(corpus, tmp_path):
    alpha = write_grid(tmp_path, corpus, "alpha", {"runs": [{"name": "alpha-p8"}]})
    beta = write_grid(tmp_path, corpus, "beta", {"runs": [{"name": "beta-p8"}]})
    root = tmp_path / "root"
    (shared_a,), (shared_b,) = load_grid(alpha).runs, load_grid(beta).runs
    submit(alpha, root)
    (job,) = manifest.own_live_runs(root / "alpha").values()
    _signal_tree(int(job), signal.SIGSTOP)  # still running, however long beta's commands take on this machine
    try:
        second = submit(beta, root)
        row = _row(second, shared_b.run_id)
        assert " ACTIVE " in row and f"job {job} of grid alpha" in row, second
        assert "submitted 0 runs" in second
        table = status(beta, root)
        assert "no job submitted from this grid (no manifest.json); 1 run(s) shared with other grids" in table, table
        shown = _row(table, shared_b.run_id)
        assert f" {job} " in shown and "not submitted" not in shown and "LOST" not in shown, shown
        cancel = status(beta, root, "--cancel")
        assert "cancelled 0 of 1 runs shown (0 not live, 1 shared with another grid left running)" in cancel, cancel
        assert f"{shared_b.run_id}: job {job} of grid alpha runs it" in cancel, cancel
        assert manifest.own_live_runs(root / "alpha") == {shared_a.run_id: job}
    finally:
        _signal_tree(int(job), signal.SIGCONT)
    (final,) = wait_done(alpha, root)
    assert final["state"] == "DONE" and final["attempt"] == 1
    assert len(read_attempts(root / "alpha" / shared_a.run_id)) == 1 and len(_metrics_files(root)) == 1
    assert " DONE " in _row(status(beta, root), shared_b.run_id)


def test_of_two_grids_planned_at_once_the_second_links_to_the_first(corpus, tmp_path):
    alpha = write_grid(tmp_path, corpus, "alpha", {"runs": [{"name": "alpha-p8"}]})
    beta = write_grid(tmp_path, corpus, "beta", {"runs": [{"name": "beta-p8"}]})
    root, profile = tmp_path / "root", load_profile("local")
    (planned_a,), (planned_b,) = (slurm_submit.plan(load_grid(g), root, profile, False) for g in (alpha, beta))
    assert planned_a.state == planned_b.state == "SUBMIT"  # neither directory exists yet
    slurm_submit._claim(root / "alpha", planned_a)
    slurm_submit._claim(root / "beta", planned_b)
    assert planned_a.state == "SUBMIT" and not planned_a.run_dir.path.is_symlink()
    assert planned_b.state == "ACTIVE" and planned_b.run_dir.path.resolve() == planned_a.run_dir.path.resolve()


def test_the_paper_configs_of_one_point_share_one_run_directory(tmp_path):
    """Figure 2 left's N = 2048, the right panel's all-attention bar and text8_large.yaml: one config
    (three names, so three run ids), one directory, whichever grid is submitted first."""
    left = next(c for c in load_grid(PAPER / "fig2_left.yaml").runs
                if c.model.variant == "all_attention" and c.model.num_persistent == 2048)
    right = next(c for c in load_grid(PAPER / "fig2_right.yaml").runs if c.model.variant == "all_attention")
    (text8,) = load_grid(PAPER / "text8_large.yaml").runs
    assert left.config_hash == right.config_hash == text8.config_hash
    made = store.claim(tmp_path, "fig2_right", right)
    assert not made.elsewhere and made.entry.is_dir()
    for grid, cfg in (("fig2_left", left), ("text8_large", text8)):
        assert store.locate(tmp_path, grid, cfg).directory == made.directory
        linked = store.claim(tmp_path, grid, cfg)
        assert linked.entry.is_symlink() and linked.entry.resolve() == made.directory
    assert store.locate(tmp_path, "fig2_right", right).sharers == ("fig2_left", "text8_large")


def test_a_link_whose_directory_was_deleted_is_claimed_afresh(corpus, tmp_path):
    """The grid holding a shared run deleted its folder: the other grid's dangling link is replaced by
    a directory of its own (trained there), and nothing is recreated in the deleted grid's folder."""
    import shutil

    alpha = write_grid(tmp_path, corpus, "alpha", {"runs": [{"name": "alpha-p8"}]})
    beta = write_grid(tmp_path, corpus, "beta", {"runs": [{"name": "beta-p8"}]})
    root = tmp_path / "root"
    (cfg_a,), (cfg_b,) = load_grid(alpha).runs, load_grid(beta).runs
    store.claim(root, "alpha", cfg_a)
    assert store.claim(root, "beta", cfg_b).entry.is_symlink()
    shutil.rmtree(root / "alpha")
    shown = status(beta, root)
    assert "MISSING" in _row(shown, cfg_b.run_id) and "LOST" not in shown, shown
    assert f"{cfg_b.run_id}: shared with another grid through a link to " in shown and "was deleted" in shown, shown
    again = store.claim(root, "beta", cfg_b)
    assert again.entry.is_dir() and not again.entry.is_symlink() and not again.elsewhere
    assert not (root / "alpha").exists()
