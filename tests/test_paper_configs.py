"""Every shipped config proven against the data it names (issue 8, item 5).

For each dataset a miniature archive in the official format (tests/miniatures.py)
is prepared once with `python -m experiments.data prepare NAME --source ZIP
--allow-unpinned`; then every config and grid under experiments/paper/ and
experiments/cpu/ (and the demo grid) that names it is loaded, and each of its
runs (seeds aside) is

1. checked at its own geometry against the data contract (experiments/contract.py)
   with the process count its `slurm:` section starts: vocabulary size, id
   order, split sizes, batches shared by the processes. The miniature's
   meta.json is checked with the official split sizes (registry: official_sizes);
   the miniatures have the official vocabulary size, so `model.vocab_size` is
   checked as it stands;
2. trained for two steps through `experiments.train` at a shrunk geometry
   (width, depth, span, block, batch) with everything else, the vocabulary and
   output layer included, as the config says, then evaluated by the final
   evaluation into eval.json.

The vocabulary is never overridden: a config whose vocab_size is not what
`prepare` gives fails here. Runs are trained in this process (a subprocess per
run would spend most of the time importing torch).
"""
from __future__ import annotations

import dataclasses
import json
import math
import zipfile
from pathlib import Path

import pytest

from experiments import train
from experiments.contract import check_run, planned_processes
from experiments.data import load_corpus, main as data_main, registry
from experiments.grid import load_grid
from experiments.run_config import RunConfig
from model.errors import UserError
from tests.conftest import PROJECT_ROOT, SHARED_DATA, require_path
from tests.miniatures import MINIATURES

CONFIG_FILES = sorted([*(PROJECT_ROOT / "experiments" / "paper").glob("*.yaml"),
                       *(PROJECT_ROOT / "experiments" / "cpu").glob("*.yaml"),
                       PROJECT_ROOT / "experiments" / "demo.yaml"])
SHRINK = ["model.d_model=64", "model.num_layers=2", "model.attn_span=32", "train.block_size=16",
          "train.batch_size=4", "train.steps=2", "train.finetune_steps=0", "train.device=cpu", "train.threads=1",
          "train.log_every=1", "train.eval_every=1000", "eval.max_tokens=256"]
"""d_model 64: the narrowest adaptive cluster of the WikiText-103 model is d / 4^3 wide; span 32: the ramp."""
LEXICON = ["--num-words", "200", "--train-chars", "20000", "--valid-chars", "3000", "--test-chars", "3000"]


def _dataset(path: Path) -> str:
    return load_grid(path).runs[0].data.dataset


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """dataset -> its prepared miniature (built on first use, shared by the module)."""
    root = tmp_path_factory.mktemp("miniatures")
    cache: dict[str, Path] = {}

    def get(dataset: str) -> Path:
        if dataset not in cache:
            out = root / dataset
            if dataset in MINIATURES:
                archive = MINIATURES[dataset](root, require_path(SHARED_DATA, "shared data folder"))
                argv = ["prepare", dataset, "--source", str(archive), "--allow-unpinned"]
            elif dataset == "lexicon":
                argv = ["prepare", "lexicon", *LEXICON]
            else:  # "text": the CPU configs read WikiText-2 characters
                source = require_path(SHARED_DATA / "wikitext-2", "WikiText-2")
                argv = ["prepare", "text", "--source", str(source), "--level", "char"]
            assert data_main([*argv, "--out", str(out)]) == 0
            cache[dataset] = out
        return cache[dataset]

    return get


def distinct_runs(path: Path) -> list[RunConfig]:
    """The grid's runs, one per configuration (seeds change nothing this test checks)."""
    seen, runs = set(), []
    for cfg in load_grid(path).runs:
        key = json.dumps({**cfg.to_dict(), "name": None, "train": {**cfg.to_dict()["train"], "seed": 0}},
                         sort_keys=True)
        if key not in seen:
            seen.add(key)
            runs.append(cfg)
    return runs


def contract_meta(cfg: RunConfig, data: Path, tmp_path: Path) -> Path:
    """The miniature's meta.json, with the official split sizes where the split rule fixes them."""
    meta = json.loads((data / "meta.json").read_text())
    official = registry.get(cfg.data.dataset).official_sizes
    if official is not None:
        meta["sizes"] = dict(official)
    path = tmp_path / "contract" / "meta.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[p.relative_to(PROJECT_ROOT).as_posix() for p in CONFIG_FILES])
def test_config_trains_and_evaluates_on_its_dataset(path: Path, prepared, tmp_path: Path, capsys) -> None:
    data = prepared(_dataset(path))
    corpus = load_corpus(data)
    official_vocab = registry.get(corpus.meta["dataset"]).official_vocab
    for index, cfg in enumerate(distinct_runs(path)):
        assert cfg.model.vocab_size == corpus.meta["vocab_size"], (cfg.name, corpus.meta["vocab_rule"])
        if official_vocab is not None:
            assert cfg.model.vocab_size == official_vocab, cfg.name  # what the pinned archive gives
        warnings = check_run(cfg, planned_processes(cfg), contract_meta(cfg, data, tmp_path))
        assert all("not the pinned official archive" in w for w in warnings), warnings

        config = tmp_path / f"{index}.yaml"
        config.write_text(cfg.to_yaml())
        run_dir = tmp_path / f"run-{index}"
        code = train.main([str(config), *[f"--set={kv}" for kv in SHRINK], f"--set=data.path={data}",
                           "--run-dir", str(run_dir)])
        assert code == 0, (cfg.name, capsys.readouterr().err[-2000:])
        result = json.loads((run_dir / "eval.json").read_text())
        assert result["step"] == 2 and result["unit"] == corpus.unit
        for split in cfg.eval.splits:
            assert math.isfinite(result[split]["loss"]) and result[split]["tokens"] > 0, (cfg.name, split)


def test_every_config_file_is_covered() -> None:
    datasets = {_dataset(path) for path in CONFIG_FILES}
    assert {"enwik8", "text8", "wikitext-103"} <= datasets
    assert all(registry.get(name).official_sizes for name in MINIATURES)


# ---------------------------------------------------------------- the miniatures and the pins


def test_a_miniature_needs_allow_unpinned_and_is_recorded_as_not_official(tmp_path: Path, capsys) -> None:
    archive = MINIATURES["text8"](tmp_path, require_path(SHARED_DATA, "shared data folder"))
    with pytest.raises(UserError, match="--allow-unpinned"):
        data_main(["prepare", "text8", "--source", str(archive), "--out", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()
    assert data_main(["prepare", "text8", "--source", str(tmp_path), "--allow-unpinned",
                      "--out", str(tmp_path / "t8")]) == 0
    assert "warning: " in capsys.readouterr().err
    meta = load_corpus(tmp_path / "t8", dataset="text8").meta
    assert meta["source"]["official"] is False and meta["source"]["file"] == "text8.zip"
    assert (meta["vocab_size"], meta["eos"], meta["eos_id"], meta["vocab_order"]) == (27, None, None, "appearance")
    assert meta["sizes"] == {"train": 180_000, "valid": 10_000, "test": 10_000}


@pytest.mark.parametrize("dataset", ["enwik8", "wikitext-103"])
def test_the_official_archive_must_give_the_official_vocabulary(dataset, tmp_path: Path, monkeypatch, capsys) -> None:
    """Pinning the miniature's sha256 in place of the official one: it prepares as official
    (its vocabulary is the official size); one symbol fewer is refused."""
    from experiments.data import archive as archive_module
    from experiments.data.datasets import enwik8, wikitext103
    from tests import miniatures

    module = {"enwik8": enwik8, "wikitext-103": wikitext103}[dataset]
    shared = require_path(SHARED_DATA, "shared data folder")
    good = MINIATURES[dataset](tmp_path, shared)
    pin = lambda path: dataclasses.replace(module.ARCHIVE, sha256=archive_module.sha256_file(path))  # noqa: E731
    monkeypatch.setattr(archive_module, "BYTE_CORPUS_CHARS", len(miniatures.enwik8_bytes(shared)))
    monkeypatch.setattr(module, "ARCHIVE", pin(good))
    assert data_main(["prepare", dataset, "--source", str(good), "--out", str(tmp_path / "official")]) == 0
    assert "warning" not in capsys.readouterr().err
    meta = load_corpus(tmp_path / "official").meta
    assert meta["source"]["official"] is True and meta["vocab_size"] == module.VOCAB

    bad = tmp_path / "bad" / good.name
    bad.parent.mkdir()
    with zipfile.ZipFile(good) as z:
        members = {name: z.read(name) for name in z.namelist()}
    if dataset == "enwik8":  # one byte value fewer: one that only the completing page holds
        enwik5 = (shared / "enwik8" / "enwik5").read_bytes()[:miniatures.ENWIK5_USED_BYTES]
        only_added = max(set(members["enwik8"]) - set(enwik5))
        members["enwik8"] = members["enwik8"].replace(bytes([only_added]), b"?")
    else:  # one word fewer
        train = "wikitext-103/wiki.train.tokens"
        members[train] = members[train].rstrip(b" \n").rsplit(b" ", 1)[0] + b" \n"
    miniatures.write_zip(bad, members)
    monkeypatch.setattr(module, "ARCHIVE", pin(bad))
    with pytest.raises(UserError, match="vocabulary of"):
        data_main(["prepare", dataset, "--source", str(bad), "--out", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()


def test_adding_a_dataset_is_adding_a_module() -> None:
    import pkgutil

    from experiments.data import DATASETS, DataConfig, datasets as package

    modules = [m.name for m in pkgutil.iter_modules(package.__path__)]
    assert len(modules) == len(DATASETS) == len(registry.datasets())
    for name in DATASETS:
        assert DataConfig(dataset=name, path="data/x").dataset == name
