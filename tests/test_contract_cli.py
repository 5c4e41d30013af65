"""Each refusal of the data contract (issue 8, item 6) at both entry points that spend compute:
`slurm.submit --dry-run` (every run of a grid, before anything is written) and the start of
`experiments.train`: exit 2, one stderr line naming the config field, nothing written."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import data
from experiments.cli import run_cli
from tests.conftest import PROJECT_ROOT
from tests.helpers import prepare_lexicon, tiny_config

WORDS = {"train": "b a c\na c\nd\n" * 30, "valid": "a b\n" * 30, "test": "c d\n" * 30}
ADAPTIVE = {"output": "adaptive", "adaptive_cutoffs": [2], "adaptive_div_value": 2.0}

# case -> (corpus, config sections, the field the error names)
CASES = {
    "vocabulary size": ("lexicon", {"model": {"vocab_size": 40}}, "model.vocab_size"),
    "adaptive output on ids not ordered by frequency": ("words", {"model": ADAPTIVE, "eval": {"batch_size": 2}}, "model.output"),
    "eval split too short for the eval batch and block": ("lexicon", {"eval": {"batch_size": 400}}, "eval.batch_size"),
    "batch_split does not divide the rows": ("lexicon", {"train": {"batch_split": 3}}, "train.batch_split"),
    "data path that does not exist": ("missing", {}, "data.path"),
}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("contract-cli")
    source = root / "words-src"
    source.mkdir()
    for split, text in WORDS.items():
        (source / f"{split}.txt").write_text(text)
    assert data.main(["prepare", "text", "--source", str(source), "--level", "word", "--out", str(root / "words")]) == 0
    return {"lexicon": prepare_lexicon(root / "lexicon"), "words": root / "words",
            "missing": root / "lexicon"}


def _config(tmp_path: Path, corpora: dict[str, Path], case: str) -> Path:
    corpus, sections, _ = CASES[case]
    path = tiny_config(tmp_path, corpora[corpus], **sections)
    if corpus == "missing":
        path.write_text(path.read_text().replace(str(corpora["missing"]), str(tmp_path / "not-prepared")))
    return path


def _refused_in_one_line(proc: subprocess.CompletedProcess, field: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert field in proc.stderr, proc.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_at_submit_dry_run_with_nothing_written(case, corpora, tmp_path):
    config, root = _config(tmp_path, corpora, case), tmp_path / "root"
    proc = subprocess.run([sys.executable, "-m", "slurm.submit", str(config), "--cluster", "local", "--dry-run",
                           "--root", str(root)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    _refused_in_one_line(proc, CASES[case][2])
    assert not root.exists()


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_at_train_start_with_nothing_written(case, corpora, tmp_path):
    config, run_dir = _config(tmp_path, corpora, case), tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "experiments.train", str(config), "--run-dir", str(run_dir)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    _refused_in_one_line(proc, CASES[case][2])
    assert not run_dir.exists()


def test_batch_not_divisible_by_the_process_count_is_refused_at_submission(corpora, tmp_path):
    """3 CPU processes for 4 rows: refused before the job is submitted."""
    config = tiny_config(tmp_path, corpora["lexicon"])
    config.write_text(config.read_text() + "slurm:\n  cpu_tasks_per_node: 3\n")
    proc = subprocess.run([sys.executable, "-m", "slurm.submit", str(config), "--cluster", "local", "--dry-run",
                           "--root", str(tmp_path / "root")], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120)
    _refused_in_one_line(proc, "train.batch_size")
    assert not (tmp_path / "root").exists()


COMMANDS = ("experiments.train", "experiments.evaluate", "experiments.benchmark", "experiments.benchmark_ab",
            "experiments.convert", "experiments.summary", "experiments.gpu_check", "experiments.data",
            "slurm.submit", "slurm.status", "analysis.collect", "analysis.figure2", "analysis.tables", "analysis.report")


NEEDS_AN_ARGUMENT = tuple(m for m in COMMANDS if m not in ("experiments.gpu_check", "analysis.tables"))


@pytest.mark.parametrize(("module", "argv"), [*((m, ["--no-such-flag"]) for m in COMMANDS), *((m, []) for m in NEEDS_AN_ARGUMENT)])
def test_every_command_reports_a_flag_error_in_one_line(module, argv, capsys):
    """argparse's own errors (an unknown flag, a missing argument) are one stderr line naming
    the command and exit 2, as every other bad input is: no usage block first."""
    main = importlib.import_module(module if module != "experiments.data" else "experiments.data.command").main
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: python -m " if module != "experiments.gpu_check" else "error: bash "), err


FOLDER_FLAGS = [("slurm.submit", [str(PROJECT_ROOT / "experiments/demo.yaml"), "--executor", "local", "--root"]),
                ("slurm.status", [str(PROJECT_ROOT / "experiments/demo.yaml"), "--root"]),
                ("analysis.report", [str(PROJECT_ROOT / "experiments/demo.yaml"), "--root"]),
                ("analysis.collect", ["runs", "--out"]),
                ("analysis.figure2", ["runs", "--out-dir"]),
                ("analysis.tables", ["--out-dir"]),
                ("experiments.data", ["prepare", "lexicon", "--out"]),
                ("experiments.train", [str(PROJECT_ROOT / "experiments/demo.yaml"), "--run-dir"])]


@pytest.mark.parametrize(("module", "argv"), FOLDER_FLAGS, ids=[m for m, _ in FOLDER_FLAGS])
def test_every_folder_flag_that_is_a_file_is_one_line_before_any_work(module, argv, tmp_path, capsys):
    """A results root, output or run directory that is a file (or under one) was a
    FileExistsError / NotADirectoryError traceback after the work (a fresh-user finding)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    main = importlib.import_module(module if module != "experiments.data" else "experiments.data.command").main
    for target, message in ((blocker, "is a file, not a folder"), (blocker / "sub", "a folder on its path is a file")):
        with pytest.raises(SystemExit) as exit_:
            run_cli(main, [*argv, str(target)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err and argv[-1] in err, err


COUNT_FLAGS = [("experiments.evaluate", ["c.yaml", "--checkpoint", "x", "--batch-size"], "0"),
               ("experiments.evaluate", ["c.yaml", "--checkpoint", "x", "--max-tokens"], "-1"),
               ("experiments.benchmark", ["c.yaml", "--steps"], "0"),
               ("experiments.benchmark_ab", ["c.yaml", "--old", "x.py", "--rounds"], "4"),
               ("experiments.gpu_check", ["--threads"], "-1"),
               ("slurm.submit", ["g.yaml", "--executor", "local", "--max-parallel"], "0"),
               ("analysis.report", ["runs", "--param-tolerance"], "-0.5"),
               ("analysis.figure2", ["runs", "--delta"], "nan")]


@pytest.mark.parametrize(("module", "argv", "value"), COUNT_FLAGS, ids=[f"{m} {a[-1]}" for m, a, _ in COUNT_FLAGS])
def test_every_count_or_margin_flag_out_of_range_is_one_line(module, argv, value, capsys):
    """Counts and margins are checked by argparse: evaluate --batch-size 0 used to fall back to
    the config's silently, -1 to fail later, --param-tolerance -0.5 was accepted."""
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [*argv, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and f"argument {argv[-1]}: must be" in err, err


def test_a_command_s_warnings_are_one_line_each(tmp_path):
    """Warnings came out in Python's format: the file and line of the warn() call, then its source
    line (`status = run_dir.read_status()`), which mean nothing to a user (a fresh-user finding)."""
    (tmp_path / "status.json").write_text("[1]")
    code = ("import sys; from experiments.cli import run_cli; from experiments.run_dir import RunDir; "
            "run_cli(lambda argv: 0 if RunDir(sys.argv[1]).read_status() else 1)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    assert proc.stderr == f"warning: {tmp_path / 'status.json'}: unreadable (a JSON list, not an object); ignored\n"


def test_a_filesystem_that_refuses_is_one_line_naming_the_file(capsys):
    """A read-only run root gave slurm.submit and train a 25-line traceback ending in
    `OSError: [Errno 30] Read-only file system: '.../.store.lock'` (a fresh-user finding)."""
    import errno

    from experiments.cli import run_cli

    def refused(argv):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), "/runs/.store.lock")

    with pytest.raises(SystemExit) as exit:
        run_cli(refused, [])
    assert exit.value.code == 1
    assert capsys.readouterr().err == "error: Read-only file system: /runs/.store.lock\n"

    def broken(argv):  # not the machine refusing: a bug keeps its traceback
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    with pytest.raises(OSError):
        run_cli(broken, [])
