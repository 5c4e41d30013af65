"""Ablation grids: one YAML expanded into a deterministic list of run configs.

A grid file is a run config (it may inherit one with `base:` and override any
section inline) plus three optional keys:

    grid:            # dotted key -> list of values; the cartesian product, in file order
      model.num_persistent: [64, 128, 256]
    runs:            # explicit list of override mappings (dotted or nested keys)
      - {name: attn-only, model.variant: attention_only, model.num_persistent: 0}
    seeds: [0, 1]    # each point once per seed (sets train.seed)

Points are runs x grid x seeds. A point's slug is its `name` plus the values the
grid and seeds set (`fig2-num_persistent=64-seed=1`); its run id adds the config
hash. The grid's name is the file's stem: runs live in `<root>/<grid name>/<run_id>/`, so
the stem must be a plain folder name (a letter or digit first: not `.`, `..` or hidden).
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from experiments.config import apply_overrides, merge, parse_yaml, read_yaml_file
from experiments.run_config import RunConfig, find_run_dir, run_config_from_dict
from experiments.run_dir import PROJECT_ROOT
from model.errors import ConfigError, UserError

DEFAULT_ROOT = PROJECT_ROOT / "runs"
GRID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""A grid's name (its file's stem) is a folder of the results root, found by analysis's folder scan."""


@dataclass
class Grid:
    name: str
    path: Path
    runs: list[RunConfig]

    def run_dir(self, cfg: RunConfig, root: Path | None = None) -> Path:
        """`<root>/<grid>/<run_id>`, or the folder an earlier hash rule named (run_config.find_run_dir);
        a link to another grid's directory once a submission found the run there (experiments/store.py)."""
        return find_run_dir(Path(root or DEFAULT_ROOT) / self.name, cfg)

    def run_dirs(self, root: Path | None = None) -> list[Path]:
        return [self.run_dir(cfg, root) for cfg in self.runs]


def load_grid(path: str | Path, only: Iterable[str] = (), overrides: Iterable[str] = ()) -> Grid:
    """Expand a grid file; `only` keeps the runs whose config matches every `key=value`.

    `overrides` (`key=value`) change the base of every run, before the grid's own values.
    """
    path = Path(path)
    if not GRID_NAME.fullmatch(path.stem):
        raise UserError(f"{path}: a grid's name is its file name without .yaml and names its folder of runs; "
                        f"{path.stem!r} is not a plain folder name (letters, digits, '.', '_', '-'; a letter or digit first)")
    data = apply_overrides(read_yaml_file(path), overrides)
    sweep, explicit, seeds = data.pop("grid", {}), data.pop("runs", [{}]), data.pop("seeds", None)
    _check_shapes(sweep, explicit, seeds)
    data["grid"] = path.stem
    runs = [_build_point(data, run, point, seed, index)
            for index, (run, point, seed) in enumerate(_points(sweep, explicit, seeds))]
    _check_unique(runs)  # before --only: the indexes are the file's points, and a broken grid stays refused
    runs = _filter(runs, list(only))
    return Grid(name=path.stem, path=path, runs=runs)


def grid_run_dirs(grid_yaml: str | Path, results_root: str | Path | None = None) -> list[Path]:
    """Run directories of every run of a grid (used by the analysis commands)."""
    grid = load_grid(grid_yaml)
    return grid.run_dirs(Path(results_root) if results_root else None)


def _check_shapes(sweep: Any, explicit: Any, seeds: Any) -> None:
    if not isinstance(sweep, dict):
        raise ConfigError("grid", "must map dotted keys to lists of values")
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key}", "must be a non-empty list of values")
    if not isinstance(explicit, list) or not all(isinstance(r, dict) for r in explicit) or not explicit:
        raise ConfigError("runs", "must be a non-empty list of override mappings")
    if seeds is not None and (not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds) or not seeds):
        raise ConfigError("seeds", "must be a non-empty list of integers")
    _check_set_once(sweep, explicit, seeds)


def _check_set_once(sweep: dict, explicit: list[dict], seeds: list[int] | None) -> None:
    """Refuse a key set by two of runs, grid and seeds: the later one won silently, so points
    named after one value ran with another (grid: {train.seed: [0, 1]} with seeds: [0] made two
    runs named seed=0 and seed=1, both with seed 0)."""
    if seeds is not None and "train.seed" in sweep:
        raise ConfigError("seeds", "train.seed is also swept by grid: give the seeds in one place")
    for index, run in enumerate(explicit):
        keys = _dotted(_expand_dotted(run, f"runs[{index}]"))
        twice = sorted(keys & set(sweep))
        if twice:
            raise ConfigError(f"runs[{index}].{twice[0]}", "is also swept by grid: give its values in one place")
        if seeds is not None and "train.seed" in keys:
            raise ConfigError(f"runs[{index}].train.seed", "is also set by seeds: give the seeds in one place")


def _dotted(nested: dict, prefix: str = "") -> set[str]:
    """{'train': {'seed': 1}} -> {'train.seed'}: the dotted keys of a nested mapping's leaves."""
    keys: set[str] = set()
    for key, value in nested.items():
        keys |= _dotted(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {f"{prefix}{key}"}
    return keys


def _points(sweep: dict, explicit: list[dict], seeds: list[int] | None):
    combos = [dict(zip(sweep, values)) for values in itertools.product(*sweep.values())]
    return itertools.product(explicit, combos, seeds if seeds is not None else [None])


def _build_point(base: dict, run: dict, point: dict, seed: int | None, index: int) -> RunConfig:
    data = merge(base, _expand_dotted(run, f"runs[{index}]"))
    data = apply_overrides(data, [f"{k}={_yaml_scalar(v)}" for k, v in point.items()])
    label = [f"{k.split('.')[-1]}={v}" for k, v in point.items()]
    if seed is not None:
        data = merge(data, {"train": {"seed": seed}})
        label.append(f"seed={seed}")
    data["name"] = "-".join([str(data.get("name", "run"))] + label)
    return run_config_from_dict(data)


def _expand_dotted(overrides: dict, where: str) -> dict:
    out: dict = {}
    for key, value in overrides.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(where, f"bad key {key!r}")
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        out = merge(out, nested)
    return out


def _yaml_scalar(value: Any) -> str:
    return json.dumps(value)  # JSON is valid YAML and round-trips lists, numbers and null


def _filter(runs: list[RunConfig], only: list[str]) -> list[RunConfig]:
    for item in only:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError("", f"--only expects key=value, got {item!r}")
        wanted = parse_yaml(raw, source=f"--only {key}")
        runs = [r for r in runs if _lookup(r.to_dict(), key) == wanted]
    return runs


def _lookup(data: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            raise ConfigError(dotted, "unknown key in --only")
        data = data[part]
    return data


def _check_unique(runs: list[RunConfig]) -> None:
    """Refuse two points with one config hash (train.seed is in it, so seeds stay apart): the
    name is not hashed, so points differing only in name (or in unhashed fields such as
    train.log_every) trained twice and analysis.collect kept one (unique_runs: same hash)."""
    seen: dict[str, int] = {}
    for index, cfg in enumerate(runs):
        first = seen.setdefault(cfg.config_hash, index)
        if first == index:
            continue
        if runs[first].name == cfg.name:
            raise ConfigError("grid", f"points {first} and {index} expand to the same run {cfg.run_id}")
        raise ConfigError("grid", f"points {first} ({runs[first].name}) and {index} ({cfg.name}) are the same run "
                                  f"(config hash {cfg.config_hash}): only the name or unhashed settings differ "
                                  "(README \"What the run id covers\"); drop one or change a setting")
