"""Published numbers (analysis/published.csv), each row tagged with its source.

Sources are never mixed silently: `paper` is arXiv 1907.01470 itself,
`authors_readme` the authors' code README (WikiText-103 there counts end-of-line
as a token), `cited` another model's number as reported by its own paper (the
comparison rows). `num_layers`/`num_persistent` are set only on the paper's own
all-attention model, which is what runs are matched against.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from model.errors import UserError

PUBLISHED_CSV = Path(__file__).with_name("published.csv")
COLUMNS = ["dataset", "model", "params_m", "metric", "split", "value", "source", "num_layers", "num_persistent", "note"]
SOURCES = ("paper", "authors_readme", "cited")
_ALLOWED = {"metric": ("bpc", "ppl"), "split": ("dev", "test"), "source": SOURCES}


def load_published(path: str | os.PathLike = PUBLISHED_CSV) -> pd.DataFrame:
    """The published numbers, checked for the expected columns and vocabularies."""
    table = pd.read_csv(path, dtype={"num_layers": "Int64", "num_persistent": "Int64"})
    if list(table.columns) != COLUMNS:
        raise UserError(f"{path}: expected columns {', '.join(COLUMNS)}")
    for column, allowed in _ALLOWED.items():
        unknown = sorted(set(table[column]) - set(allowed))
        if unknown:
            raise UserError(f"{path}: column {column} has unknown values {unknown}; allowed {list(allowed)}")
    return table
