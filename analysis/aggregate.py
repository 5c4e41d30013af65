"""Seeds -> points: the one way every figure, table and report averages runs.

A point is one configuration: runs pool as seeds only when their resolved configs
are equal except the seed, on the same data (collect's `config_group`: the config
hash without the seed, plus the prepared corpus's name and checksum). Runs of the
same model shape that differ anywhere else (steps, lr, corpus, ...) are separate
points, and each such point's `differs` says which fields set it apart.
Statistics are mean and sample standard deviation (ddof=1, NaN for one seed), and
`ci`: the half-width of the two-sided 95% Student-t interval of the mean over seeds
(t_{0.975, n-1} x std / sqrt(n), NaN for one seed), the interval every figure and
claim in analysis/ uses.
"""
from __future__ import annotations

import math
import sys
from typing import Any

import pandas as pd

from experiments.run_config import NOT_HASHED
from model.config import VARIANTS
from model.errors import UserError

MODEL_KEYS = ("dataset", "variant", "num_persistent", "num_layers",
              "model.d_model", "model.num_heads", "model.attn_span", "model.ffn_size")
LABEL_KEYS = ("dataset", "variant", "num_persistent", "num_layers")
"""What a report row shows of a point; points sharing these get a `differs` note."""
GROUP_KEY = "config_group"
DATA_KEYS = ("data_name", "data_sha256")
NOT_CONFIG = ("name", "grid", "train.seed", *NOT_HASHED)
RESOURCE_COLUMNS = ("params_total", "params_persistent", "flops_per_token", "tokens_per_s", "entropy_floor_bpc")
CONFIDENCE = 0.95
"""The coverage of every interval in the analysis (two-sided Student t)."""


def only_value(runs: pd.DataFrame, column: str, what: str) -> Any:
    """The single distinct value of `column`; a UserError when there are several or none."""
    values = sorted(runs[column].dropna().unique()) if column in runs else []
    if len(values) != 1:
        found = ", ".join(map(str, values)) or "none"
        raise UserError(f"expected runs of one {what}, found {found}; pass one grid or folder at a time")
    return values[0]


def one_corpus(runs: pd.DataFrame) -> str:
    """The dataset of `runs`, which must also be one prepared corpus (two corpora prepared
    with `prepare text` are both called 'text'); a UserError naming them otherwise."""
    dataset = only_value(runs, "dataset", "dataset")
    present = [k for k in DATA_KEYS if k in runs]
    if present:
        corpora = runs[present].astype(str).drop_duplicates()
        if len(corpora) > 1:
            found = "; ".join(", ".join(f"{k}={v}" for k, v in row.items()) for _, row in corpora.iterrows())
            raise UserError(f"expected runs of one corpus, found several called {dataset!r} ({found}); "
                            "pass the runs of one corpus at a time")
    return dataset


def left_out_note(runs: pd.DataFrame) -> str | None:
    """A line saying which runs have no final evaluation (and so are left out), or None."""
    pending = runs[runs["unit"].isna()] if "unit" in runs else runs
    if pending.empty:
        return None
    states = ", ".join(f"{s} {c}" for s, c in sorted(pending["state"].value_counts().items()))
    return f"note: {len(pending)} run(s) without a final evaluation left out ({states})"


def evaluated(runs: pd.DataFrame, split: str = "dev") -> tuple[pd.DataFrame, str]:
    """Runs with a final `split` score, and the column holding it (e.g. 'dev_bpc')."""
    finished = runs[runs["unit"].notna()] if "unit" in runs else runs.iloc[:0]
    if finished.empty:
        raise UserError("no run has a final evaluation (eval.json) yet")
    column = f"{split}_{only_value(finished, 'unit', 'unit (bpc or ppl)')}"
    scored = finished[column].notna()
    if not scored.all():  # e.g. a non-finite score (written as null), or the split not evaluated
        names = ", ".join(str(name) for name in finished.loc[~scored, "run_id" if "run_id" in finished else "run_dir"])
        print(f"note: {(~scored).sum()} evaluated run(s) without a {column} score left out: {names}", file=sys.stderr)
    if not scored.any():
        raise UserError(f"no run has a {column} score to compare")
    return finished[scored], column


def point_keys(runs: pd.DataFrame) -> list[str]:
    """The columns a point is grouped by: the configuration (when collected) and the model shape."""
    return ([GROUP_KEY] if GROUP_KEY in runs else []) + [k for k in MODEL_KEYS if k in runs]


def seed_summary(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per configuration: mean, std and number n of seeds of `column`, plus mean resources,
    and `differs`: the config fields that set it apart from points with the same label.

    Rows are ordered by variant (as listed in model.config.VARIANTS), then N and depth.
    """
    keys = point_keys(runs)
    resources = [c for c in RESOURCE_COLUMNS if c in runs]
    grouped = runs.groupby(keys, dropna=False, sort=False)
    summary = grouped[column].agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    summary = summary.join(grouped[resources].mean())
    data = [k for k in DATA_KEYS if k in runs and k not in keys]
    if data:
        summary = summary.join(grouped[data].first())
    summary["differs"] = differences(grouped.first())
    summary["ci"] = [interval_half_width(s, n) for s, n in zip(summary["std"], summary["n"])]
    summary = summary.reset_index()
    order = summary["variant"].map({v: i for i, v in enumerate(VARIANTS)})
    summary = summary.assign(_order=order).sort_values(["_order", "num_persistent", "num_layers"], kind="stable")
    return summary.drop(columns="_order").reset_index(drop=True)


def runs_of(runs: pd.DataFrame, point: pd.Series) -> pd.DataFrame:
    """The runs that seed_summary pooled into `point` (one of its rows)."""
    chosen = pd.Series(True, index=runs.index)
    for key in point_keys(runs):
        value = point[key]
        chosen &= runs[key].isna() if _is_nan(value) else runs[key] == value
    return runs[chosen]


def interval_half_width(std: float, n: int, confidence: float = CONFIDENCE) -> float:
    """Half-width of the two-sided Student-t interval of a mean of `n` values with sample
    standard deviation `std` (in the values' units); NaN when n < 2 (no spread to measure)."""
    if n < 2 or _is_nan(std):
        return math.nan
    return t_quantile(int(n) - 1, confidence) * std / math.sqrt(n)


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """t such that P(|T| <= t) = confidence for Student's T with `df` degrees of freedom
    (df 1: 12.706, 2: 4.303, 9: 2.262 at 95%), by bisection on the exact CDF: scipy is not
    a dependency of this project."""
    if df < 1 or not 0 < confidence < 1:
        raise ValueError(f"t_quantile needs df >= 1 and 0 < confidence < 1, got {df}, {confidence}")
    low, high = 0.0, 1.0
    while _t_central(high, df) < confidence:
        low, high = high, 2 * high
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if _t_central(middle, df) < confidence else (low, middle)
    return (low + high) / 2


def _t_central(t: float, df: int) -> float:
    """P(|T| <= t) for integer df: the closed forms of Abramowitz & Stegun 26.7.3 (odd df)
    and 26.7.4 (even df), a finite series in cos(theta), theta = atan(t / sqrt(df))."""
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2:
        term, total = math.cos(theta), 0.0
        for power in range(1, df - 1, 2):  # cos + 2/3 cos^3 + 2*4/(3*5) cos^5 + ... up to cos^(df-2)
            total += term
            term *= cos2 * (power + 1) / (power + 2)
        return 2 / math.pi * (theta + math.sin(theta) * total)
    term, total = 1.0, 0.0
    for power in range(0, df - 1, 2):  # 1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ... up to cos^(df-2)
        total += term
        term *= cos2 * (power + 1) / (power + 2)
    return math.sin(theta) * total


def _is_nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def config_fields(frame: pd.DataFrame) -> list[str]:
    """The columns of `frame` that are part of a run's configuration (flattened config,
    hashed fields only, seed excluded) or of its data identity."""
    def is_config(column: str) -> bool:
        if "." not in column or column in NOT_CONFIG:
            return False
        return not any(column.startswith(f"{path}.") for path in NOT_CONFIG)

    return [c for c in frame.columns if isinstance(c, str) and is_config(c)] + [k for k in DATA_KEYS if k in frame]


def differences(points: pd.DataFrame) -> pd.Series:
    """For one representative run per point: 'field=value, ...' listing the config fields in
    which it differs from the other points sharing its LABEL_KEYS; '' when no other does."""
    fields = config_fields(points)
    labels = [k for k in LABEL_KEYS if k in points.columns or k in (points.index.names or [])]
    flat = points.reset_index()
    out = pd.Series("", index=points.index, dtype=object)
    if not labels:
        return out
    for _, same in flat.groupby(labels, dropna=False, sort=False):
        if len(same) < 2:
            continue
        shown = same[fields].map(_shown) if fields else same.iloc[:, :0]
        varying = [f for f in fields if shown[f].nunique() > 1]
        for position, row in shown.iterrows():
            text = ", ".join(f"{f}={row[f]}" for f in varying)
            out.iloc[position] = text or f"{GROUP_KEY}={flat.loc[position].get(GROUP_KEY, '?')}"
    return out


def _shown(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
