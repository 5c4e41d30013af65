"""Small corpora and configs for fast training tests."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from experiments import data

TINY_RUN = {
    "name": "tiny",
    "model": {"variant": "all_attention", "vocab_size": 27, "num_layers": 2, "d_model": 16, "num_heads": 2,
              "num_persistent": 8, "attn_span": 16, "dropout": 0.1},
    "data": {"dataset": "lexicon", "path": "SET-ME"},
    "optim": {"name": "adagrad", "lr": 0.07, "clip": 0.03, "warmup_steps": 3},
    "train": {"steps": 12, "block_size": 8, "batch_size": 4, "seed": 3, "checkpoint_every": 4, "log_every": 1,
              "eval_every": 6, "device": "cpu", "threads": 1},
    "eval": {"batch_size": 2, "max_tokens": 400},
}


def prepare_lexicon(out: Path, train_chars: int = 20_000) -> Path:
    """A small embedded corpus (a few ms to generate)."""
    if not (out / "meta.json").exists():
        data.main(["prepare", "lexicon", "--out", str(out), "--num-words", "50", "--train-chars", str(train_chars),
                   "--valid-chars", "3000", "--test-chars", "3000"])
    return out


def tiny_config(tmp_path: Path, corpus: Path, **sections: dict) -> Path:
    """Write TINY_RUN (sections merged one level deep) as a YAML file; returns its path."""
    cfg = copy.deepcopy(TINY_RUN)
    cfg["data"]["path"] = str(corpus)
    prepared = data.load_corpus(corpus)
    cfg["model"]["vocab_size"] = len(prepared.vocab)
    cfg["data"]["dataset"] = prepared.meta["dataset"]
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    path = tmp_path / f"run-{len(list(tmp_path.glob('run-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
