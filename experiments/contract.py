"""The data contract: a run config against its prepared data and its process count, before any work starts.

Everything a model depends on is in the prepared corpus's meta.json
(experiments/data/format.py): vocabulary size, id order, end-of-line symbol,
split sizes, checksums, provenance. `check_run` reads it (not the data) and
refuses, in one line naming the config field, the data value and the file,
every combination that would otherwise fail on a GPU, some of them only after
the last training step (the final evaluation):

- the vocabulary size differs from `model.vocab_size`;
- the data is another corpus than `data.dataset`;
- adaptive output (`model.output: adaptive`) on ids not ordered by frequency
  (the cutoffs assume the most frequent words first; it trains, just worse);
- a split too short for its batch: train and valid (the partial validation) for
  `train.batch_size x (train.block_size + 1)`, each of `eval.splits` for
  `eval.batch_size x (train.block_size + 1)`;
- `train.batch_size` or `eval.batch_size` not divisible by the number of
  processes, or `train.batch_split` not dividing each process's rows;
- a `data.path` that does not exist (only a warning when the caller says that
  compute nodes see another filesystem than the machine checking).

Warnings (returned, for the caller to print) say what is allowed but worth
knowing: data prepared from a file that is not the pinned official archive.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from experiments.data import META, check_meta, read_meta
from experiments.data.corpus import check_split_files
from experiments.run_config import RunConfig, data_path
from model.errors import ConfigError, UserError


def check_run(cfg: RunConfig, world_size: int, meta_path_or_dir: str | os.PathLike | None = None, *,
              data_elsewhere: bool = False) -> list[str]:
    """Refuse a run that cannot work on its data with `world_size` processes; return warnings.

    `meta_path_or_dir`: the prepared directory (its meta.json and split files are
    checked) or a meta.json file alone (the contract only); default `data.path`,
    relative paths from the project root. `data_elsewhere`: compute nodes see
    another filesystem, so missing data is a warning, not an error.
    Raises ConfigError (a UserError) whose field is the config's dotted path.
    """
    check_processes(cfg, world_size)
    location = Path(meta_path_or_dir) if meta_path_or_dir is not None else data_path(cfg)
    meta_file = location if location.suffix == ".json" else location / META
    if not (meta_file.is_file() if location.suffix == ".json" else location.is_dir()):
        missing = (f"{cfg.data.path!r}: {location} does not exist on this machine; prepare it with "
                   f"`python -m experiments.data prepare {cfg.data.dataset} --out {location}`")
        if data_elsewhere:
            return [f"data.path {missing} (not checked here: compute nodes see another filesystem)"]
        raise ConfigError("data.path", missing)
    try:
        meta = read_meta(meta_file.parent)
        check_meta(meta_file.parent, meta)
        if location.suffix != ".json":
            check_split_files(location, meta)
    except UserError as err:
        raise ConfigError("data.path", f"{cfg.data.path!r}: {err}") from None
    check_contract(cfg, meta, meta_file)
    return warnings_for(cfg, meta, meta_file)


def check_processes(cfg: RunConfig, world_size: int) -> None:
    """Batches that `world_size` processes can share (no data needed)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    train, evaluation = cfg.train, cfg.eval
    if train.batch_size % world_size:
        raise ConfigError("train.batch_size", f"{train.batch_size} is not divisible by the {world_size} processes "
                                              "the run starts; each process reads an equal share of the rows")
    rows = train.batch_size // world_size
    if rows % train.batch_split:
        raise ConfigError("train.batch_split", f"{train.batch_split} does not divide the {rows} rows of each of the "
                                               f"{world_size} processes (train.batch_size={train.batch_size})")
    if evaluation.batch_size % world_size:
        raise ConfigError("eval.batch_size", f"{evaluation.batch_size} is not divisible by the {world_size} "
                                             "processes the run starts (the final evaluation shares its rows too)")


def check_contract(cfg: RunConfig, meta: Mapping[str, Any], meta_file: Path) -> None:
    """The config against a (schema-checked) meta.json; `meta_file` names it in messages."""
    check_model_fits_data(cfg, meta, meta_file)
    check_split_sizes(cfg, meta, meta_file)


def check_model_fits_data(cfg: RunConfig, meta: Mapping[str, Any], meta_file: Path) -> None:
    """The dataset, the vocabulary size and, for the adaptive output, ids by frequency: what any
    use of the model on this data needs (training and `experiments.evaluate` alike)."""
    if meta["dataset"] != cfg.data.dataset:
        raise ConfigError("data.dataset", f"is {cfg.data.dataset!r} but {meta_file} holds {meta['dataset']!r}")
    vocab_size = len(meta["vocab"])
    if cfg.model.vocab_size != vocab_size:
        rule = f" ({meta['vocab_rule']})" if meta.get("vocab_rule") else ""
        raise ConfigError("model.vocab_size", f"is {cfg.model.vocab_size} but {meta_file} has vocab_size "
                                              f"{vocab_size}{rule}; set model.vocab_size: {vocab_size}")
    order = meta.get("vocab_order")
    if cfg.model.output == "adaptive" and order != "frequency":
        raise ConfigError("model.output", f"adaptive needs ids sorted by decreasing frequency, but {meta_file} has "
                                          f"vocab_order {order!r}; prepare the data with --vocab-order frequency "
                                          "or use model.output: softmax")


def check_split_sizes(cfg: RunConfig, meta: Mapping[str, Any], meta_file: Path) -> None:
    """Each split fills the rows that training, its partial validation and the final evaluation read."""
    block = cfg.train.block_size
    needs = [("train", "train.batch_size", cfg.train.batch_size, "training"),
             ("valid", "train.batch_size", cfg.train.batch_size, "the partial validation during training"),
             *[(split, "eval.batch_size", cfg.eval.batch_size, "the final evaluation") for split in cfg.eval.splits]]
    for split, field, rows, purpose in needs:
        need, have = rows * (block + 1), meta["sizes"][split]
        if have < need:
            raise ConfigError(field, f"{rows} rows of train.block_size + 1 = {block + 1} tokens need {need:,} tokens "
                                     f"for {purpose}, but the {split} split in {meta_file} has {have:,}; "
                                     f"use a smaller {field} or train.block_size")


def warnings_for(cfg: RunConfig, meta: Mapping[str, Any], meta_file: Path) -> list[str]:
    source = meta.get("source")
    if isinstance(source, Mapping) and source.get("official") is False:
        return [f"{meta_file}: {cfg.data.dataset} prepared from {source.get('file')!r}, not the pinned official "
                "archive: results are not comparable with the paper's"]
    return []


def planned_device_type(cfg: RunConfig) -> str:
    """The device type a run's jobs train on: train.device, where 'auto' is CUDA when the `slurm:`
    section asks for GPUs."""
    if cfg.train.device == "auto":
        return "cuda" if cfg.slurm.gpus_per_node else "cpu"
    return cfg.train.device


def planned_processes(cfg: RunConfig) -> int:
    """How many processes a run's `slurm:` section starts: one per GPU, or cpu_tasks_per_node, on each node."""
    return cfg.slurm.nodes * cfg.slurm.tasks_per_node
