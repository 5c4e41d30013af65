"""The progress table of `slurm.submit --wait` (slurm/progress.py), shared with `slurm.status`."""
from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import yaml

from experiments.run_dir import RunDir
from slurm import progress
from slurm import status as slurm_status
from tests.helpers import prepare_lexicon
from tests.test_slurm import submit, write_grid


def _fake_run(path: Path, state: str = "RUNNING", step: int = 40, attempt: int = 2, steps: int = 100,
              unit: str = "bpc", value: float = 1.2345, tokens_per_s: float = 5120.4) -> Path:
    """A run directory written by hand: config.yaml, status.json, two train records."""
    run = RunDir(path)
    run.path.mkdir(parents=True)
    run.config.write_text(yaml.safe_dump({"train": {"steps": steps, "finetune_steps": 0}}))
    run.write_status(state, stage="train", step=step, attempt=attempt)
    run.append_metrics({"step": step // 2, "split": "train", "loss": 3.0, unit: 9.0, "tokens_per_s": 1.0})
    run.append_metrics({"step": step, "split": "train", "loss": 1.0, unit: value, "tokens_per_s": tokens_per_s})
    run.append_metrics({"step": step, "split": "val_partial", "loss": 2.0, unit: 7.0})
    return run.path


def _line(lines: list[str], run_id: str) -> str:
    return next(line for line in lines if line.startswith(run_id + " "))


def test_rows_show_state_step_of_steps_last_train_metric_tokens_per_s_and_attempt(tmp_path):
    char = _fake_run(tmp_path / "char-run")
    word = _fake_run(tmp_path / "word-run", state="DONE", step=300, attempt=1, steps=300, unit="ppl", value=35.12)
    unborn = tmp_path / "not-yet"
    rows = progress.progress_rows([char, word, unborn])
    assert [(r["state"], r["step"], r["steps"], r["metric"], r["tokens_per_s"], r["attempts"]) for r in rows] == [
        ("RUNNING", 40, 100, "bpc 1.234", "5120", 2), ("DONE", 300, 300, "ppl 35.120", "5120", 1),
        ("PENDING", 0, None, "-", "-", 0)]
    lines = slurm_status.table_lines(rows)
    assert "step/steps" in lines[0] and "last train" in lines[0] and "tokens/s" in lines[0] and "attempts" in lines[0]
    assert re.search(r" RUNNING .* 40/100 +bpc 1\.234 +5120 +2 ", _line(lines, "char-run"))
    assert re.search(r" DONE .* 300/300 +ppl 35\.120 ", _line(lines, "word-run"))
    assert re.search(r" PENDING .* 0/\? +- +- +0 ", _line(lines, "not-yet"))
    assert lines[-1] == "3 runs: 1 RUNNING, 1 DONE, 1 PENDING"


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Job:
    """A submitit job stand-in: done from `ends_at` on `clock`; result() raises `error`."""

    def __init__(self, job_id: str, run_dir: Path, clock: _Clock, ends_at: float, error: str | None = None):
        self.job_id, self.clock, self.ends_at, self.error = job_id, clock, ends_at, error
        self.paths = type("Paths", (), {"stderr": run_dir / "log.err"})()

    def done(self) -> bool:
        return self.clock.now >= self.ends_at

    def result(self) -> str:
        if self.error:
            raise RuntimeError(self.error)
        return "ok"


def test_a_job_that_ended_without_a_final_state_shows_failed(tmp_path):
    run = _fake_run(tmp_path / "run", state="PENDING")
    clock = _Clock()
    job = _Job("7", run, clock, ends_at=1)
    (row,) = progress.progress_rows([run], [job])
    clock.now = 1
    (ended,) = progress.progress_rows([run], [job])
    assert (row["state"], row["job"], ended["state"]) == ("PENDING", "7", "FAILED")


def test_plain_renderer_prints_at_most_once_per_interval_and_only_on_change():
    out, clock = io.StringIO(), _Clock()
    renderer = progress.TableRenderer(out, tty=False, interval_s=30, clock=clock)
    assert renderer.show(["a 1"])
    clock.now = 10
    assert not renderer.show(["a 2"])  # changed, but 10 s after the last table
    clock.now = 31
    assert renderer.show(["a 2"])
    clock.now = 100
    assert not renderer.show(["a 2"])  # unchanged: nothing, however long it has been
    clock.now = 101
    assert renderer.show(["a 3"], final=True)  # the end: shown even within the interval
    assert not renderer.show(["a 3"], final=True)
    text = out.getvalue()
    assert "\x1b" not in text
    assert text.splitlines() == ["[progress after 0 s]", "a 1", "[progress after 31 s]", "a 2",
                                 "[progress after 101 s]", "a 3"]


def test_tty_renderer_redraws_in_place():
    out, clock = io.StringIO(), _Clock()
    renderer = progress.TableRenderer(out, tty=True, interval_s=1, clock=clock)
    renderer.show(["header", "run-a RUNNING", "1 runs"])
    first = out.getvalue()
    assert "\x1b[2K" in first and "\x1b[" + "3A" not in first
    clock.now = 2
    renderer.show(["header", "run-a DONE", "1 runs"])
    second = out.getvalue()[len(first):]
    assert second.startswith("\x1b[3A") and "\r\x1b[2Krun-a DONE\n" in second and second.endswith("\x1b[J")


def test_wait_refreshes_the_table_then_reports_failed_jobs(tmp_path, capsys):
    good, bad = _fake_run(tmp_path / "good"), _fake_run(tmp_path / "bad", state="PENDING")
    out, clock, sleeps = io.StringIO(), _Clock(), []
    jobs = [_Job("11", good, clock, ends_at=3), _Job("12", bad, clock, ends_at=1,
                                                   error="boom\n-----\nTraceback\nValueError: bad data\n\n-----\nlogs")]

    def sleep(seconds: float) -> None:  # the good run trains 10 steps a second, and ends at 3 s
        sleeps.append(seconds)
        clock.now += seconds
        RunDir(good).write_status("DONE" if clock.now >= 3 else "RUNNING", step=40 + 10 * len(sleeps))

    code = progress.wait(jobs, lambda: progress.progress_rows([good, bad], jobs), out=out, tty=False,
                         interval_s=2, poll_s=1, clock=clock, sleep=sleep)
    captured = capsys.readouterr()
    assert code == 1 and sleeps == [1, 1, 1]
    assert "job 12 failed: ValueError: bad data (log: " in captured.err
    assert "1 of 2 runs finished" in captured.out
    tables = out.getvalue().split("[progress after ")[1:]
    assert [t.split(" s]")[0] for t in tables] == ["0", "2", "3"]  # every 2 s at most, and the end
    assert re.search(r"^bad +FAILED .* 40/100 ", tables[-1], re.M) and re.search(r"^good +DONE .* 70/100 ", tables[-1], re.M)
    assert re.search(r"^bad +PENDING .* 40/100 +bpc 1\.234 +5120 +2  - +12 ", tables[0], re.M)


def test_status_shows_the_same_columns(tmp_path, capsys):
    from experiments import manifest as record
    from experiments.grid import load_grid

    grid = write_grid(tmp_path, prepare_lexicon(tmp_path / "lexicon"), "one", {})
    root = tmp_path / "root"
    (cfg,) = load_grid(grid).runs
    run_dir = _fake_run(root / "one" / cfg.run_id, steps=cfg.train.steps, step=8)
    record.record_jobs(root / "one", record.new_submission(grid), [(cfg.run_id, run_dir, "999999999", 0)], "local")
    assert slurm_status.main([str(grid), "--root", str(root)]) == 0
    table = capsys.readouterr().out
    assert "step/steps" in table and "tokens/s" in table
    assert re.search(r" (RUNNING|LOST) .* 8/12 +bpc 1\.234 +5120 +2  #1 ", _line(table.splitlines(), cfg.run_id))


def test_submit_wait_prints_the_table_and_reports_a_failed_run(tmp_path):
    """A good run and one whose data were damaged after preparation (its checksum fails in the job)."""
    corpus = prepare_lexicon(tmp_path / "lexicon")
    damaged = tmp_path / "damaged"
    shutil.copytree(corpus, damaged)
    train = damaged / "train.bin"
    train.write_bytes(bytes(reversed(train.read_bytes())))
    grid = write_grid(tmp_path, corpus, "mixed", {"runs": [{"name": "good"}, {"name": "bad", "data.path": str(damaged)}]})
    proc = submit(grid, tmp_path / "root", "--executor", "local", "--wait", timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "[progress after " in proc.stdout and "step/steps" in proc.stdout
    final = proc.stdout.split("[progress after ")[-1].splitlines()
    assert re.search(r" DONE .* 12/12 +bpc \d+\.\d{3} +\d+ +1 +#1 +\d+ ", _line(final, _run_id(grid, "good")))
    assert re.search(r" FAILED .* 0/12 ", _line(final, _run_id(grid, "bad")))
    assert "2 runs: 1 DONE, 1 FAILED" in final or "2 runs: 1 FAILED, 1 DONE" in final
    assert re.search(r"job \d+ failed: model.errors.UserError: .*train.bin: sha256 .* \(log: ", proc.stderr)
    assert "1 of 2 runs finished" in proc.stdout


def _run_id(grid: Path, name: str) -> str:
    from experiments.grid import load_grid

    return next(cfg.run_id for cfg in load_grid(grid).runs if cfg.name == name)
