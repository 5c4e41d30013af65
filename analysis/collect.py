"""Run directories -> tidy pandas frames: one row per run, and step-level curves.

A run directory (DESIGN §4) is the single source of truth; this module only
reads it. Unfinished or failed runs appear with their state and NaN metrics.

    python -m analysis.collect DIR_OR_GRID... [--out results/NAME]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import yaml

from analysis.aggregate import left_out_note
from analysis.inputs import RUN_MARKER, add_inputs_argument, resolve_run_dirs
from experiments.atomic import atomic_write_text
from experiments.metrics import read_metrics
from model.errors import UserError
from experiments.cli import run_cli

IDENTITY_COLUMNS = ["run_id", "grid", "name", "dataset", "variant", "num_persistent", "num_layers", "seed"]
STATUS_COLUMNS = ["state", "stage", "attempts", "last_step", "heartbeat", "error"]
NUMERIC_EVAL_COLUMNS = ["dev_loss", "dev_bpc", "dev_ppl", "dev_tokens", "test_loss", "test_bpc", "test_ppl",
                        "test_tokens", "params_total", "params_non_embedding", "params_persistent",
                        "flops_per_token", "tokens_per_s", "entropy_floor_bpc"]
EVAL_COLUMNS = ["unit", "eval_full"] + NUMERIC_EVAL_COLUMNS
PROVENANCE_COLUMNS = ["git_sha", "git_dirty", "run_dir"]
RUN_COLUMNS = IDENTITY_COLUMNS + STATUS_COLUMNS + EVAL_COLUMNS + PROVENANCE_COLUMNS
CURVE_COLUMNS = ["step", "split", "tokens", "loss", "bpc", "ppl", "lr", "ms_per_step", "tokens_per_s",
                 "span_mean", "span_max", "attempt", "time"]
_EVAL_SPLITS = {"valid": "dev", "test": "test"}


def collect_runs(dirs: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per run directory: identity, state, final evaluation, flattened config."""
    rows = [_run_row(Path(d)) for d in dirs]
    runs = pd.DataFrame(rows)
    config_columns = sorted(c for c in runs.columns if c not in RUN_COLUMNS)
    runs = runs.reindex(columns=RUN_COLUMNS + config_columns)
    # Numeric even when no run has finished, so that groupby means never meet None.
    runs[NUMERIC_EVAL_COLUMNS] = runs[NUMERIC_EVAL_COLUMNS].apply(pd.to_numeric, errors="coerce")
    return runs.sort_values(["grid", "run_id"], kind="stable").reset_index(drop=True)


def collect_curves(dirs: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Step-level metrics of every run, keyed by the run's identity columns."""
    rows = []
    for run_dir in map(Path, dirs):
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file():
            identity = _identity(run_dir, _read_config(run_dir))
            rows += [{**identity, **record} for record in read_metrics(metrics)]
    curves = pd.DataFrame(rows)
    extra = sorted(c for c in curves.columns if c not in IDENTITY_COLUMNS + CURVE_COLUMNS)
    curves = curves.reindex(columns=IDENTITY_COLUMNS + CURVE_COLUMNS + extra)
    return curves.sort_values(["grid", "run_id", "split", "step"], kind="stable").reset_index(drop=True)


def load_runs(inputs: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """The runs frame of the command-line inputs (run folders or GRID.yaml files).

    Says on stderr which runs have no final evaluation: every command leaves them out.
    """
    runs = unique_runs(collect_runs(resolve_run_dirs(inputs)))
    note = left_out_note(runs)
    if note:
        print(note, file=sys.stderr)
    return runs


def unique_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration. The hash ending a run id covers the whole config, seed
    included: the same point run in two grids (e.g. all-attention at N=256 in both Figure 2
    grids) is one measurement and must not count as two seeds."""
    config_hash = runs["run_id"].str.rsplit("-", n=1).str[-1]
    repeated = config_hash.duplicated(keep="first")
    if repeated.any():
        print(f"counted once: {', '.join(runs.loc[repeated, 'run_id'])} (same config as another run)", file=sys.stderr)
    return runs[~repeated].reset_index(drop=True)


def _run_row(run_dir: Path) -> dict[str, Any]:
    config = _read_config(run_dir)
    provenance = _read_json(run_dir / "provenance.json") or {}
    row = {**_identity(run_dir, config), **_status_columns(_read_json(run_dir / "status.json")),
           **_eval_columns(_read_json(run_dir / "eval.json")),
           "git_sha": provenance.get("git_sha"), "git_dirty": provenance.get("git_dirty"), "run_dir": str(run_dir)}
    return {**flatten(config), **row}  # the identity columns win over the config's top-level name/grid


def _identity(run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    model, data, train = (config.get(k) or {} for k in ("model", "data", "train"))
    return {"run_id": run_dir.name, "grid": config.get("grid") or run_dir.parent.name, "name": config.get("name"),
            "dataset": data.get("dataset"), "variant": model.get("variant"),
            "num_persistent": model.get("num_persistent"), "num_layers": model.get("num_layers"),
            "seed": train.get("seed")}


def _status_columns(status: dict[str, Any] | None) -> dict[str, Any]:
    # No status.json yet: the job has not started (experiments.run_dir reads it the same way).
    status = status or {"state": "PENDING"}
    return {"state": status.get("state"), "stage": status.get("stage"), "attempts": status.get("attempt"),
            "last_step": status.get("step"), "heartbeat": status.get("heartbeat"), "error": status.get("error")}


def _eval_columns(result: dict[str, Any] | None) -> dict[str, Any]:
    if result is None:
        return {}
    unit = result.get("unit")
    # eval_full is False when a split was capped (eval.max_tokens): not comparable with the paper.
    row: dict[str, Any] = {"unit": unit, "eval_full": True}
    for key, split in _EVAL_SPLITS.items():
        scores = result.get(key) or {}
        row.update({f"{split}_loss": scores.get("loss"), f"{split}_{unit}": scores.get(unit),
                    f"{split}_tokens": scores.get("tokens")})
        row["eval_full"] = row["eval_full"] and scores.get("full", True)
    for key in ("params_total", "params_non_embedding", "params_persistent", "flops_per_token",
                "tokens_per_s", "entropy_floor_bpc"):
        row[key] = result.get(key)
    return row


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {'model.variant': ...}; lists as JSON text so a CSV cell holds them."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = json.dumps(value) if isinstance(value, list) else value
    return flat


def _read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RUN_MARKER
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: cannot read the run config: {err}") from err
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a mapping of config sections")
    return config


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: unreadable JSON: {err}") from err


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.collect", description=__doc__.splitlines()[0])
    add_inputs_argument(parser)
    parser.add_argument("--out", type=Path, help="output folder (default results/<grid>, or results/collected)")
    args = parser.parse_args(argv)
    dirs = resolve_run_dirs(args.inputs)
    runs, curves = collect_runs(dirs), collect_curves(dirs)
    grids = sorted(runs["grid"].astype(str).unique())
    out = args.out or Path("results") / (grids[0] if len(grids) == 1 else "collected")
    atomic_write_text(out / "runs.csv", runs.to_csv(index=False))
    atomic_write_text(out / "curves.csv", curves.to_csv(index=False))
    states = ", ".join(f"{state} {count}" for state, count in sorted(Counter(runs["state"]).items()))
    print(f"{len(runs)} runs in {len(grids)} grid(s) ({', '.join(grids)}): {states}")
    print(f"wrote {out / 'runs.csv'} ({len(runs)} rows) and {out / 'curves.csv'} ({len(curves)} rows)")
    return 0


if __name__ == "__main__":
    run_cli(main)
