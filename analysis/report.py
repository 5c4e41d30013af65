"""Compare variants against a baseline: score, parameters, FLOPs, speed, mean ± std over seeds.

One row per configuration (runs equal except the seed, on the same prepared
corpus): dev (or test) bpc/ppl over seeds, its difference to the baseline, the parameter and FLOP differences,
tokens/s (the median over each run's logged train intervals), and the distance to the entropy floor when the data has one (lexicon).
Configurations that look alike (same variant, N and depth) but differ elsewhere
(steps, lr, ...) are separate rows, with a `config` column saying what differs.

    python -m analysis.report DIR_OR_GRID... [--baseline VARIANT[:N]] [--format markdown|csv|latex] [--metric dev|test]

With --claims it prints instead the paper's three claims tested on the runs (paired
differences over seeds, 95% t-intervals, verdicts; the rules are in analysis/claims.py):

    python -m analysis.report --claims DIR_OR_GRID... [--delta D] [--param-tolerance F] [--format ...]
"""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from analysis.aggregate import evaluated, one_corpus, seed_summary
from analysis.claims import PARAM_TOLERANCE, evaluate_claims, format_claims
from analysis.collect import load_runs
from analysis.inputs import add_inputs_argument, selection
from analysis.render import fmt_count, fmt_delta, fmt_mean_std, fmt_value, latex_table, markdown_table
from model.errors import UserError
from experiments.cli import ArgumentParser, non_negative, run_cli

COLUMNS = ["dataset", "variant", "num_persistent", "num_layers", "n", "metric", "mean", "std", "delta",
           "params_total", "delta_params", "flops_per_token", "delta_flops", "tokens_per_s",
           "entropy_floor_bpc", "floor_gap", "differs", "data_name", "data_sha256", "is_baseline"]
FORMATS = ("markdown", "csv", "latex")


def compare_variants(runs: pd.DataFrame, baseline: str = "transformer", split: str = "dev") -> pd.DataFrame:
    """Per configuration: mean/std/n of the `split` score and differences to `baseline`.

    `baseline` is a variant name, or 'variant:N' when that variant was run at several N.
    `metric` names the score (e.g. 'dev_bpc'); floor_gap = mean - entropy floor (bpc);
    `differs` lists the config fields that set a row apart from rows of the same label.
    """
    runs, column = evaluated(runs, split)
    one_corpus(runs)
    summary = seed_summary(runs, column).reindex(columns=COLUMNS)
    base = summary.loc[_baseline_index(summary, baseline)]
    return summary.assign(
        metric=column, delta=summary["mean"] - base["mean"],
        delta_params=summary["params_total"] - base["params_total"],
        delta_flops=summary["flops_per_token"] - base["flops_per_token"],
        floor_gap=summary["mean"] - summary["entropy_floor_bpc"] if column.endswith("_bpc") else math.nan,
        is_baseline=summary.index == base.name,
    )


def _baseline_index(summary: pd.DataFrame, baseline: str) -> int:
    variant, _, n = baseline.partition(":")
    chosen = summary[summary["variant"] == variant]
    if n:
        chosen = chosen[chosen["num_persistent"] == int(n)] if n.isdigit() else chosen.iloc[:0]
    if len(chosen) != 1:
        found = ", ".join(f"{v}:{int(k)}" + (f" ({d})" if d else "")
                          for v, k, d in zip(summary["variant"], summary["num_persistent"], summary["differs"]))
        what = "is ambiguous" if len(chosen) > 1 else "matches no evaluated configuration"
        hint = "; pass the runs of one configuration of it" if len(chosen) > 1 and n else ""
        raise UserError(f"baseline {baseline!r} {what}; choose one of {found}{hint}")
    return int(chosen.index[0])


def format_report(table: pd.DataFrame, fmt: str) -> str:
    """The comparison as csv (raw numbers), or markdown / LaTeX (formatted)."""
    if fmt == "csv":
        return table.to_csv(index=False)
    metric = table["metric"].iloc[0]
    base = table.loc[table["is_baseline"]].iloc[0]
    corpus = base.get("data_name")
    dataset = base["dataset"] if not isinstance(corpus, str) or corpus == base["dataset"] else \
        f"{base['dataset']} ({corpus})"  # `prepare text` calls every corpus 'text'
    caption = (f"{metric.replace('_', ' ')} on {dataset}, mean ± std over n seeds; "
               f"Δ against {base['variant']} N={int(base['num_persistent'])}.")
    cells = _report_cells(table, metric.split("_", 1)[1])
    return latex_table(cells, caption) if fmt == "latex" else f"{caption}\n\n{markdown_table(cells)}"


def _report_cells(table: pd.DataFrame, unit: str) -> pd.DataFrame:
    with_floor = table["floor_gap"].notna().any()
    with_config = table["differs"].fillna("").astype(bool).any()

    def cells(row: pd.Series) -> dict[str, str]:
        out = {"variant": row["variant"] + (" (baseline)" if row["is_baseline"] else ""),
               "N": str(int(row["num_persistent"])), "layers": str(int(row["num_layers"])), "n": str(int(row["n"])),
               unit: fmt_mean_std(row["mean"], row["std"], unit), f"Δ {unit}": fmt_delta(row["delta"], unit),
               "params": fmt_count(row["params_total"]), "Δ params": fmt_count(row["delta_params"], signed=True),
               "FLOPs/token": fmt_count(row["flops_per_token"]),
               "Δ FLOPs": fmt_count(row["delta_flops"], signed=True), "tokens/s": fmt_count(row["tokens_per_s"])}
        if with_floor:
            out["above floor"] = fmt_value(row["floor_gap"], unit)
        if with_config:
            out["config"] = row["differs"] or ""
        return out

    return pd.DataFrame([cells(row) for _, row in table.iterrows()])


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    add_inputs_argument(parser)
    parser.add_argument("--baseline", default="transformer", help="variant or variant:N (default transformer)")
    parser.add_argument("--format", choices=FORMATS, default="markdown")
    parser.add_argument("--metric", choices=("dev", "test"), default="dev", help="which split's score")
    parser.add_argument("--claims", action="store_true",
                        help="test the paper's three claims instead (paired over seeds, 95%% t-interval, verdict)")
    parser.add_argument("--delta", type=non_negative, default=None,
                        help="--claims: equivalence margin of claim (a) in the metric's units (default 0.02 bpc, 0.5 ppl)")
    parser.add_argument("--param-tolerance", type=non_negative, default=PARAM_TOLERANCE,
                        help=f"--claims: relative difference still 'equal parameters' (default {PARAM_TOLERANCE:g})")
    args = parser.parse_args(argv)
    runs = load_runs(args.inputs, **selection(args))
    if args.claims:
        table = evaluate_claims(runs, args.delta, args.param_tolerance, args.metric)
        print(format_claims(table, args.format), end="")
    else:
        print(format_report(compare_variants(runs, args.baseline, args.metric), args.format), end="")
    return 0


if __name__ == "__main__":
    run_cli(main)
