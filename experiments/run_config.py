"""A run config: the sections of DESIGN §3 in one typed object, and its identity.

`run_id = <name>-<first 8 hex of sha256(canonical JSON of the resolved config)>`,
where fields that cannot change the trained model or its final evaluation are left
out of the hash (NOT_HASHED): the name and grid, the `slurm` and `log` sections, the
attention implementation, the cadence of logging, checkpoints and partial validation,
and the process layout (`train.batch_split`; the number of processes never was in it).
So moving a run to another partition, turning tracking on, checkpointing more often
or resuming on other GPUs keeps its id.

Run directories made before cadence left the hash are named by the legacy hash
(`legacy_config_hash`, computed the old way from the same config): `find_run_dir`
looks a run up under its id first, then under the legacy id, then by content (a
`<name>-<8 hex>` folder whose config.yaml has this hash), so they still resolve.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import yaml

from experiments.config import build, load_config, parse_yaml, read_text, read_yaml_file, to_dict
from experiments.data import DataConfig
from experiments.evaluation import EvalConfig
from experiments.log_config import LogConfig
from experiments.optim import OptimConfig
from experiments.resources import SlurmConfig
from experiments.run_dir import PROJECT_ROOT
from experiments.train_config import TrainConfig
from model.config import ModelConfig
from model.errors import ConfigError, UserError

CADENCE = ("train.checkpoint_every", "train.log_every", "train.eval_every", "train.val_fraction",
           "train.checkpoint_caches", "train.batch_split")
"""How often a run logs, checkpoints and validates partially (and on how large a part), what
its checkpoints hold, and how its rows are cut into micro-batches: none changes the trained
model (batch_split only its float rounding, like the number of processes) or its final evaluation."""
NOT_HASHED = ("name", "grid", "slurm", "log", "model.attention", "train.compile", *CADENCE)
"""Dotted paths left out of the run-id hash: they cannot change the trained model
(`model.attention` picks an implementation of the same math: `model/fused_attention.py`, and
`train.compile` runs the same math through torch.compile;
`log` says where curves are shown: `experiments/log_config.py`; CADENCE)."""
LEGACY_NOT_HASHED = ("name", "grid", "slurm", "log", "model.attention", "train.checkpoint_caches", "train.compile")
"""The rule before the cadence fields left the hash (fields added since are left out too,
as configs of that time did not have them): the names of run directories made then."""


@dataclass
class RunConfig:
    model: ModelConfig
    """The network (model/config.py)."""
    data: DataConfig
    """Which prepared corpus to read (experiments/data/)."""
    optim: OptimConfig
    """Optimiser, clipping and warm-up (experiments/optim.py)."""
    train: TrainConfig
    """Steps, batching, stages, checkpoints, logging (experiments/train_config.py)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Final full evaluation (experiments/evaluation.py)."""
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    """Resources of one run on a cluster (experiments/resources.py, interpreted by slurm/); not hashed."""
    log: LogConfig = field(default_factory=LogConfig)
    """Live tracking in TensorBoard / Weights & Biases (experiments/log_config.py); not hashed."""
    name: str = "run"
    """Short human-readable slug, the first part of the run id; not hashed."""
    grid: str = ""
    """Name of the grid the run belongs to, if any; not hashed."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*", self.name):
            raise ConfigError("name", f"must be a slug of letters, digits and _.=+- , got {self.name!r}")

    def to_dict(self) -> dict:
        return to_dict(self)

    @property
    def config_hash(self) -> str:
        return self._hash(NOT_HASHED)

    @property
    def legacy_config_hash(self) -> str:
        """The hash as computed before the cadence fields left it (LEGACY_NOT_HASHED)."""
        return self._hash(LEGACY_NOT_HASHED)

    def _hash(self, not_hashed: Iterable[str]) -> str:
        hashed = _without(self.to_dict(), not_hashed)
        hashed["train"] = TrainConfig.hash_form(hashed["train"])  # precision fp32|bf16 hashed as the legacy bf16
        canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:8]

    @property
    def run_id(self) -> str:
        return f"{self.name}-{self.config_hash}"

    @property
    def legacy_run_id(self) -> str:
        return f"{self.name}-{self.legacy_config_hash}"

    def known_hashes(self) -> set[str]:
        """Hashes a checkpoint or run folder of this config may carry: the current and the legacy one."""
        return {self.config_hash, self.legacy_config_hash}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _without(data: dict, paths: Iterable[str]) -> dict:
    """A copy of nested `data` without the entries at the dotted `paths`."""
    out = dict(data)
    for path in paths:
        head, _, rest = path.partition(".")
        if head not in out:
            continue
        if rest:
            out[head] = _without(out[head], [rest])
        else:
            del out[head]
    return out


def find_run_dir(grid_dir: str | Path, cfg: RunConfig) -> Path:
    """Where `cfg`'s run lives in `grid_dir`: `<run_id>`; else a folder made before the cadence
    fields left the hash, `<legacy_run_id>`; else a `<name>-<8 hex>` folder whose config.yaml has
    this config's hash (a legacy run resumed with another cadence); else `<run_id>` (a new run)."""
    grid_dir = Path(grid_dir)
    for run_id in (cfg.run_id, cfg.legacy_run_id):
        if (grid_dir / run_id / "config.yaml").is_file():
            return grid_dir / run_id
    pattern = re.compile(re.escape(cfg.name) + r"-[0-9a-f]{8}")
    candidates = sorted(p for p in grid_dir.glob(f"{cfg.name}-*") if pattern.fullmatch(p.name))
    for folder in candidates:
        try:
            if (folder / "config.yaml").is_file() and load_run_config(folder / "config.yaml").config_hash == cfg.config_hash:
                return folder
        except (UserError, OSError):  # a damaged config.yaml is not this run's
            continue
    return grid_dir / cfg.run_id


def load_run_config(path: str | Path, overrides: Iterable[str] = ()) -> RunConfig:
    """One run config; a grid file is refused with how to select one of its runs."""
    refuse_grid_file(path)
    return load_config(path, RunConfig, overrides)


def refuse_grid_file(path: str | Path) -> None:
    """A UserError when `path` is a grid (top-level `runs:`, `seeds:`, or a `grid:` mapping; experiments/grid.py)."""
    data = read_yaml_file(path)
    keys = [key for key in ("grid", "runs", "seeds") if key in data and (key != "grid" or isinstance(data[key], dict))]
    if not keys:
        return
    runs = data.get("runs") if isinstance(data.get("runs"), list) else [{}]
    sweep = data.get("grid") if isinstance(data.get("grid"), dict) else {}
    seeds = data.get("seeds") if isinstance(data.get("seeds"), list) else [None]
    count = len(runs) * len(seeds)
    for values in sweep.values():
        count *= len(values) if isinstance(values, list) else 1
    names = [str(run["name"]) for run in runs if isinstance(run, dict) and "name" in run]
    listed = f": {', '.join(names)}" if names else ""
    base = (parse_yaml(read_text(Path(path)), str(path)) or {}).get("base")
    example = _example_run(runs, sweep, seeds)
    one_run = (f"point at its base config {Path(path).parent / base} with the run's values as --set"
               if isinstance(base, str) else f"use a copy of it without its {', '.join(keys)} keys, with the run's "
                                             "values as --set")
    raise UserError(f"{path} is a grid file ({count} runs{listed}), not one run config: {one_run} "
                    f"(e.g. {' '.join('--set ' + value for value in example)}), or run the grid's runs with "
                    f"`python -m slurm.submit {path} --executor local --only {example[0]}` (add --dry-run to list them)")


def _example_run(runs: list, sweep: dict, seeds: list) -> list[str]:
    """`key=value`s of one of a grid's runs: the first run that sets values, else the first sweep point or seed."""
    for run in runs:
        values = [f"{key}={value}" for key, value in (run.items() if isinstance(run, dict) else ())
                  if key != "name" and not isinstance(value, (dict, list))]
        if values:
            return values
    point = [f"{key}={values[0]}" for key, values in sweep.items() if isinstance(values, list) and values]
    if point:
        return point
    return [f"train.seed={seeds[0]}"] if seeds[0] is not None else ["name=NAME"]


def run_config_from_dict(data: dict) -> RunConfig:
    return build(RunConfig, data)


def data_path(cfg: RunConfig) -> Path:
    """data.path, relative paths taken from the project root (jobs may start elsewhere)."""
    path = Path(cfg.data.path)
    return path if path.is_absolute() else PROJECT_ROOT / path
