"""Bad input found on a fresh clone, each refused in one line naming the field or flag before any
compute: evaluate held to the data contract train holds a run to, bounds on fields that reach a
C API or build one Python object per unit (threads, layers, clusters), repeated list entries,
library modules run as commands, an empty corpus split, a file that is not a checkpoint."""
from __future__ import annotations

import fractions
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from experiments import data
from experiments.data.command import main as data_main
from experiments.cli import run_cli
from experiments.evaluate import main as evaluate_main
from experiments.evaluation import EvalConfig
from experiments.run_config import load_run_config
from experiments.summary import main as summary_main
from experiments.train_config import MAX_THREADS, TrainConfig
from model import build_model
from model.config import MAX_CUTOFFS, MAX_LAYERS, ModelConfig
from model.convert_official import read_checkpoint
from model.errors import ConfigError, UserError
from tests.conftest import PROJECT_ROOT
from tests.helpers import prepare_lexicon, tiny_config

WORDS = {"train": "b a c\na c\nd\n" * 30, "valid": "a b\n" * 30, "test": "c d\n" * 30}
ADAPTIVE = {"output": "adaptive", "adaptive_cutoffs": [2], "adaptive_div_value": 2.0}
MODEL = dict(variant="all_attention", vocab_size=27, num_layers=2, d_model=16, num_heads=2, attn_span=16,
             num_persistent=8)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    """lexicon (27 symbols), characters of a text with many more symbols, and words by appearance."""
    root = tmp_path_factory.mktemp("input-bounds")
    chars, words = root / "chars-src", root / "words-src"
    for source, texts in ((chars, {s: bytes(range(32, 127)).decode() * 40 for s in WORDS}), (words, WORDS)):
        source.mkdir()
        for split, text in texts.items():
            (source / f"{split}.txt").write_text(text)
    assert data.main(["prepare", "text", "--source", str(chars), "--level", "char", "--out", str(root / "chars")]) == 0
    assert data.main(["prepare", "text", "--source", str(words), "--level", "word", "--out", str(root / "words")]) == 0
    return {"lexicon": prepare_lexicon(root / "lexicon"), "chars": root / "chars", "words": root / "words"}


def _one_line_exit(main, argv, capsys) -> str:
    """Run a command; assert it ended with exit status 2 and one stderr line; return that line."""
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, [str(a) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def _checkpoint(config: Path, tmp_path: Path) -> Path:
    """A {"model": state dict} file of the config's model, as model.convert_official writes one."""
    path = tmp_path / "model.pt"
    torch.save({"model": build_model(load_run_config(config).model).state_dict()}, path)
    return path


# ---------------------------------------------------------------- 1. evaluate and the data contract


def test_evaluate_refuses_a_corpus_of_another_vocabulary_as_train_does(corpora, tmp_path, capsys):
    """A 27-symbol model on a corpus of ~96 symbols ended in 'IndexError: index out of range in self'."""
    lexicon = tiny_config(tmp_path, corpora["lexicon"])
    checkpoint = _checkpoint(lexicon, tmp_path)
    config = tiny_config(tmp_path, corpora["chars"], model={"vocab_size": 27})
    err = _one_line_exit(evaluate_main, [config, "--checkpoint", checkpoint], capsys)
    vocab = len(data.load_corpus(corpora["chars"]).vocab)
    assert "model.vocab_size: is 27 but" in err and f"has vocab_size {vocab}" in err, err


# case -> (corpus, config sections, extra flags, what the error names)
BEFORE_THE_MODEL = {
    "another dataset than data.dataset": ("lexicon", {"data": {"dataset": "text"}}, [], "data.dataset: is 'text'"),
    "adaptive output on ids by appearance": ("words", {"model": ADAPTIVE}, [], "model.output: adaptive needs"),
    "a split too short for --batch-size": ("lexicon", {}, ["--batch-size", "400"], "valid: 3000 tokens cannot fill"),
    "a --text too short for the batch": ("lexicon", {}, ["--text", "SHORT"], "text: 10 tokens cannot fill"),
}


@pytest.mark.parametrize("case", sorted(BEFORE_THE_MODEL))
def test_evaluate_checks_the_data_as_train_does_before_building_the_model(case, corpora, tmp_path, capsys):
    """Adaptive output on ids by appearance evaluated garbage silently; the dataset was named
    without its section; a short split or text was found after the model was built, unnamed."""
    corpus, sections, flags, expected = BEFORE_THE_MODEL[case]
    config = tiny_config(tmp_path, corpora[corpus], **sections)
    (tmp_path / "short.txt").write_text("abc ab abc")
    flags = [str(tmp_path / "short.txt") if flag == "SHORT" else flag for flag in flags]
    err = _one_line_exit(evaluate_main, [config, "--checkpoint", _checkpoint(config, tmp_path), *flags], capsys)
    assert expected in err, err


# ---------------------------------------------------------------- 2. threads


def test_threads_beyond_the_bound_are_refused_naming_the_field_or_flag(corpora, tmp_path, capsys):
    """torch.set_num_threads(4e9) was 'ValueError: Overflow when unpacking long'; 2^31 - 1 it accepts."""
    base = dict(steps=1, block_size=8, batch_size=4)
    assert TrainConfig(**base, threads=MAX_THREADS).threads == MAX_THREADS
    for threads in (MAX_THREADS + 1, 2**31 - 1, 4_000_000_000):
        with pytest.raises(ConfigError, match=rf"^threads: must be <= {MAX_THREADS}"):
            TrainConfig(**base, threads=threads)
    config = tiny_config(tmp_path, corpora["lexicon"])
    with pytest.raises(ConfigError, match=r"^train\.threads: must be <="):
        load_run_config(config, ["train.threads=4000000000"])
    err = _one_line_exit(evaluate_main, [config, "--checkpoint", tmp_path / "absent.pt", "--threads", "4000000000"],
                         capsys)
    assert f"argument --threads: must be <= {MAX_THREADS}" in err, err
    from experiments.gpu_check import main as gpu_check_main

    err = _one_line_exit(gpu_check_main, ["--small", "--threads", "4000000000"], capsys)
    assert f"argument --threads: must be <= {MAX_THREADS}" in err, err


# ---------------------------------------------------------------- 3. layers and clusters


def test_layers_and_adaptive_clusters_are_bounded_naming_the_field(corpora, tmp_path, capsys):
    """20,000 layers took 48 s and 0.9 GB in experiments.summary (one module per layer, even on the
    meta device); the adaptive clusters are built one by one the same way."""
    assert ModelConfig(**{**MODEL, "num_layers": MAX_LAYERS}).num_layers == MAX_LAYERS
    for layers in (MAX_LAYERS + 1, 20_000, 2**31):
        with pytest.raises(ConfigError, match=rf"^num_layers: must be <= {MAX_LAYERS}"):
            ModelConfig(**{**MODEL, "num_layers": layers})
    adaptive = {**MODEL, "vocab_size": 1000, "output": "adaptive", "adaptive_div_value": 1.0}
    assert len(ModelConfig(**adaptive, adaptive_cutoffs=list(range(1, MAX_CUTOFFS + 1))).adaptive_cutoffs) == MAX_CUTOFFS
    with pytest.raises(ConfigError, match=rf"^adaptive_cutoffs: must list at most {MAX_CUTOFFS}"):
        ModelConfig(**adaptive, adaptive_cutoffs=list(range(1, MAX_CUTOFFS + 2)))
    config = tiny_config(tmp_path, corpora["lexicon"])
    err = _one_line_exit(summary_main, [config, "--set", "model.num_layers=20000"], capsys)
    assert f"model.num_layers: must be <= {MAX_LAYERS}" in err, err


# ---------------------------------------------------------------- 4. library modules run as commands


@pytest.mark.parametrize(("module", "command"), [("model.summary", "python -m experiments.summary CONFIG.yaml"),
                                                 ("model.convert_official", "python -m experiments.convert ")])
def test_a_model_module_run_as_a_command_names_the_command(module, command):
    """They did nothing and exited 0, while a README told users to run them."""
    proc = subprocess.run([sys.executable, "-m", module, "x.yaml"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and proc.stdout == "", proc
    assert len(proc.stderr.strip().splitlines()) == 1 and command in proc.stderr, proc.stderr


# ---------------------------------------------------------------- 5. repeated list entries


def test_repeated_list_entries_are_refused_naming_the_field(corpora, tmp_path):
    """eval.splits [valid, valid] evaluated valid twice under another run id than [valid]."""
    with pytest.raises(ConfigError, match=r"^splits: lists valid more than once"):
        EvalConfig(splits=["valid", "test", "valid"])
    config = tiny_config(tmp_path, corpora["lexicon"], eval={"splits": ["valid", "valid"]})
    with pytest.raises(ConfigError, match=r"^eval\.splits: lists valid more than once"):
        load_run_config(config)
    # adaptive_cutoffs, the other list of a model, must increase strictly: no repeat either
    with pytest.raises(ConfigError, match=r"^adaptive_cutoffs: must increase strictly"):
        ModelConfig(**{**MODEL, **ADAPTIVE, "adaptive_cutoffs": [2, 2]})


# ---------------------------------------------------------------- 6. an empty split


@pytest.mark.parametrize("level", ["char", "word"])
@pytest.mark.parametrize("empty", [("train", "valid", "test"), ("train",), ("valid",), ("test",)],
                         ids=["all", "train", "valid", "test"])
def test_an_empty_split_is_said_in_the_same_words_at_every_level(level, empty, tmp_path, capsys):
    """At word level, an empty corpus said 'the vocabulary has no <eos>, so it is not a word-level
    vocabulary'; at char level '0 symbol(s)'; an empty train split alone 'the train split of text is empty'."""
    source = tmp_path / "src"
    source.mkdir()
    for split in ("train", "valid", "test"):
        (source / f"{split}.txt").write_text("" if split in empty else "a b\nb a\n")
    err = _one_line_exit(data_main, ["prepare", "text", "--source", source, "--level", level,
                                             "--out", tmp_path / "out"], capsys)
    first = empty[0]
    assert f"{source / (first + '.txt')}: the {first} split is empty (0 tokens)" in err, err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 7. not a checkpoint


def test_a_file_that_is_not_a_checkpoint_is_one_short_line(corpora, tmp_path, capsys):
    """A YAML given as --checkpoint printed torch's paragraph on weights_only inside the error."""
    config = tiny_config(tmp_path, corpora["lexicon"])
    err = _one_line_exit(evaluate_main, [config, "--checkpoint", config], capsys)
    assert "not a PyTorch checkpoint" in err and "weights_only" not in err and len(err) < 300, err
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}, "note": fractions.Fraction(1, 3)}, foreign)  # an object weights_only refuses
    with pytest.raises(UserError) as error:
        read_checkpoint(foreign)
    message = str(error.value)
    assert "fractions.Fraction" in message and "weights_only" not in message and len(message) < 300, message
