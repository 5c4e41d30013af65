"""Seeds -> points: the one way every figure, table and report averages runs.

A point is a model configuration (MODEL_KEYS); its runs differ only by seed.
Statistics are mean and sample standard deviation (ddof=1, NaN for one seed).
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from model.config import VARIANTS
from model.errors import UserError

MODEL_KEYS = ("dataset", "variant", "num_persistent", "num_layers",
              "model.d_model", "model.num_heads", "model.attn_span", "model.ffn_size")
RESOURCE_COLUMNS = ("params_total", "flops_per_token", "tokens_per_s", "entropy_floor_bpc")


def only_value(runs: pd.DataFrame, column: str, what: str) -> Any:
    """The single distinct value of `column`; a UserError when there are several or none."""
    values = sorted(runs[column].dropna().unique()) if column in runs else []
    if len(values) != 1:
        found = ", ".join(map(str, values)) or "none"
        raise UserError(f"expected runs of one {what}, found {found}; pass one grid or folder at a time")
    return values[0]


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
    return finished[finished[column].notna()], column


def seed_summary(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per configuration: mean, std and number n of seeds of `column`, plus mean resources.

    Rows are ordered by variant (as listed in model.config.VARIANTS), then N and depth.
    """
    keys = [k for k in MODEL_KEYS if k in runs]
    resources = [c for c in RESOURCE_COLUMNS if c in runs]
    grouped = runs.groupby(keys, dropna=False, sort=False)
    summary = grouped[column].agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    summary = summary.join(grouped[resources].mean()).reset_index()
    order = summary["variant"].map({v: i for i, v in enumerate(VARIANTS)})
    summary = summary.assign(_order=order).sort_values(["_order", "num_persistent", "num_layers"], kind="stable")
    return summary.drop(columns="_order").reset_index(drop=True)
