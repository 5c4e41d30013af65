"""WikiText-103 end to end at small scale (issue 8, item 7), and the authors' checkpoints.

1. A miniature WikiText-103 archive in the official format (tests/miniatures.py: the
   official file names and layout, the official vocabulary of 267,735 words) is prepared
   by `python -m experiments.data prepare wikitext-103 --source ZIP --allow-unpinned`.
   The paper's config `experiments/paper/wikitext103.yaml` is trained on it through
   `python -m experiments.train` with the geometry shrunk by --set (width 64, the
   narrowest its adaptive clusters allow: 64 / 4^3 = 1; span 32, the ramp; block 16,
   batch 2; warm-up 2; 3 steps and 1 fine-tune step; the final evaluation capped at one
   block, 128 tokens, per split) and everything else as the config says: the vocabulary, the tied adaptive
   input and softmax with its cutoffs and div value, Adam with global clipping,
   batch_split 2, dropout, adaptive span, and the paper's depth (36) and N (2048), which
   `analysis.tables` needs to count a run as the paper's Table 2 model. The run is killed
   with SIGKILL after step 3 (a checkpoint every 2 steps: it resumes from step 2 and
   redoes the switch to the fine-tune stage) and resumed by the same command;
   it must end bit-identical to the uninterrupted run (parameters, Adam moments, metrics,
   eval.json). eval.json reports ppl, and `python -m analysis.tables` puts the run on the
   paper's Table 2 rows.
2. That checkpoint, at the paper's vocabulary and cutoffs, goes through the converter
   both ways (`experiments.convert --to-authors`, then back) unchanged, and the
   converted file evaluates with `experiments.evaluate --text`.
3. The authors' word-level checkpoint (adaptive input/output, their layout:
   ../shared/fixtures/authors_reference/word_adaptive_io) goes through the commands a
   user types: prepare its text, `experiments.convert`, `experiments.evaluate`, which
   reports ppl (and the authors' number; tests/test_authors_reference.py checks the
   numbers in depth).

The shared folders are skipped when absent, except under CI=true (tests/conftest.py).
"""
from __future__ import annotations

import io
import json
import math
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from experiments import checkpoint, convert, evaluate
from experiments.data.datasets import wikitext103
from experiments.metrics import read_metrics
from tests.conftest import PROJECT_ROOT, SHARED_DATA, require_path
from tests.miniatures import wikitext103_zip

CONFIG = PROJECT_ROOT / "experiments" / "paper" / "wikitext103.yaml"
AUTHORS_WORD = PROJECT_ROOT.parent / "shared" / "fixtures" / "authors_reference" / "word_adaptive_io"
VOCAB = 267_735
STEPS, FINETUNE, CHECKPOINT_EVERY, KILL_AFTER = 3, 1, 2, 3
EVAL_TOKENS = 128  # one block of the eval batch (8 rows x 16)
SHRINK = ["model.d_model=64", "model.attn_span=32", "train.block_size=16", "train.batch_size=2",
          f"train.steps={STEPS}", f"train.finetune_steps={FINETUNE}", "optim.warmup_steps=2", "train.device=cpu",
          "train.threads=1", "train.log_every=1", "train.eval_every=1000",
          f"train.checkpoint_every={CHECKPOINT_EVERY}", f"eval.max_tokens={EVAL_TOKENS}"]
"""Kept from the paper config: vocabulary, adaptive I/O (cutoffs 20000/40000/200000, div 4), 36 layers,
8 heads, N = 2048, adaptive span, dropout, Adam with global clipping, batch_split 2, eval batch 8."""
DETERMINISTIC = ("step", "tokens", "split", "loss", "ppl", "lr", "span_mean", "span_max")


def python_m(*args: str | Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m ARGS` from the project root; fails the test with its stderr."""
    proc = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"python -m {' '.join(map(str, args))}:\n{proc.stderr[-3000:]}"
    return proc


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


# ---------------------------------------------------------------- the miniature, trained


@pytest.fixture(scope="module")
def wt103(tmp_path_factory) -> Path:
    """The miniature archive prepared by the command, as a user prepares the real one."""
    root = tmp_path_factory.mktemp("wt103")
    archive = wikitext103_zip(root, require_path(SHARED_DATA, "shared data folder"))
    proc = python_m("experiments.data", "prepare", "wikitext-103", "--source", archive, "--allow-unpinned",
                    "--out", root / "data")
    assert "not checked against the pinned" in proc.stderr  # the unpinned warning
    meta = json.loads((root / "data" / "meta.json").read_text())
    assert meta["vocab_size"] == VOCAB and meta["vocab_order"] == "frequency" and meta["eos"] == "<eos>"
    assert meta["source"]["official"] is False
    return root / "data"


def authors_loader_vocab(archive: Path) -> list[str]:
    """The ids the authors' loader gives with adaptive input/output (facebookresearch/adaptive-span,
    data.py with sort_dict): every word of train.txt, and `<eos>` closing each line, counted in order
    of first appearance; sorted stably by increasing count, then the list reversed."""
    counts: dict[str, int] = {}
    with zipfile.ZipFile(archive) as zipped, zipped.open(wikitext103.MEMBERS["train"]) as member:
        for line in io.TextIOWrapper(member, encoding="utf8"):
            for word in line.split() + ["<eos>"]:
                counts[word] = counts.get(word, 0) + 1
    return [word for word, _ in sorted(counts.items(), key=lambda kv: kv[1])[::-1]]


def test_prepared_ids_are_the_authors_loader_ids(wt103):
    """Their WikiText-103 weights read the words ours do: same order, ties (the many words of
    equal count) included, which a first-appearance tie order would get wrong."""
    vocab = json.loads((wt103 / "meta.json").read_text())["vocab"]
    assert vocab == authors_loader_vocab(wt103.parent / wikitext103.ARCHIVE.file_name)


def train_cmd(data: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "experiments.train", str(CONFIG), *[f"--set={kv}" for kv in SHRINK],
            f"--set=data.path={data}", "--run-dir", str(run_dir)]


def run_train(data: Path, run_dir: Path) -> None:
    proc = subprocess.run(train_cmd(data, run_dir), cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def reference_run(wt103, tmp_path_factory) -> Path:
    """The uninterrupted run."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    run_train(wt103, run_dir)
    return run_dir


def newest_checkpoint(run_dir: Path) -> Path:
    return checkpoint.complete_checkpoints(run_dir / "checkpoints")[0]


def final_state(run_dir: Path) -> dict:
    return torch.load(newest_checkpoint(run_dir) / "shared.pt", weights_only=True)


def deterministic_metrics(run_dir: Path) -> list[dict]:
    return [{k: r.get(k) for k in DETERMINISTIC} for r in read_metrics(run_dir / "metrics.jsonl")]


def assert_identical_runs(a: Path, b: Path) -> None:
    sa, sb = final_state(a), final_state(b)
    assert sa["state"]["step"] == sb["state"]["step"] == STEPS + FINETUNE
    assert sa["model"].keys() == sb["model"].keys()
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    oa, ob = sa["optimizer"], sb["optimizer"]
    assert oa["param_groups"] == ob["param_groups"] and oa["state"].keys() == ob["state"].keys()
    for index, state in oa["state"].items():  # Adam: step, exp_avg, exp_avg_sq
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(ob["state"][index][name])), (index, name)
    assert deterministic_metrics(a) == deterministic_metrics(b)
    ea, eb = json.loads((a / "eval.json").read_text()), json.loads((b / "eval.json").read_text())
    assert ea["valid"] == eb["valid"] and ea["test"] == eb["test"]


def test_eval_json_reports_perplexity(reference_run):
    status = json.loads((reference_run / "status.json").read_text())
    assert status["state"] == "DONE" and status["step"] == STEPS + FINETUNE
    result = json.loads((reference_run / "eval.json").read_text())
    assert result["unit"] == "ppl" and result["step"] == STEPS + FINETUNE
    for split in ("valid", "test"):
        scores = result[split]
        assert scores["tokens"] == EVAL_TOKENS and scores["full"] is False  # capped: eval.max_tokens
        assert math.isfinite(scores["loss"]) and scores["ppl"] == pytest.approx(math.exp(scores["loss"]), rel=1e-12)
    train = [r for r in read_metrics(reference_run / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, STEPS + FINETUNE + 1))
    assert all(r["ppl"] == pytest.approx(math.exp(r["loss"])) for r in train)
    assert train[STEPS]["lr"] == pytest.approx(2.5e-5)  # the fine-tune stage at lr / 10


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
        if any(r["split"] == "train" and r["step"] >= step for r in records):
            return
        time.sleep(0.01)
    stderr = proc.communicate(timeout=120)[1] if proc.poll() is not None else ""
    raise AssertionError(f"training never reached step {step} (exit status {proc.poll()}): {stderr[-3000:]}")


def test_sigkilled_and_resumed_run_is_bit_identical(wt103, reference_run, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(wt103, run_dir), cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_step(run_dir, KILL_AFTER, proc)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode != 0:  # a fast machine may finish first; otherwise the kill must have acted
        assert proc.returncode == -signal.SIGKILL, stderr[-3000:]
        assert not (run_dir / "eval.json").exists()
        assert final_state(run_dir)["state"]["step"] < STEPS + FINETUNE  # the resume has steps to redo
    run_train(wt103, run_dir)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "DONE" and status["attempt"] == (2 if proc.returncode else 1)
    assert_identical_runs(reference_run, run_dir)


def _cells(markdown: str, dataset: str) -> list[dict[str, str]]:
    """The rows of a markdown table whose Dataset is `dataset`, as {heading: cell}."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    headings = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [dict(zip(headings, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]
    return [row for row in rows if row["Dataset"] == dataset]


def test_analysis_tables_puts_the_run_in_table2(reference_run, tmp_path):
    out = tmp_path / "tables"
    python_m("analysis.tables", reference_run, "--out-dir", out)
    result = json.loads((reference_run / "eval.json").read_text())
    table2 = (out / "table2.md").read_text()
    assert table2.startswith("Table 2: WikiText-103, perplexity (ppl).") and (out / "table2.tex").exists()
    rows = _cells(table2, "wikitext-103")
    assert {"Dev ppl (paper)", "Dev ppl (ours)", "Δ dev", "Test ppl (paper)", "Test ppl (ours)", "Δ test",
            "Params (paper)", "Params (ours)"} <= set(rows[0])
    ours = [row for row in rows if row["Source"] in ("paper", "authors_readme")]
    assert [(row["Source"], row["Params (paper)"]) for row in ours] == [("paper", "133M"), ("authors_readme", "133M")]
    assert result["valid"]["full"] is False  # eval.max_tokens capped it: marked, not comparable with the paper
    for row in ours:
        assert row["Model"] == "All-attention network + adaptive span"
        assert row["Params (ours)"] == f"{result['params_total'] / 1e6:.2f}M"
        assert row["Dev ppl (ours)"] == f"{result['valid']['ppl']:.2f} (n=1) *"
        assert row["Test ppl (ours)"] == f"{result['test']['ppl']:.2f} (n=1) *"
    paper = ours[0]
    assert (paper["Dev ppl (paper)"], paper["Test ppl (paper)"]) == ("19.7", "20.6")
    assert paper["Δ test"] == f"{result['test']['ppl'] - 20.6:+.2f} *"
    assert all(row["Dev ppl (ours)"] == "—" for row in rows if row["Source"] == "cited")
    table1 = (out / "table1.md").read_text()  # a word-level run stays out of the character table
    assert all(row["Dev bpc (ours)"] == "—" and row["Test bpc (ours)"] == "—"
               for dataset in ("enwik8", "text8") for row in _cells(table1, dataset))


# ---------------------------------------------------------------- converter, paper geometry


def test_paper_geometry_checkpoint_converts_both_ways_and_evaluates(reference_run, wt103, tmp_path, capsys):
    """Our WikiText-103 checkpoint (vocabulary 267,735, the paper's cutoffs) exported in the
    authors' layout and imported back: the same tensors, and `evaluate` reports ppl. The
    commands' main() in this process (a subprocess each would mostly import torch)."""
    config, ours = reference_run / "config.yaml", newest_checkpoint(reference_run)
    theirs_pt, back_pt = tmp_path / "theirs.pt", tmp_path / "back.pt"
    assert convert.main(["--to-authors", str(ours), "--config", str(config), "--out", str(theirs_pt)]) == 0
    theirs = torch.load(theirs_pt, weights_only=True)
    assert theirs["scheduler_iter"] == STEPS + FINETUNE and all(k.startswith("module.") for k in theirs["model"])
    assert theirs["optimizer"]["state"]  # the run's Adam moments went with it
    assert convert.main([str(theirs_pt), "--config", str(config), "--out", str(back_pt)]) == 0
    back = torch.load(back_pt, weights_only=True)["model"]
    mine = torch.load(ours / "shared.pt", weights_only=True)["model"]
    assert back.keys() == mine.keys() and all(torch.equal(back[k], mine[k]) for k in mine)

    text = tmp_path / "text.txt"  # the first lines of the miniature's valid split: every word is in the vocabulary
    text.write_text("".join(valid_lines(wt103.parent, 4)), encoding="utf-8")
    capsys.readouterr()
    assert evaluate.main([str(config), "--checkpoint", str(back_pt), "--text", str(text)]) == 0
    [record] = json_lines(capsys.readouterr().out)
    assert record["split"] == "text" and record["tokens"] > 0
    assert record["ppl"] == pytest.approx(math.exp(record["loss"]), rel=1e-12)


def valid_lines(root: Path, count: int) -> list[str]:
    """The first `count` lines of the miniature archive's valid split (in `root`)."""
    with zipfile.ZipFile(root / wikitext103.ARCHIVE.file_name) as archive:
        text = archive.read(wikitext103.MEMBERS["valid"]).decode("utf-8")
    return text.splitlines(keepends=True)[:count]


# ---------------------------------------------------------------- the authors' checkpoint


def test_authors_word_checkpoint_converts_and_evaluates_with_the_documented_commands(tmp_path):
    """Their adaptive-I/O checkpoint -> convert -> evaluate, the README's sequence with the
    fixture's text as the corpus and its config.yaml in place of experiments/paper/wikitext103.yaml."""
    case = require_path(AUTHORS_WORD, "the authors' reference fixtures")
    source = tmp_path / "text"
    source.mkdir()
    for split in ("train", "valid", "test"):
        shutil.copyfile(case / "text.txt", source / f"{split}.txt")
    python_m("experiments.data", "prepare", "text", "--source", source, "--level", "word",
             "--vocab-order", "frequency", "--out", tmp_path / "data")

    python_m("experiments.convert", case / "authors_state.pt", "--config", case / "config.yaml",
             "--out", tmp_path / "ours.pt")
    proc = python_m("experiments.evaluate", case / "config.yaml", "--checkpoint", tmp_path / "ours.pt",
                    "--set", f"data.path={tmp_path / 'data'}")

    expected = json.loads((case / "expected.json").read_text())
    records = json_lines(proc.stdout)
    assert [r["split"] for r in records] == ["valid", "test"]
    for record in records:  # valid and test are the fixture's text; eval.batch_size is their B
        assert record["tokens"] == expected["batching"]["tokens_scored"] and record["full"] is True
        assert record["ppl"] == pytest.approx(math.exp(record["loss"]), rel=1e-12)
        assert record["loss"] == pytest.approx(expected["float32"]["mean_loss"], rel=1e-5)
        assert record["ppl"] == pytest.approx(expected["float32"]["ppl"], rel=1e-3)
