"""The data contract (experiments/contract.py): each refusal as a small input, called directly.

Every refusal is a ConfigError whose field is the config's dotted path and whose
one-line message names the data value and the file.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from experiments.contract import check_run, planned_processes
from experiments.data import main as data_main
from experiments.run_config import RunConfig, run_config_from_dict
from model.errors import ConfigError
from tests.helpers import TINY_RUN

# 27 symbols; sizes train 4000, valid 600, test 300: the short test split is what eval checks bite on
LEXICON = ["--num-words", "40", "--train-chars", "4000", "--valid-chars", "600", "--test-chars", "300"]
WORDS = {"train": "b a c\na c\nd\n" * 30, "valid": "a b\n" * 30, "test": "c d\n" * 30}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("contract")
    assert data_main(["prepare", "lexicon", *LEXICON, "--out", str(root / "lexicon")]) == 0
    source = root / "words-src"
    source.mkdir()
    for split, text in WORDS.items():
        (source / f"{split}.txt").write_text(text)
    for order in ("appearance", "frequency"):
        assert data_main(["prepare", "text", "--source", str(source), "--level", "word", "--vocab-order", order,
                          "--out", str(root / f"words-{order}")]) == 0
    return {"lexicon": root / "lexicon", "appearance": root / "words-appearance", "frequency": root / "words-frequency"}


def config(path: Path, **sections: dict) -> RunConfig:
    data = copy.deepcopy(TINY_RUN)
    meta = json.loads((path / "meta.json").read_text())
    data["data"] = {"dataset": meta["dataset"], "path": str(path)}
    data["model"]["vocab_size"] = meta["vocab_size"]
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return run_config_from_dict(data)


def refused(cfg: RunConfig, world_size: int = 1, where: Path | None = None, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        check_run(cfg, world_size, where, **kwargs)
    assert "\n" not in str(err.value)
    return err.value


def test_a_run_that_fits_its_data_passes_without_warnings(corpora):
    cfg = config(corpora["lexicon"])
    assert check_run(cfg, 1) == []  # default: data.path
    assert check_run(cfg, 2, corpora["lexicon"]) == []
    assert check_run(cfg, 1, corpora["lexicon"] / "meta.json") == []


def test_vocabulary_size_mismatch_names_the_field_the_value_and_the_file(corpora):
    err = refused(config(corpora["lexicon"], model={"vocab_size": 28}))
    assert err.field == "model.vocab_size"
    assert "is 28" in err.message and "vocab_size 27" in err.message and "set model.vocab_size: 27" in err.message
    assert str(corpora["lexicon"] / "meta.json") in err.message


def test_another_dataset_than_the_config_says(corpora):
    cfg = config(corpora["lexicon"], data={"dataset": "text8"})
    err = refused(cfg)
    assert err.field == "data.dataset" and "'lexicon'" in err.message and "meta.json" in err.message


def test_adaptive_output_needs_ids_ordered_by_frequency(corpora):
    adaptive = {"output": "adaptive", "adaptive_cutoffs": [2], "adaptive_div_value": 2.0}
    err = refused(config(corpora["appearance"], model=adaptive, train={"block_size": 4}, eval={"batch_size": 2}))
    assert err.field == "model.output" and "vocab_order 'appearance'" in err.message
    assert str(corpora["appearance"] / "meta.json") in err.message
    assert check_run(config(corpora["frequency"], model=adaptive, train={"block_size": 4}, eval={"batch_size": 2}),
                     1) == []


def test_eval_split_too_short_for_the_eval_batch_and_block(corpora):
    # test split: 300 tokens; 8 rows x (40 + 1) = 328 do not fit, although valid (600) does
    err = refused(config(corpora["lexicon"], train={"block_size": 40, "batch_size": 2}, eval={"batch_size": 8}))
    assert err.field == "eval.batch_size"
    assert "328" in err.message and "test split" in err.message and "300" in err.message
    assert str(corpora["lexicon"] / "meta.json") in err.message
    # evaluating only valid fits
    assert check_run(config(corpora["lexicon"], train={"block_size": 40, "batch_size": 2},
                            eval={"batch_size": 8, "splits": ["valid"]}), 1) == []


def test_train_and_valid_splits_too_short_for_the_training_batch(corpora):
    err = refused(config(corpora["lexicon"], train={"block_size": 399, "batch_size": 16}))
    assert err.field == "train.batch_size" and "train split" in err.message and "6,400" in err.message
    err = refused(config(corpora["lexicon"], train={"block_size": 99, "batch_size": 8}))
    assert err.field == "train.batch_size" and "valid split" in err.message and "partial validation" in err.message


@pytest.mark.parametrize("sections, world_size, field", [
    ({"train": {"batch_size": 6}}, 4, "train.batch_size"),
    ({"train": {"batch_size": 8, "batch_split": 4}}, 4, "train.batch_split"),
    ({"eval": {"batch_size": 2}}, 4, "eval.batch_size"),
])
def test_batches_not_divisible_by_the_processes(corpora, sections, world_size, field):
    cfg = config(corpora["lexicon"], **sections)
    err = refused(cfg, world_size)
    assert err.field == field and f"{world_size} processes" in err.message
    check_run(cfg, 1)  # the same config on one process is fine


def test_missing_data_path_is_an_error_or_a_warning_when_nodes_see_another_filesystem(corpora, tmp_path):
    cfg = config(corpora["lexicon"], data={"path": str(tmp_path / "absent")})
    err = refused(cfg)
    assert err.field == "data.path" and str(tmp_path / "absent") in err.message and "prepare lexicon" in err.message
    [warning] = check_run(cfg, 1, data_elsewhere=True)
    assert str(tmp_path / "absent") in warning and "another filesystem" in warning
    # the checks that need no data still refuse
    assert refused(config(corpora["lexicon"], data={"path": str(tmp_path / "absent")}, train={"batch_size": 3}),
                   2, data_elsewhere=True).field == "train.batch_size"


def test_relative_data_path_is_taken_from_the_project_root(corpora):
    err = refused(config(corpora["lexicon"], data={"path": "data/no-such-corpus-here"}))
    assert err.field == "data.path" and "/data/no-such-corpus-here" in err.message


def test_a_meta_json_alone_is_checked_without_split_files(corpora, tmp_path):
    shutil.copy(corpora["lexicon"] / "meta.json", tmp_path / "meta.json")
    assert check_run(config(corpora["lexicon"]), 1, tmp_path / "meta.json") == []
    assert refused(config(corpora["lexicon"], model={"vocab_size": 30}), 1, tmp_path / "meta.json").field \
        == "model.vocab_size"


def test_broken_prepared_data_is_refused_on_data_path(corpora, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(corpora["lexicon"], broken)
    cfg = config(broken)
    (broken / "test.bin").write_bytes(b"x" * 10)
    err = refused(cfg)
    assert err.field == "data.path" and "test.bin" in err.message
    (broken / "meta.json").write_text("{")
    assert refused(cfg).field == "data.path"


def test_data_not_from_the_pinned_archive_is_a_warning(corpora, tmp_path):
    copy_dir = tmp_path / "unpinned"
    shutil.copytree(corpora["lexicon"], copy_dir)
    meta = json.loads((copy_dir / "meta.json").read_text())
    meta["source"] = {"file": "enwik8.zip", "official": False}
    (copy_dir / "meta.json").write_text(json.dumps(meta))
    [warning] = check_run(config(copy_dir), 1)
    assert "not the pinned official archive" in warning and str(copy_dir / "meta.json") in warning


def test_planned_processes_follow_the_slurm_section(corpora):
    assert planned_processes(config(corpora["lexicon"], slurm={"nodes": 2, "gpus_per_node": 4})) == 8
    assert planned_processes(config(corpora["lexicon"])) == 1


def test_meta_json_records_what_a_model_depends_on(corpora):
    lexicon = json.loads((corpora["lexicon"] / "meta.json").read_text())
    assert (lexicon["vocab_size"], lexicon["vocab_order"], lexicon["eos"], lexicon["eos_id"]) == (27, "appearance",
                                                                                                  None, None)
    assert "distinct byte" in lexicon["vocab_rule"]
    assert set(lexicon["sizes"]) == {"train", "valid", "test"}
    assert set(lexicon["sha256"]) == {"train.bin", "valid.bin", "test.bin"}
    words = json.loads((corpora["frequency"] / "meta.json").read_text())
    assert (words["vocab_order"], words["eos"]) == ("frequency", "<eos>")
    assert words["vocab"][words["eos_id"]] == "<eos>" and "<eos> closing each line" in words["vocab_rule"]
