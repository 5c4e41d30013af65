"""Tables 1-2 of the paper from runs: ours next to the published numbers, with deltas.

Table 1 is character level (enwik8, text8; bpc), Table 2 WikiText-103 (ppl).
Every published row (analysis/published.csv) is listed with its source. A run
counts as "ours" for a row when it is an all_attention run on that dataset with
the paper model's depth and N; its score is the mean ± std over the seeds of one
configuration. Several matching configurations (other steps, lr, corpus, ...) give
one row each, the Model cell saying what sets each apart.

    python -m analysis.tables [DIR_OR_GRID...] [--out-dir results/tables]
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from analysis.aggregate import GROUP_KEY, differences
from analysis.collect import collect_runs, load_runs
from analysis.inputs import add_inputs_argument, selection
from analysis.published import SOURCES, load_published
from analysis.render import (fmt_count, fmt_delta, fmt_mean_std, fmt_published, is_missing, latex_table,
                             markdown_table)
from experiments.atomic import atomic_write_text
from experiments.cli import ArgumentParser, folder, run_cli

TABLES = {"table1": ("enwik8", "text8"), "table2": ("wikitext-103",)}
CAPTIONS = {
    "table1": "Table 1: character-level language modelling, bits per character (bpc).",
    "table2": "Table 2: WikiText-103, perplexity (ppl).",
}
FOOTNOTE = ("Ours: mean ± std over seeds (n) of the all_attention runs with the paper model's dataset, depth "
            "and N; Δ = ours - published; — : no such run or no published number; * : evaluated on part of the "
            "split (eval.max_tokens), not comparable with the published whole-split numbers. Sources: paper = "
            "arXiv 1907.01470; authors_readme = the authors' code README; cited = the model's own paper.")
SPLITS = ("dev", "test")


def table_numbers(runs: pd.DataFrame, published: pd.DataFrame, datasets: Sequence[str]) -> pd.DataFrame:
    """One row per published model and source: published and ours (mean, std, n), deltas, params."""
    rank = {"dataset": {d: i for i, d in enumerate(datasets)}, "source": {s: i for i, s in enumerate(SOURCES)}}
    rows = published[published["dataset"].isin(datasets)]
    rows = rows.assign(**{f"_{k}": rows[k].map(v) for k, v in rank.items()})
    rows = rows.sort_values(["_dataset", "_source", "params_m"], kind="stable")
    groups = rows.groupby(["dataset", "model", "source", "params_m"], sort=False)
    finished = runs[runs["unit"].notna()]
    return pd.DataFrame([row for _, group in groups for row in _table_rows(group, _matching_runs(finished, group.iloc[0]))])


def _table_rows(group: pd.DataFrame, matched: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per configuration among `matched` (seeds pool only within one); one row when none."""
    if GROUP_KEY not in matched or matched[GROUP_KEY].nunique(dropna=False) < 2:
        return [{**_table_row(group, matched), "config": ""}]
    configs = matched.groupby(GROUP_KEY, dropna=False, sort=True)
    notes = differences(configs.first())
    return [{**_table_row(group, runs), "config": notes[key]} for key, runs in configs]


def _matching_runs(runs: pd.DataFrame, spec: pd.Series) -> pd.DataFrame:
    if pd.isna(spec["num_persistent"]):
        return runs.iloc[:0]  # a comparison row: no run of ours reproduces another model
    return runs[(runs["variant"] == "all_attention") & (runs["dataset"] == spec["dataset"])
                & (runs["num_layers"] == spec["num_layers"]) & (runs["num_persistent"] == spec["num_persistent"])]


def _table_row(group: pd.DataFrame, matched: pd.DataFrame) -> dict[str, Any]:
    first = group.iloc[0]
    unit = first["metric"]
    row = {"dataset": first["dataset"], "model": first["model"], "source": first["source"], "unit": unit,
           "params_paper_m": first["params_m"], "params_ours": matched["params_total"].mean(),
           "eval_capped": "eval_full" in matched and bool(matched["eval_full"].eq(False).any())}
    for split in SPLITS:
        values = group.loc[group["split"] == split, "value"]
        paper = float(values.iloc[0]) if not values.empty else math.nan
        scores = matched.get(f"{split}_{unit}", pd.Series(dtype=float)).dropna()
        row.update({f"{split}_paper": paper, f"{split}_ours": scores.mean(), f"{split}_std": scores.std(),
                    f"{split}_n": len(scores), f"{split}_delta": scores.mean() - paper})
    return row


def format_table(numbers: pd.DataFrame) -> pd.DataFrame:
    """The numbers as display strings, one column per table heading."""
    def cells(row: pd.Series) -> dict[str, str]:
        unit = row["unit"]
        model = row["model"] + (f" [{row['config']}]" if row.get("config") else "")
        out = {"Dataset": row["dataset"], "Model": model, "Source": row["source"],
               "Params (paper)": f"{row['params_paper_m']:g}M", "Params (ours)": fmt_count(row["params_ours"])}
        for split in SPLITS:
            name = split.capitalize()
            paper = fmt_published(row[f"{split}_paper"], unit)
            ours = fmt_mean_std(row[f"{split}_ours"], row[f"{split}_std"], unit, row[f"{split}_n"])
            mark = " *" if row["eval_capped"] and row[f"{split}_n"] else ""
            delta = fmt_delta(row[f"{split}_delta"], unit)
            out.update({f"{name} {unit} (paper)": paper, f"{name} {unit} (ours)": ours + mark,
                        f"Δ {split}": delta + ("" if is_missing(row[f"{split}_delta"]) else mark)})
        return out

    return pd.DataFrame([cells(row) for _, row in numbers.iterrows()])


def write_tables(runs: pd.DataFrame, out_dir: Path) -> dict[str, str]:
    """Write each table as .md and .tex under `out_dir`; the markdown of each, by name."""
    published, written = load_published(), {}
    for name, datasets in TABLES.items():
        cells = format_table(table_numbers(runs, published, datasets))
        written[name] = f"{CAPTIONS[name]}\n\n{markdown_table(cells)}\n{FOOTNOTE}\n"
        atomic_write_text(out_dir / f"{name}.md", written[name])
        atomic_write_text(out_dir / f"{name}.tex", latex_table(cells, f"{CAPTIONS[name]} {FOOTNOTE}"))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m analysis.tables", description=__doc__.splitlines()[0])
    add_inputs_argument(parser, required=False)
    parser.add_argument("--out-dir", type=folder, default=Path("results/tables"), help="default results/tables")
    args = parser.parse_args(argv)
    runs = load_runs(args.inputs, **selection(args)) if args.inputs else collect_runs([])
    for name, markdown in write_tables(runs, args.out_dir).items():
        print(markdown)
        print(f"wrote {args.out_dir / name}.md and .tex\n")
    return 0


if __name__ == "__main__":
    run_cli(main)
