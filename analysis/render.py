"""Number formatting and plain markdown / LaTeX tables for the analysis outputs.

Written here rather than with DataFrame.to_markdown/to_latex so that the outputs
need no optional dependency (tabulate, jinja2) and stay byte-stable.
"""
from __future__ import annotations

import math

import pandas as pd

MISSING = "—"
DECIMALS = {"bpc": 3, "ppl": 2}
PUBLISHED_DECIMALS = {"bpc": 2, "ppl": 1}  # the precision the paper reports
_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                   "_": r"\_", "{": r"\{", "}": r"\}", "±": r"$\pm$", "Δ": r"$\Delta$", "δ": r"$\delta$", "—": "---"}
_SCALES = ((1e9, "G", 2), (1e6, "M", 2), (1e3, "k", 1))
DATASET_NAMES = {"enwik8": "enwik8", "text8": "text8", "wikitext-103": "WikiText-103", "wikitext-2": "WikiText-2",
                 "lexicon": "lexicon (synthetic)"}
LEVELS = {"char": "characters", "word": "words"}


def is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_value(value: float, unit: str) -> str:
    """A metric value at the unit's precision (3 decimals for bpc, 2 for ppl)."""
    return MISSING if is_missing(value) else f"{value:.{DECIMALS[unit]}f}"


def fmt_published(value: float, unit: str) -> str:
    """A published number at the precision it was published with (1.00, not 1)."""
    return MISSING if is_missing(value) else f"{value:.{PUBLISHED_DECIMALS[unit]}f}"


def fmt_delta(value: float, unit: str) -> str:
    """A signed metric difference."""
    return MISSING if is_missing(value) else f"{value:+.{DECIMALS[unit]}f}"


def fmt_mean_std(mean: float, std: float, unit: str, n: int | None = None) -> str:
    """'mean ± std', with ' (n=k)' when `n` is given; no std for a single seed."""
    if is_missing(mean):
        return MISSING
    spread = "" if is_missing(std) else f" ± {std:.{DECIMALS[unit]}f}"
    seeds = "" if n is None else f" (n={int(n)})"
    return f"{mean:.{DECIMALS[unit]}f}{spread}{seeds}"


def fmt_count(value: float, signed: bool = False, compact: bool = False) -> str:
    """A parameter, FLOP or token count with a k/M/G suffix, e.g. 38.50M; `compact` drops
    trailing zeros (200k, 38.5M)."""
    if is_missing(value):
        return MISSING
    sign = ("+" if value >= 0 else "-") if signed else ("-" if value < 0 else "")
    size = abs(value)
    for scale, suffix, decimals in _SCALES:
        if size >= scale:
            number = f"{size / scale:.{decimals}f}"
            return f"{sign}{number.rstrip('0').rstrip('.') if compact else number}{suffix}"
    return f"{sign}{size:.0f}"


def dataset_label(dataset: str, data_name: object = None) -> str:
    """A corpus as a reader knows it: 'WikiText-2 characters' for the `prepare text` corpus
    'wikitext-2-char' (every such corpus has the dataset name 'text'), 'enwik8' for enwik8."""
    name = data_name if dataset == "text" and isinstance(data_name, str) else dataset
    base, _, level = name.rpartition("-")
    if base and level in LEVELS:
        return f"{DATASET_NAMES.get(base, base)} {LEVELS[level]}"
    return DATASET_NAMES.get(name, name)


def markdown_table(cells: pd.DataFrame) -> str:
    """A GitHub markdown table of string cells, header from the columns."""
    def row(values: list[str]) -> str:
        return "| " + " | ".join(str(v).replace("|", r"\|") for v in values) + " |"

    lines = [row(list(cells.columns)), row(["---"] * len(cells.columns))]
    lines += [row(list(values)) for values in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def latex_table(cells: pd.DataFrame, caption: str) -> str:
    """A standalone LaTeX table (tabular, no extra packages) of string cells."""
    def row(values: list[str]) -> str:
        return " & ".join(latex_escape(str(v)) for v in values) + r" \\"

    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{" + "l" * len(cells.columns) + "}",
             r"\hline", row(list(cells.columns)), r"\hline"]
    lines += [row(list(values)) for values in cells.itertuples(index=False)]
    lines += [r"\hline", r"\end{tabular}", r"\caption{" + latex_escape(caption) + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)
