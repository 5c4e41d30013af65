"""Run directories -> tidy pandas frames: one row per run, and step-level curves.

A run directory (DESIGN §4) is the single source of truth; this module only
reads it. Unfinished or failed runs appear with their state and NaN metrics.

A run is known by its content, never by its folder's name: `config_hash` is the
hash of its config.yaml as the run id computes it (seed included), `config_group`
the same without the seed and with the identity of the prepared data
(`data_name`, `data_sha256`: the corpus's folder and a digest of its meta.json
checksums, as provenance.json recorded them or else as meta.json says now). Runs
pool as seeds only within one config_group (analysis.aggregate); folders holding
the same run (a `.replaced-<time>` backup, a copy in another grid) count once.

`tokens_per_s` is the median over the run's logged train intervals (metrics.jsonl), or
eval.json's last interval when the run logged none.

A damaged file (bytes that are not UTF-8, NUL padding, a torn line, a JSON that is
not an object) costs that file's facts for that run only: the run's `notes` column
says what was unreadable, and every other run is read as usual.

    python -m analysis.collect DIR_OR_GRID... [--out results/NAME]
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import yaml

from analysis.aggregate import left_out_note
from analysis.inputs import RUN_MARKER, add_inputs_argument, resolve_run_dirs, selection
from experiments.atomic import atomic_write_text
from experiments.cli import ArgumentParser, folder, run_cli
from experiments.evaluation import UNITS
from experiments.metrics import scan_metrics
from experiments.run_config import NOT_HASHED, run_config_from_dict
from experiments.run_dir import PROJECT_ROOT
from model.errors import UserError

IDENTITY_COLUMNS = ["run_id", "grid", "name", "dataset", "variant", "num_persistent", "num_layers", "seed"]
CONTENT_COLUMNS = ["config_hash", "config_group", "data_name", "data_sha256"]
STATUS_COLUMNS = ["state", "stage", "attempts", "last_step", "heartbeat", "error"]
NUMERIC_EVAL_COLUMNS = ["dev_loss", "dev_bpc", "dev_ppl", "dev_tokens", "test_loss", "test_bpc", "test_ppl",
                        "test_tokens", "params_total", "params_non_embedding", "params_persistent",
                        "flops_per_token", "tokens_per_s", "entropy_floor_bpc"]
EVAL_COLUMNS = ["unit", "eval_full"] + NUMERIC_EVAL_COLUMNS
PROVENANCE_COLUMNS = ["git_sha", "git_dirty", "run_dir", "notes"]
RUN_COLUMNS = IDENTITY_COLUMNS + CONTENT_COLUMNS + STATUS_COLUMNS + EVAL_COLUMNS + PROVENANCE_COLUMNS
CURVE_COLUMNS = ["step", "split", "tokens", "loss", "bpc", "ppl", "lr", "ms_per_step", "tokens_per_s",
                 "span_mean", "span_max", "attempt", "time"]
_EVAL_SPLITS = {"valid": "dev", "test": "test"}
REQUIRED_SECTIONS = ("model", "data", "optim", "train")
_RUN_ID = re.compile(r"(.+)-[0-9a-f]{8}")
"""A run directory's name: the run's name (with its seed) and its config hash (experiments/run_config.py)."""


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
            identity = _identity(run_dir, _read_config(run_dir, []))
            # damaged lines are skipped here and reported in the runs frame's notes
            rows += [{**identity, **record} for record in scan_metrics(metrics).records]
    curves = pd.DataFrame(rows)
    extra = sorted(c for c in curves.columns if c not in IDENTITY_COLUMNS + CURVE_COLUMNS)
    curves = curves.reindex(columns=IDENTITY_COLUMNS + CURVE_COLUMNS + extra)
    return curves.sort_values(["grid", "run_id", "split", "step"], kind="stable").reset_index(drop=True)


def load_runs(inputs: Sequence[str | os.PathLike], **chosen: Any) -> pd.DataFrame:
    """The runs frame of the command-line inputs (run folders or GRID.yaml files); `chosen`
    are resolve_run_dirs' root/overrides/only (analysis.inputs.selection(args)).

    Says on stderr which runs have no final evaluation: every command leaves them out.
    """
    runs = unique_runs(collect_runs(resolve_run_dirs(inputs, **chosen)))
    print_notes(runs)
    note = left_out_note(runs)
    if note:
        print(note, file=sys.stderr)
    return runs


def print_notes(runs: pd.DataFrame) -> None:
    """One stderr line per run whose files were partly unreadable."""
    if "notes" in runs:
        for run_dir, notes in zip(runs["run_dir"], runs["notes"]):
            if isinstance(notes, str) and notes:
                print(f"note: {run_dir}: {notes}", file=sys.stderr)


def unique_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run, recognised by content: folders with the same config hash (seed
    included) and the same data are one measurement, whatever their names, e.g. the same
    point in two grids, a `<run_id>.replaced-<time>` backup left by `slurm.submit --force`,
    or a copy. The one that wins has a final evaluation, else is DONE, else is the newest
    (status heartbeat); each skipped folder is named on stderr."""
    if runs.empty or "config_hash" not in runs:
        return runs
    order = runs.assign(
        _evaluated=runs["unit"].notna(), _done=runs["state"].eq("DONE"),
        _time=pd.to_numeric(runs["heartbeat"], errors="coerce").fillna(-1.0),
    ).sort_values(["_evaluated", "_done", "_time", "run_dir"], ascending=[False, False, False, True], kind="stable")
    key = order["config_hash"].astype(str) + "|" + order["data_sha256"].astype(str)
    known = order["config_hash"].notna()  # a run whose config is unreadable is not a copy of anything
    repeated = key.duplicated(keep="first") & known
    winners = order[~repeated & known].assign(_key=key).set_index("_key")
    for index in order.index[repeated]:
        skipped, kept = order.loc[index], winners.loc[key[index]]
        why = ("has a final evaluation" if kept["_evaluated"] and not skipped["_evaluated"]
               else "is DONE" if kept["_done"] and not skipped["_done"]
               else "is newer" if kept["_time"] > skipped["_time"] else "is as new (first in path order)")
        print(f"skipped {skipped['run_dir']}: the same run (config hash {skipped['config_hash']}, "
              f"seed {skipped['seed']}) as {kept['run_dir']}, which {why}", file=sys.stderr)
    return runs.drop(index=order.index[repeated]).reset_index(drop=True)


def _run_row(run_dir: Path) -> dict[str, Any]:
    notes: list[str] = []
    config = _read_config(run_dir, notes)
    provenance = _read_json(run_dir / "provenance.json", notes) or {}
    status = _read_json(run_dir / "status.json", notes)
    if status is None and (run_dir / "status.json").exists():
        status = {"state": "UNKNOWN"}  # damaged: do not guess PENDING
    # An evaluation is only counted for a run whose config says what was evaluated.
    result = _read_json(run_dir / "eval.json", notes) if config else None
    metrics = scan_metrics(run_dir / "metrics.jsonl")
    if metrics.note("metrics.jsonl"):
        notes.append(metrics.note("metrics.jsonl"))
    data = _data_identity(config, provenance)
    row = {**_identity(run_dir, config), **_content_identity(config, data), **data, **_status_columns(status),
           **_eval_columns(result, notes), **_median_speed(metrics.records),
           "git_sha": provenance.get("git_sha"), "git_dirty": provenance.get("git_dirty"), "run_dir": str(run_dir),
           "notes": "; ".join(notes) or None}
    return {**flatten(config), **row}  # the identity columns win over the config's top-level name/grid


def _median_speed(records: list[dict[str, Any]]) -> dict[str, Any]:
    """{"tokens_per_s": the median over the run's logged train intervals} ({} without one): eval.json
    holds the last interval's alone, which a moment's load on a shared machine decides."""
    rates = [r["tokens_per_s"] for r in records if r.get("split") == "train"
             and isinstance(r.get("tokens_per_s"), (int, float)) and math.isfinite(r["tokens_per_s"])
             and r["tokens_per_s"] > 0]
    return {"tokens_per_s": statistics.median(rates)} if rates else {}


def _content_identity(config: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """config_hash (the run id's hash of the config, seed included) and config_group (the
    configuration without its seed, with the data's identity): what seeds must share."""
    if not config:
        return {"config_hash": None, "config_group": None}
    full, seedless = _config_hashes(config)
    group = hashlib.sha256(f"{seedless}|{data['data_name']}|{data['data_sha256']}".encode()).hexdigest()[:12]
    return {"config_hash": full, "config_group": group}


def _config_hashes(config: dict[str, Any]) -> tuple[str, str]:
    try:
        cfg = run_config_from_dict(config)
        seedless = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=0))
        return cfg.config_hash, seedless.config_hash
    except (UserError, TypeError, ValueError, AttributeError):
        # A config this code no longer loads (an older schema): its content, hashed the same way.
        hashed = _without(config, NOT_HASHED)
        return _digest(hashed, 8), _digest(_without(hashed, ["train.seed"]), 8)


def _without(data: dict[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    out = dict(data)
    for path in paths:
        head, _, rest = path.partition(".")
        if head in out and rest and isinstance(out[head], dict):
            out[head] = _without(out[head], [rest])
        elif head in out and not rest:
            del out[head]
    return out


def _digest(value: Any, length: int) -> str:
    canonical = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"),
                                                                 default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


_META_CACHE: dict[tuple[str, int, int], str | None] = {}


def _data_identity(config: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """data_name (the prepared corpus's folder: `prepare text` calls every corpus 'text') and
    data_sha256 (a digest of the split checksums), from provenance.json's `data` record when
    the run wrote one, else from the corpus's meta.json as it is now; None when unknown."""
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    path = data.get("path")
    name = Path(path).name if isinstance(path, str) and path.strip() else data.get("dataset")
    recorded = provenance.get("data")
    if isinstance(recorded, dict) and recorded.get("sha256"):
        return {"data_name": recorded.get("name") or name, "data_sha256": _digest(recorded["sha256"], 16)}
    if not isinstance(path, str) or not path.strip():
        return {"data_name": name, "data_sha256": None}
    meta = Path(path) if Path(path).is_absolute() else PROJECT_ROOT / path
    return {"data_name": name, "data_sha256": _meta_checksum(meta / "meta.json")}


def _meta_checksum(meta: Path) -> str | None:
    try:
        stat = meta.stat()
    except OSError:
        return None
    key = (str(meta), stat.st_mtime_ns, stat.st_size)
    if key not in _META_CACHE:
        try:
            sums = json.loads(meta.read_bytes().decode("utf-8")).get("sha256")
        except (OSError, ValueError, AttributeError):
            sums = None
        _META_CACHE[key] = _digest(sums, 16) if sums else None
    return _META_CACHE[key]


def _identity(run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    model, data, train = (_mapping(config.get(k)) for k in ("model", "data", "train"))
    grid, name = config.get("grid") or run_dir.parent.name, config.get("name")
    folder = _RUN_ID.fullmatch(run_dir.name)
    if folder and grid != run_dir.parent.name and folder.group(1) != name:
        # a run another grid trained, found in this grid's folder (its link, or a copy): named as this grid names it
        grid, name = run_dir.parent.name, folder.group(1)
    return {"run_id": run_dir.name, "grid": grid, "name": name,
            "dataset": data.get("dataset"), "variant": model.get("variant"),
            "num_persistent": model.get("num_persistent"), "num_layers": model.get("num_layers"),
            "seed": train.get("seed")}


def _number(value: Any, where: str, notes: list[str]) -> Any:
    """eval.json's `value` at `where` if it is a number or absent, else None and a note."""
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    notes.append(f"eval.json's {where} is not a number ({value!r}); read as missing")
    return None


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _status_columns(status: dict[str, Any] | None) -> dict[str, Any]:
    # No status.json yet: the job has not started (experiments.run_dir reads it the same way).
    status = status or {"state": "PENDING"}
    return {"state": status.get("state"), "stage": status.get("stage"), "attempts": status.get("attempt"),
            "last_step": status.get("step"), "heartbeat": status.get("heartbeat"), "error": status.get("error")}


def _eval_columns(result: dict[str, Any] | None, notes: list[str]) -> dict[str, Any]:
    if result is None:
        return {}
    unit = result.get("unit")
    if unit not in UNITS:
        notes.append(f"eval.json unreadable (unit {unit!r})")
        return {}
    # eval_full is False when a split was capped (eval.max_tokens): not comparable with the paper.
    row: dict[str, Any] = {"unit": unit, "eval_full": True}
    for key, split in _EVAL_SPLITS.items():
        scores = _mapping(result.get(key))
        row.update({f"{split}_{name}": _number(scores.get(name), f"{key}.{name}", notes) for name in ("loss", unit, "tokens")})
        row["eval_full"] = row["eval_full"] and scores.get("full", True)
    for key in ("params_total", "params_non_embedding", "params_persistent", "flops_per_token",
                "tokens_per_s", "entropy_floor_bpc"):
        row[key] = _number(result.get(key), key, notes)
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


def _read_config(run_dir: Path, notes: list[str]) -> dict[str, Any]:
    """The run's config.yaml as a mapping; {} (and a note) when it is damaged."""
    path = run_dir / RUN_MARKER
    try:
        config = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as err:
        notes.append(f"{RUN_MARKER} unreadable ({_reason(err)}); the run is left out")
        return {}
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        notes.append(f"{RUN_MARKER} unreadable (not a mapping of config sections); the run is left out")
        return {}
    missing = [k for k in REQUIRED_SECTIONS if not isinstance(config.get(k), dict)]
    if missing:  # e.g. a torn copy: what is left may still parse
        notes.append(f"{RUN_MARKER} incomplete (no {', '.join(missing)} section); the run is left out")
        return {}
    return config


def _read_json(path: Path, notes: list[str]) -> dict[str, Any] | None:
    """A JSON object file; None when absent, None and a note when damaged."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as err:
        notes.append(f"{path.name} unreadable ({_reason(err)})")
        return None
    if not isinstance(data, dict):
        notes.append(f"{path.name} unreadable (a JSON {type(data).__name__}, not an object)")
        return None
    return data


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError):
        return err.strerror or type(err).__name__
    if isinstance(err, UnicodeDecodeError):
        return f"byte {err.object[err.start]:#04x} at offset {err.start} is not UTF-8"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m analysis.collect", description=__doc__.splitlines()[0])
    add_inputs_argument(parser)
    parser.add_argument("--out", type=folder, help="output folder (default results/<grid>, or results/collected)")
    args = parser.parse_args(argv)
    runs = unique_runs(collect_runs(resolve_run_dirs(args.inputs, **selection(args))))
    print_notes(runs)
    curves = collect_curves(runs["run_dir"].map(Path))
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
