"""Submission layer: against the real local SLURM (slurm/local/up.sh) and submitit's local executor."""
from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pandas as pd
import pytest
import yaml

from experiments.metrics import read_metrics
from experiments.grid import load_grid
from slurm import manifest
from slurm import status as slurm_status
from slurm.job import TrainingJob, read_attempts
from tests.conftest import PROJECT_ROOT
from tests.helpers import TINY_RUN, prepare_lexicon
from tests.slurm_cluster import require_slurm

GOLDEN = Path(__file__).parent / "golden"
DETERMINISTIC = ("step", "split", "loss", "bpc", "lr")
FINISHED = {"DONE", "FAILED", "CANCELLED", "LOST", "STALLED", slurm_status.NOT_SUBMITTED, *slurm_status.TERMINAL_SACCT}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return prepare_lexicon(tmp_path_factory.mktemp("lexicon") / "lexicon")


def write_grid(folder: Path, corpus: Path, name: str, body: dict, **sections: dict) -> Path:
    """A grid over the tiny run, with `sections` overriding the base."""
    from experiments.data import load_corpus

    base = json.loads(json.dumps(TINY_RUN))
    base["data"]["path"] = str(corpus)
    base["model"]["vocab_size"] = len(load_corpus(corpus).vocab)
    base["model"]["dropout"] = 0.0
    base["slurm"] = {"cpus_per_task": 1, "mem_gb": 1, "timeout_min": 20}
    for section, values in sections.items():
        base[section].update(values)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**base, **body}))
    return path


def submit(grid: Path, root: Path, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "slurm.submit", str(grid), "--root", str(root), *args]
    return subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def status(grid: Path, root: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "slurm.status", str(grid), "--root", str(root), *args]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def wait_done(grid: Path, root: Path, timeout: float = 240) -> list[dict]:
    """Poll until no run is pending or running (as `slurm.status` sees it, so that a job that
    died without updating its status.json ends the wait); returns each run's status.json."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = slurm_status.status_rows(grid, root)
        if all(r["state"] in FINISHED for r in rows):
            return [_status(r["run_dir"].path) for r in rows]
        time.sleep(1)
    raise AssertionError(f"runs not finished after {timeout} s:\n{status(grid, root)}")


def _closed_attempts(run_dir: Path, timeout: float = 60) -> list[dict]:
    """slurm.job.read_attempts once the last attempt has its outcome: the job records it after
    the trainer returns, so just after status.json says DONE (what wait_done sees) it may not
    be there yet (one CI run read it as None)."""
    deadline = time.time() + timeout
    while (attempts := read_attempts(run_dir)) and attempts[-1]["outcome"] is None and time.time() < deadline:
        time.sleep(0.5)
    return attempts


def _status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def results(grid: Path, root: Path) -> dict[str, tuple]:
    """Per run: final eval numbers and the deterministic metrics (requeue duplicates dropped)."""
    out = {}
    for run_dir in load_grid(grid).run_dirs(root):
        result = json.loads((run_dir / "eval.json").read_text())
        metrics = [tuple(r.get(k) for k in DETERMINISTIC) for r in read_metrics(run_dir / "metrics.jsonl")]
        out[run_dir.name] = (result["valid"], result["test"], metrics)
    return out


THREE_RUNS = {"grid": {"model.num_persistent": [4, 8, 16]}}


@pytest.fixture(scope="module")
def local_results(corpus, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("local")
    grid = write_grid(folder, corpus, "three", THREE_RUNS)
    proc = submit(grid, folder / "root", "--executor", "local", "--wait", timeout=300)
    assert proc.returncode == 0, proc.stderr
    return results(grid, folder / "root")


def test_local_executor_runs_the_grid(local_results):
    assert len(local_results) == 3


def test_grid_on_slurm_matches_local_and_is_not_resubmitted(corpus, tmp_path, local_results):
    require_slurm()
    grid = write_grid(tmp_path, corpus, "three", THREE_RUNS)
    root = tmp_path / "root"
    first = submit(grid, root, "--cluster", "local", "--max-parallel", "2")
    assert first.returncode == 0, first.stderr
    assert "3 to submit" in first.stdout and re.search(r"submitted 3 runs: jobs \d+", first.stdout)
    assert {e["array_index"] for e in manifest.load(root / "three").values()} == {0, 1, 2}
    states = wait_done(grid, root)
    assert [s["state"] for s in states] == ["DONE"] * 3
    assert results(grid, root) == local_results
    again = submit(grid, root, "--cluster", "local")
    assert again.returncode == 0 and "3 done, 0 active, 0 to submit" in again.stdout
    assert "submitted 0 runs" in again.stdout
    assert status(grid, root).count(" DONE ") == 3


def _job_of(root: Path, grid_name: str) -> str:
    (entry,) = manifest.load(root / grid_name).values()
    return entry["job_id"]


def _wait_for_step(run_dir: Path, step: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _status(run_dir).get("step", 0) >= step and _status(run_dir).get("state") == "RUNNING":
            return
        time.sleep(0.2)
    raise AssertionError(f"{run_dir.name} never reached step {step}")


def _long_run(tmp_path: Path, corpus: Path, name: str, steps: int, timeout_min: int = 20) -> Path:
    return write_grid(tmp_path, corpus, name, {}, train={"steps": steps, "checkpoint_every": 50, "log_every": 10,
                                                       "eval_every": 1000},
                      slurm={"cpus_per_task": 1, "mem_gb": 1, "timeout_min": timeout_min})


def _reference(tmp_path: Path, grid: Path) -> dict:
    ref_root = tmp_path / "reference"
    proc = submit(grid, ref_root, "--executor", "local", "--wait", timeout=400)
    assert proc.returncode == 0, proc.stderr
    return results(grid, ref_root)


def _running_on_slurm(tmp_path: Path, corpus: Path, name: str, steps: int, step: int) -> tuple[Path, Path]:
    """Submit a one-run grid to the local SLURM and wait until it has trained `step` steps: (grid, root)."""
    grid = _long_run(tmp_path, corpus, name, steps=steps)
    root = tmp_path / "root"
    assert submit(grid, root, "--cluster", "local").returncode == 0
    (run_dir,) = load_grid(grid).run_dirs(root)
    _wait_for_step(run_dir, step)
    return grid, root


def test_requeued_job_resumes_from_its_checkpoint(corpus, tmp_path):
    require_slurm()
    grid, root = _running_on_slurm(tmp_path, corpus, "requeue", steps=600, step=120)
    subprocess.run(["scontrol", "requeue", _job_of(root, "requeue")], check=True)
    (final,) = wait_done(grid, root, timeout=300)
    assert final["state"] == "DONE" and final["attempt"] >= 2
    assert results(grid, root) == _reference(tmp_path, grid)
    table = status(grid, root)
    assert re.search(r" DONE .* (\d+) ", table) and f" {final['attempt']} " in table


def _steps_lasting(tmp_path: Path, corpus: Path, seconds: float) -> int:
    """How many steps of `_long_run` train for about `seconds` on this machine, measured by a short
    run on the local executor (one CPU, as the SLURM job gets): the code's speed changes, the limit does not."""
    probe = _long_run(tmp_path / "probe", corpus, "probe", steps=1000)
    proc = submit(probe, tmp_path / "probe" / "root", "--executor", "local", "--wait", timeout=300)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = load_grid(probe).run_dirs(tmp_path / "probe" / "root")
    ms = sorted(r["ms_per_step"] for r in read_metrics(run_dir / "metrics.jsonl") if "ms_per_step" in r)
    return 50 * math.ceil(seconds * 1000 / ms[len(ms) // 2] / 50)


def test_job_reaching_its_time_limit_is_requeued_and_finishes(corpus, tmp_path):
    require_slurm()
    # slurmctld checks limits every 30 s and sends the signal early rather than late: with a
    # 2-minute limit and the signal 45 s before it, USR2 arrives 45-75 s into each attempt,
    # so a run of ~110 s of training (plus its start) cannot end within its first attempt, even
    # when the probe ran 40% slow (a clean-clone CI run finished one of ~85 s in its first attempt).
    grid = _long_run(tmp_path, corpus, "timeout", steps=_steps_lasting(tmp_path, corpus, 110), timeout_min=2)
    root = tmp_path / "root"
    assert submit(grid, root, "--cluster", "local").returncode == 0
    # The uninterrupted reference trains meanwhile on the other core (the job asks for one).
    reference = subprocess.Popen([sys.executable, "-m", "slurm.submit", str(grid), "--root", str(tmp_path / "reference"),
                                  "--executor", "local", "--wait"], cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL)
    (final,) = wait_done(grid, root, timeout=420)
    assert final["state"] == "DONE" and final["attempt"] >= 2, final
    assert reference.wait(timeout=400) == 0
    assert results(grid, root) == results(grid, tmp_path / "reference")


def test_cancel_stops_the_grid_and_a_resubmission_resumes_it(corpus, tmp_path):
    require_slurm()
    # 3000 steps: slurm.status takes seconds to start (torch), a 600-step run could end before it cancels.
    grid, root = _running_on_slurm(tmp_path, corpus, "cancel", steps=3000, step=60)
    assert "cancelled" in status(grid, root, "--cancel")
    (cancelled,) = wait_done(grid, root, timeout=120)
    deadline = time.time() + 60
    while manifest.live_runs(root / "cancel") and time.time() < deadline:
        time.sleep(0.5)
    assert " CANCELLED " in status(grid, root) and cancelled["step"] < 3000
    again = submit(grid, root, "--cluster", "local")
    assert again.returncode == 0 and "1 to submit" in again.stdout
    (final,) = wait_done(grid, root, timeout=300)
    assert final["state"] == "DONE" and final["attempt"] >= 2


def test_two_task_job_runs_ddp_and_matches_one_process(corpus, tmp_path):
    require_slurm()
    one = write_grid(tmp_path / "one", corpus, "ddp", {}, train={"steps": 20})
    two = write_grid(tmp_path / "two", corpus, "ddp", {}, train={"steps": 20},
                     slurm={"cpus_per_task": 1, "mem_gb": 1, "cpu_tasks_per_node": 2})
    for grid, root in ((one, tmp_path / "r1"), (two, tmp_path / "r2")):
        assert submit(grid, root, "--cluster", "local").returncode == 0
    (s1,), (s2,) = wait_done(one, tmp_path / "r1"), wait_done(two, tmp_path / "r2")
    assert s1["state"] == s2["state"] == "DONE"
    (r1,), (r2,) = results(one, tmp_path / "r1").values(), results(two, tmp_path / "r2").values()
    for a, b in zip(r1[2], r2[2]):
        assert a[:2] == b[:2] and a[2] == pytest.approx(b[2], abs=1e-5)
    assert r1[0]["loss"] == pytest.approx(r2[0]["loss"], abs=1e-5)
    (run_dir,) = load_grid(two).run_dirs(tmp_path / "r2")  # the attempt is recorded once, by global rank 0
    assert len((run_dir / "attempts.jsonl").read_text().splitlines()) == 2
    assert [(a["attempt"], a["start"], a["end"], a["outcome"]) for a in read_attempts(run_dir)] == [(1, 0, 20, "done")]


def test_failing_run_is_reported_with_its_error_tail(corpus, tmp_path):
    require_slurm()
    # The bad run reads a corpus that vanishes after submission.
    broken = tmp_path / "vanishing-corpus"
    broken.symlink_to(corpus)
    grid = write_grid(tmp_path, corpus, "mixed", {"runs": [{"name": "good"}, {"name": "bad", "data.path": str(broken)}]})
    root = tmp_path / "root"
    # Jobs wait while the partition is down, so the corpus is gone before the bad run starts
    # (a job can start, and a tiny run read its data, before `submit` has returned).
    subprocess.run(["scontrol", "update", "PartitionName=debug", "State=DOWN"], check=True)
    try:
        assert submit(grid, root, "--cluster", "local").returncode == 0
        broken.unlink()
    finally:
        subprocess.run(["scontrol", "update", "PartitionName=debug", "State=UP"], check=True)
    wait_done(grid, root)
    # FAILED as slurm.status sees it: status.json says so, or (refused before the trainer wrote
    # anything) the scheduler does; the tail shows the cause from status.json or the job's log.
    # sacct may record the job's end a moment after squeue forgets it: LOST until then.
    _wait_for(lambda: sorted(r["state"] for r in slurm_status.status_rows(grid, root)) == ["DONE", "FAILED"],
              "the failed job's state in accounting", timeout=60)
    tail = status(grid, root, "--tail")
    assert re.search(r"vanishing-corpus.*(no prepared data there|does not exist)", tail) and "FAILED" in tail


def _normalised(text: str, root: Path) -> str:
    return text.replace(str(root), "<ROOT>").replace(sys.executable, "<PYTHON>")


@pytest.mark.parametrize("profile", ["local", "example_gpus", "example_gres"])
def test_golden_sbatch_script_per_profile(corpus, tmp_path, profile):
    gpus = 0 if profile == "local" else 8
    grid = write_grid(tmp_path, corpus, "golden", THREE_RUNS,  # batches shared by the 8 GPUs' processes
                      train={"batch_size": 8}, eval={"batch_size": 8},
                      slurm={"gpus_per_node": gpus, "cpus_per_task": 4, "mem_gb": 32, "timeout_min": 600})
    root = tmp_path / "root"
    proc = submit(grid, root, "--cluster", profile, "--dry-run", "--max-parallel", "2")
    assert proc.returncode == 0, proc.stderr
    (script,) = (root / "golden" / "dry-run").glob("*.sbatch")
    golden = GOLDEN / f"{profile}.sbatch"
    text = _normalised(script.read_text(), root)
    if os.environ.get("UPDATE_GOLDEN") == "1":  # regenerate deliberately, then review the diff
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()
    assert not (root / "golden" / "manifest.json").exists()


def test_time_limit_too_short_for_the_signal_is_refused(corpus, tmp_path):
    grid = write_grid(tmp_path, corpus, "short", {}, slurm={"cpus_per_task": 1, "mem_gb": 1, "timeout_min": 1})
    proc = submit(grid, tmp_path / "root", "--cluster", "local", "--dry-run")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "slurm.timeout_min=1 is too short" in proc.stderr


def test_job_object_survives_cloudpickle(tmp_path):
    job = TrainingJob(tmp_path / "run")
    clone = cloudpickle.loads(cloudpickle.dumps(job))
    assert clone.run_dir == str(tmp_path / "run") and callable(clone)
    assert cloudpickle.loads(cloudpickle.dumps(clone.checkpoint())).function.run_dir == clone.run_dir


# --- runs submitted with --set / --only: status, cancel and analysis follow the manifest ---

FOUR_RUNS = {"grid": {"model.num_persistent": [4, 8], "model.num_layers": [1, 2]}}


def _expansion(grid: Path, flags: list[str]) -> list[str]:
    """Run ids of the grid expanded with slurm.submit's --set/--only `flags`."""
    pairs = list(zip(flags[::2], flags[1::2]))
    return [cfg.run_id for cfg in load_grid(grid, [v for k, v in pairs if k == "--only"],
                                            [v for k, v in pairs if k == "--set"]).runs]


def _states(grid: Path, root: Path, *flags: str) -> dict[str, str]:
    pairs = list(zip(flags[::2], flags[1::2]))
    rows = slurm_status.status_rows(grid, root, [v for k, v in pairs if k == "--set"],
                                    [v for k, v in pairs if k == "--only"])
    return {r["run"]: r["state"] for r in rows}


def _cancelled(output: str) -> set[str]:
    return set(re.findall(r"^cancelled (\S+) \(job", output, re.M))


def test_status_without_slurm_follows_the_manifest(tmp_path):
    """Recorded runs (any --set) show their state; the other runs of their expansion show as not submitted."""
    from experiments import manifest as record
    from experiments.run_dir import RunDir

    grid = write_grid(tmp_path, prepare_lexicon(tmp_path / "lexicon"), "four", FOUR_RUNS)
    root = tmp_path / "root"
    flags = ["--set", "train.steps=6", "--only", "model.num_layers=1"]
    submitted = _expansion(grid, flags)
    grid_dir = root / "four"
    for run_id in submitted:  # as the trainer leaves a finished run: DONE, with its final evaluation
        RunDir(grid_dir / run_id).write_status("DONE", stage="done", step=6)
        RunDir(grid_dir / run_id).write_eval({"unit": "bpc", "valid": {"bpc": 2.0}, "test": {"bpc": 2.0}})
    dead_pid = "999999999"
    record.record_jobs(grid_dir, record.new_submission(grid, ["train.steps=6"], ["model.num_layers=1"]),
                       [(r, grid_dir / r, dead_pid, i) for i, r in enumerate(submitted)], "local")
    others = [r for r in _expansion(grid, ["--set", "train.steps=6"]) if r not in submitted]
    assert _states(grid, root) == {**{r: "DONE" for r in submitted}, **{r: "not submitted" for r in others}}
    assert _states(grid, root, "--set", "train.steps=6", "--only", "model.num_persistent=8") == {
        submitted[1]: "DONE", others[1]: "not submitted"}
    assert set(_states(grid, root, "--set", "train.steps=7").values()) == {"not submitted"}
    table = status(grid, root)
    assert "submission #1" in table and "(--set train.steps=6 --only model.num_layers=1, 2 runs)" in table
    assert "4 runs: 2 DONE, 2 not submitted" in table
    for run_id in others:  # the steps its grid config trains ("0/?" before: a fresh-user finding)
        assert re.search(rf"^{run_id} +not submitted +- +0/6 ", table, re.M), table
    assert "cancelled 0 of 2 runs shown" in status(grid, root, "--cancel", *flags)


def test_runs_submitted_with_set_and_only_are_followed_by_status_cancel_and_report(corpus, tmp_path):
    require_slurm()
    grid = write_grid(tmp_path, corpus, "four", FOUR_RUNS)
    root = tmp_path / "root"
    quick = ["--set", "train.steps=6", "--only", "model.num_layers=1"]
    first = submit(grid, root, "--cluster", "local", *quick)
    assert first.returncode == 0 and "2 to submit" in first.stdout, first.stderr
    done = _expansion(grid, quick)
    wait_done(grid, root)
    unsent = [r for r in _expansion(grid, quick[:2]) if r not in done]
    assert _states(grid, root) == {**{r: "DONE" for r in done}, **{r: "not submitted" for r in unsent}}
    table = status(grid, root)
    assert "(--set train.steps=6 --only model.num_layers=1, 2 runs)" in table
    assert table.count(" DONE ") == 2 and table.count(" not submitted ") == 2

    # Two long submissions; cancelling the first of them cancels exactly its runs.
    long = ["--set", "train.steps=5000", "--only", "model.num_layers=2"]
    other = ["--set", "train.steps=5001", "--only", "model.num_layers=2", "--only", "model.num_persistent=4"]
    for flags in (long, other):
        proc = submit(grid, root, "--cluster", "local", *flags)
        assert proc.returncode == 0, proc.stderr
    cancelled = status(grid, root, "--cancel", *long)
    assert _cancelled(cancelled) == set(_expansion(grid, long)) and "submission #2" in cancelled
    (survivor,) = _expansion(grid, other)
    deadline = time.time() + 60
    while set(manifest.live_runs(root / "four")) != {survivor} and time.time() < deadline:
        time.sleep(0.5)
    assert set(manifest.live_runs(root / "four")) == {survivor}
    assert _cancelled(status(grid, root, "--cancel")) == {survivor}  # every submission: only it was live
    wait_done(grid, root)
    states = _states(grid, root)
    assert sorted(states.values()).count("CANCELLED") == 3 and [states[r] for r in done] == ["DONE", "DONE"]
    assert len(states) == 12  # three expansions (steps 6, 5000, 5001) of four runs each

    report = subprocess.run([sys.executable, "-m", "analysis.report", str(grid), "--root", str(root), *quick,
                             "--baseline", "all_attention:4", "--format", "csv"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    reported = pd.read_csv(io.StringIO(report.stdout))
    assert sorted(reported["num_persistent"]) == [4, 8] and set(reported["num_layers"]) == {1}
    assert "2 submitted run(s) matching --set train.steps=6 --only model.num_layers=1 from submission(s) #1" in report.stderr


# --- issue 10 on the real SLURM: the stop signal, requeue on progress, --requeue, liveness ---


def _wait_for(predicate, what: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _running_attempt(run_dir: Path, attempt: int, step: int = 0, stage: str | None = None):
    def check() -> bool:
        s = _status(run_dir)
        return (s.get("state") == "RUNNING" and s.get("attempt") == attempt and s.get("step", 0) >= step
                and (stage is None or s.get("stage") == stage))
    return check


def _local_profile(tmp_path: Path, **fields) -> Path:
    """slurm/clusters/local.yaml with `fields` changed, as a profile file."""
    data = yaml.safe_load((PROJECT_ROOT / "slurm" / "clusters" / "local.yaml").read_text())
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({**data, **fields}))
    return path


def test_case06_a_non_default_time_limit_signal_checkpoints_and_requeues(corpus, tmp_path):
    """A site sets SUBMITIT_PREEMPT_SIGNAL=HUP: the script asks SLURM for HUP, and HUP (what SLURM
    sends before the limit; here sent by hand) checkpoints and requeues the run, which then ends
    exactly like an uninterrupted one."""
    require_slurm()
    grid = _long_run(tmp_path, corpus, "hup", steps=600)
    root = tmp_path / "root"
    proc = submit(grid, root, "--cluster", "local", env={"SUBMITIT_PREEMPT_SIGNAL": "HUP"})
    assert proc.returncode == 0, proc.stderr
    assert "requeue: --requeue; SIGHUP 45 s before each limit" in proc.stdout
    (script,) = (root / "hup" / ".submitit").glob(".submission_file_*.sh")
    assert "#SBATCH --signal=HUP@45" in script.read_text() and "#SBATCH --requeue" in script.read_text()
    (run_dir,) = load_grid(grid).run_dirs(root)
    _wait_for(_running_attempt(run_dir, 1, step=60), "step 60")
    subprocess.run(["scancel", "--signal=HUP", _job_of(root, "hup")], check=True)
    (final,) = wait_done(grid, root, timeout=300)
    assert final["state"] == "DONE" and final["attempt"] == 2, final
    first = read_attempts(run_dir)[0]
    assert first["outcome"] == "requeued" and 60 <= first["end"] < 600
    assert results(grid, root) == _reference(tmp_path, grid)


def test_case06_the_profile_s_stop_signal_is_asked_for_and_trapped(corpus, tmp_path):
    grid = _long_run(tmp_path, corpus, "usr1", steps=600)
    proc = submit(grid, tmp_path / "root", "--cluster", str(_local_profile(tmp_path, stop_signal="SIGUSR1")),
                  "--dry-run")
    assert proc.returncode == 0, proc.stderr
    (script,) = (tmp_path / "root" / "usr1" / "dry-run").glob("*.sbatch")
    assert script.read_text().count("--signal=") == 1 and "#SBATCH --signal=USR1@45" in script.read_text()
    bad = submit(grid, tmp_path / "root", "--cluster", str(_local_profile(tmp_path, stop_signal="TERM")), "--dry-run")
    assert bad.returncode == 2 and "stop_signal: SIGTERM cannot be the time-limit signal" in bad.stderr


def test_case06_a_registered_signal_stops_at_a_step_boundary_and_goes_to_the_handler_before(tmp_path):
    import signal

    from experiments import interrupt
    from experiments.distributed import DistContext

    handled = []
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: handled.append(signum))
    interrupt.register_requeue_signal(signal.SIGHUP)
    try:
        flag = interrupt.InterruptFlag()
        with flag:
            os.kill(os.getpid(), signal.SIGHUP)
            assert handled == []  # only recorded while training
            ctx = DistContext(rank=0, world_size=1, device=__import__("torch").device("cpu"))
            assert flag.agreed(ctx) == signal.SIGHUP
            assert flag.forward(signal.SIGHUP) is True
        assert handled == [signal.SIGHUP]  # handed to the handler installed before (submitit's requeue)
    finally:
        interrupt.unregister_requeue_signal(signal.SIGHUP)
        signal.signal(signal.SIGHUP, previous)
    with pytest.raises(ValueError):
        interrupt.register_requeue_signal(signal.SIGTERM)


def test_case07_a_run_slower_than_its_estimate_is_requeued_while_it_progresses(corpus, tmp_path):
    """Five time-limit signals on a run whose estimate allowed three requeues (timeout_min <= 10: submitit
    counts each as a timeout): every attempt advanced, so every one is requeued, and the run finishes
    with the same numbers as an uninterrupted one; slurm.status shows each attempt's progress."""
    require_slurm()
    grid = _long_run(tmp_path, corpus, "slow", steps=2400, timeout_min=5)
    root = tmp_path / "root"
    assert submit(grid, root, "--cluster", "local").returncode == 0
    (run_dir,) = load_grid(grid).run_dirs(root)
    job = _job_of(root, "slow")
    step = 0
    for attempt in range(1, 6):
        _wait_for(_running_attempt(run_dir, attempt, step=step + 20), f"attempt {attempt} past step {step + 20}")
        step = _status(run_dir)["step"]
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
    (final,) = wait_done(grid, root, timeout=400)
    assert final["state"] == "DONE" and final["attempt"] == 6, final
    attempts = _closed_attempts(run_dir)
    assert [a["outcome"] for a in attempts] == ["requeued"] * 5 + ["done"]
    assert all(a["end"] > a["start"] for a in attempts)
    row = next(line for line in status(grid, root).splitlines() if line.startswith(run_dir.name))
    assert " DONE " in row and len(re.findall(r"\+\d+", row.split(job, 1)[1])) == 6
    assert results(grid, root) == _reference(tmp_path, grid)


def test_case07_a_run_without_progress_stops_stalled_and_a_resubmission_finishes_it(tmp_path):
    """With max_stalled_attempts 1, an attempt signalled during the final evaluation (its weights
    checkpointed: no step to gain) stops the run as STALLED, one line, not FAILED; resubmitting finishes it."""
    require_slurm()
    from experiments import data

    corpus = tmp_path / "big-eval"
    data.main(["prepare", "lexicon", "--out", str(corpus), "--num-words", "50", "--train-chars", "20000",
               "--valid-chars", "300000", "--test-chars", "300000"])
    grid = write_grid(tmp_path, corpus, "stall", {}, train={"steps": 100, "checkpoint_every": 50, "log_every": 10,
                                                            "eval_every": 1000},
                      eval={"batch_size": 2, "max_tokens": None})
    root = tmp_path / "root"
    profile = str(_local_profile(tmp_path, max_stalled_attempts=1))
    assert submit(grid, root, "--cluster", profile).returncode == 0
    (run_dir,) = load_grid(grid).run_dirs(root)
    job = _job_of(root, "stall")
    for attempt in (1, 2):  # the first attempt advanced 0 -> 100 (requeued), the second nothing (stalled)
        _wait_for(_running_attempt(run_dir, attempt, stage="eval"), f"attempt {attempt} evaluating")
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
    (stalled,) = wait_done(grid, root, timeout=120)
    assert (stalled["state"], stalled["stage"], stalled["step"]) == ("PENDING", "stalled", 100), stalled
    assert "Traceback" not in stalled["error"] and "\n" not in stalled["error"]
    table = status(grid, root, "--tail")
    assert " STALLED " in table and "+100 +0 stalled" in table and "no progress in 1 attempt(s)" in table
    again = submit(grid, root, "--cluster", profile)
    assert again.returncode == 0 and "1 to submit" in again.stdout
    (final,) = wait_done(grid, root, timeout=300)
    assert final["state"] == "DONE" and final["attempt"] == 3 and final["error"] is None


def test_case16_the_job_asks_for_requeue_itself(corpus, tmp_path):
    """Every script says --requeue, so the job is requeueable whatever the site's JobRequeue default;
    a job without it (what such a site gives) cannot be requeued, which is why."""
    require_slurm()
    grid, root = _running_on_slurm(tmp_path, corpus, "requeueable", steps=600, step=20)
    job = _job_of(root, "requeueable")
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, check=True).stdout
    assert "Requeue=1" in shown
    script = subprocess.run(["scontrol", "write", "batch_script", job, "-"], capture_output=True, text=True).stdout
    assert "#SBATCH --requeue" in script
    subprocess.run(["scancel", job], check=True)
    plain = subprocess.run(["sbatch", "--parsable", "--no-requeue", "-o", "/dev/null", "--wrap", "sleep 30"],
                           capture_output=True, text=True, check=True).stdout.strip()
    try:
        refused = subprocess.run(["scontrol", "requeue", plain], capture_output=True, text=True)
        assert refused.returncode != 0 and "disabled" in refused.stderr + refused.stdout
    finally:
        subprocess.run(["scancel", plain])


def test_case03_a_slurm_job_id_that_is_not_the_grid_s_is_not_its_run_s(corpus, tmp_path):
    """A recorded job id now held by another job (ids are reused after a state purge): not live, not cancelled."""
    require_slurm()
    from experiments import manifest as record
    from experiments.run_dir import RunDir

    grid = write_grid(tmp_path, corpus, "purged", {})
    root = tmp_path / "root"
    (run_dir,) = load_grid(grid).run_dirs(root)
    RunDir(run_dir).write_status("RUNNING", stage="train", step=5)
    other = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "sleep 60"],
                           capture_output=True, text=True, check=True).stdout.strip()
    try:
        record.record_jobs(root / "purged", record.new_submission(grid, [], []), [(run_dir.name, run_dir, other, 0)],
                           "slurm")
        _wait_for(lambda: manifest.slurm_states([other]).get(other) in ("RUNNING", "PENDING"), "the other job")
        assert manifest.live_runs(root / "purged") == {}
        assert "cancelled 0 of 1" in status(grid, root, "--cancel")
        assert manifest.slurm_states([other]).get(other) in ("RUNNING", "PENDING")
    finally:
        subprocess.run(["scancel", other])


def test_a_held_job_shows_held_with_the_way_to_release_it(corpus, tmp_path):
    """`scontrol hold` / `requeuehold`: the run showed plain PENDING, though its job never starts
    unless released (a fresh-user finding)."""
    require_slurm()
    from experiments import manifest as record
    from experiments.run_dir import RunDir

    grid = write_grid(tmp_path, corpus, "held", {})
    root = tmp_path / "root"
    (run_dir,) = load_grid(grid).run_dirs(root)
    RunDir(run_dir).write_status("PENDING", stage="submitted")
    script = root / "held" / ".submitit" / "held.sh"  # where submitit writes the grid's batch scripts
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\nsleep 60\n")
    job = subprocess.run(["sbatch", "--parsable", "--hold", "-o", "/dev/null", str(script)],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        record.record_jobs(root / "held", record.new_submission(grid, [], []), [(run_dir.name, run_dir, job, 0)],
                           "slurm")
        table = status(grid, root)
        assert re.search(rf"^{run_dir.name} +HELD ", table, re.M), table
        assert f"job {job} is held: it starts once released (scontrol release {job})" in table
    finally:
        subprocess.run(["scancel", job])


def test_local_submit_into_a_pipe_returns_while_its_runs_train(corpus, tmp_path):
    """The local executor's job controllers do not hold submit's stdout/stderr: `slurm.submit ... | tail`
    returns when submit does, not when the last run ends."""
    grid = _long_run(tmp_path, corpus, "piped", steps=200000)  # minutes of training
    root = tmp_path / "root"
    started = time.time()
    proc = submit(grid, root, "--executor", "local", timeout=90)  # both pipes read to their end
    assert proc.returncode == 0, proc.stderr
    assert "submitted 1 runs" in proc.stdout and time.time() - started < 90
    (run_dir,) = load_grid(grid).run_dirs(root)
    assert _status(run_dir).get("state") in ("PENDING", "RUNNING")
    assert "cancelled 1" in status(grid, root, "--cancel")
    wait_done(grid, root, timeout=120)


def test_killing_a_local_job_stops_its_trainer_at_a_checkpoint_and_a_resubmission_resumes(corpus, tmp_path):
    """The job id slurm.status shows for a local run is submitit's controller. Killing it (kill -9)
    left the trainer training as an orphan: shown LOST, out of --cancel's reach, and a resubmission
    failed on the busy run directory (a fresh-user finding). The trainer now stops with it."""
    import signal

    from experiments.run_dir import LOCK_FILE, OwnerLock

    grid = _long_run(tmp_path, corpus, "orphan", steps=100000)
    root = tmp_path / "root"
    assert submit(grid, root, "--executor", "local").returncode == 0
    (run_dir,) = load_grid(grid).run_dirs(root)
    deadline = time.time() + 120
    while not (_status(run_dir).get("state") == "RUNNING" and _status(run_dir).get("step", 0) > 0):
        assert time.time() < deadline, "the run never started training"
        time.sleep(0.2)
    (job,) = manifest.own_live_runs(root / "orphan").values()
    os.kill(int(job), signal.SIGKILL)
    deadline = time.time() + 60
    while _status(run_dir).get("state") == "RUNNING":  # the trainer checkpoints, then leaves PENDING
        assert time.time() < deadline, "the trainer outlived its killed controller"
        time.sleep(0.2)
    OwnerLock.take(run_dir / LOCK_FILE).release()  # nobody trains it any more
    stopped = _status(run_dir)
    assert stopped["state"] == "PENDING" and stopped["step"] > 0, stopped
    assert " STOPPED " in status(grid, root)  # at a checkpoint, by the SIGTERM of its dead controller
    assert submit(grid, root, "--executor", "local").returncode == 0  # resumes from the checkpoint
    _wait_for(lambda: _status(run_dir).get("step", 0) > stopped["step"], "the resumed run")
    assert "cancelled 1" in status(grid, root, "--cancel")


def test_ctrl_c_on_a_local_submit_stops_the_submitting_not_the_started_runs(corpus, tmp_path):
    """A terminal's Ctrl-C reaches its whole foreground process group. The runs that
    `slurm.submit --executor local` started ignore it and train on to DONE; the command says so
    and exits 130 (a fresh-user finding: the job controllers killed their runs, left LOST)."""
    import signal

    grid = _long_run(tmp_path, corpus, "ctrlc", steps=1500)
    root = tmp_path / "root"
    proc = subprocess.Popen([sys.executable, "-m", "slurm.submit", str(grid), "--root", str(root), "--executor", "local",
                             "--wait"], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a terminal's foreground job
    (run_dir,) = load_grid(grid).run_dirs(root)
    deadline = time.time() + 120
    while not (_status(run_dir).get("state") == "RUNNING" and _status(run_dir).get("step", 0) > 0):
        assert time.time() < deadline and proc.poll() is None, "the run never started training"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    _, err = proc.communicate(timeout=60)
    (final,) = wait_done(grid, root, timeout=300)
    assert final["state"] == "DONE" and final["step"] == 1500, final
    assert proc.returncode == 130 and "the runs already started keep running" in err, err


def test_a_request_sbatch_refuses_is_one_line(corpus, tmp_path):
    """sbatch's refusal (memory no node has) was a 50-line submitit traceback (a fresh-user finding)."""
    require_slurm()
    grid = write_grid(tmp_path, corpus, "huge", {}, slurm={"cpus_per_task": 1, "mem_gb": 100000, "timeout_min": 20})
    root = tmp_path / "root"
    proc = submit(grid, root, "--cluster", "local")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: sbatch refused 1 run(s): sbatch: error: ") and "unsubmitted" in proc.stderr
    assert "not submitted" in status(grid, root)
