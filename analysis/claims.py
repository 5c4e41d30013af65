"""The paper's three claims as statistics on any set of runs: paired difference, interval, verdict.

    python -m analysis.report --claims DIR_OR_GRID... [--delta D] [--param-tolerance 0.05] [--metric dev|test]

Claims (Sukhbaatar et al. 2019, Figure 2 and Tables 1-2):
  (a) all-attention is within δ of the transformer at equal parameters;
  (b) N = 0 (attention_only) is worse than the best N > 0 all_attention;
  (c) the joint softmax (all_attention) is better than each separate variant
      (attn_split, head_split, single_head, ffn_attn).

Points are analysis.aggregate's (runs pool as seeds only when their configs are equal
except the seed). Every comparison is one point of all-attention against one other
point, chosen as follows:
  - each side is the candidate point with the lowest mean score (the paper reports every
    model at its best configuration; for (b) and (c) this makes the other side as strong
    as the runs allow, for (a) and (b) it favours all-attention: a selection on the same
    runs, so read a verdict on many candidates with that in mind);
  - (a) and (b) compare different depths by design, so the two sides must have total
    parameter counts within --param-tolerance (default 5%) of each other: the transformer
    (resp. attention_only) is chosen first, then the best all_attention N > 0 within the
    tolerance of it;
  - (c) compares integrations with everything else equal: the all_attention point has the
    separate variant's depth, d_model and heads, and its persistent parameter count when
    both runs recorded one (Figure 2, right, compares the integrations at one budget of
    persistent vectors: head_split doubles N over its half of the heads). Δ params is shown,
    not required: the variants' total counts differ by construction, e.g. head_split.

Statistic: runs of the two points are paired by seed (a seed present on one side only is
left out and counted in the note); d_i = score(all-attention, seed i) - score(other,
seed i), in the metric's units (bpc or ppl; lower is better, so d < 0 means all-attention
is better). The interval is the two-sided 95% Student-t interval of the mean paired
difference, mean(d) ± t_{0.975, n-1} · sd(d) / sqrt(n) (analysis.aggregate.CONFIDENCE);
with fewer than two pairs there is no interval and the verdict is inconclusive.

Verdicts on the interval [lo, hi]:
  (a), an equivalence claim with margin δ (--delta; default 0.02 bpc or 0.5 ppl):
       reproduced if -δ <= lo and hi <= δ; not reproduced if hi < -δ or lo > δ (the
       interval lies entirely outside the margin); inconclusive otherwise.
  (b), (c), superiority claims (all-attention better, d < 0):
       reproduced if hi < 0; not reproduced if lo > 0 (the other side is better);
       inconclusive otherwise (the interval contains 0).
  A claim made of several comparisons ((c): one per separate variant present) is
  reproduced if every comparison is, not reproduced if any is, inconclusive otherwise;
  the comparisons are not corrected for multiplicity. A claim with no comparison
  possible (its variants not among the runs) is "not tested".
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from analysis.aggregate import (CONFIDENCE, config_fields, evaluated, interval_half_width, one_corpus, runs_of,
                                seed_summary)
from analysis.render import dataset_label, fmt_count, fmt_delta, latex_table, markdown_table
from model.errors import UserError

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTED = "reproduced", "not reproduced", "inconclusive", "not tested"
DEFAULT_DELTA = {"bpc": 0.02, "ppl": 0.5}
"""The equivalence margin of claim (a), in the metric's units, when --delta is not given."""
PARAM_TOLERANCE = 0.05
"""Relative difference of total parameter counts still called 'equal parameters'."""
JOINT, REFERENCE, ZERO = "all_attention", "transformer", "attention_only"
SEPARATE = ("attn_split", "head_split", "single_head", "ffn_attn")
SHAPE_KEYS = ("num_layers", "model.d_model", "model.num_heads")
BUDGET_KEY = "params_persistent"
"""Also held equal in (c) when the separate variant's point has it (eval.json's count)."""
STATEMENTS = {
    "a": "all-attention within δ of the transformer at equal parameters",
    "b": "N = 0 (attention-only) worse than the best N > 0 at equal parameters",
    "c": "the joint softmax better than each separate variant",
}
COLUMNS = ["claim", "statement", "ours", "other", "n", "mean_diff", "ci_low", "ci_high", "verdict", "delta_params",
           "note", "metric", "delta", "tolerance", "dataset"]


def evaluate_claims(runs: pd.DataFrame, delta: float | None = None, tolerance: float = PARAM_TOLERANCE,
                    split: str = "dev") -> pd.DataFrame:
    """One row per comparison (see the module docstring): the paired mean difference
    all-attention - other (`mean_diff`, in `metric`'s unit), its 95% t-interval
    (`ci_low`, `ci_high`; NaN when n < 2), the number n of seed pairs, and the verdict."""
    runs, column = evaluated(runs, split)
    dataset = dataset_label(one_corpus(runs), runs["data_name"].iloc[0] if "data_name" in runs else None)
    unit = column.split("_", 1)[1]
    delta = DEFAULT_DELTA[unit] if delta is None else delta
    if not delta > 0:
        raise UserError(f"--delta must be > 0 (in {unit}), got {delta}")
    summary = seed_summary(runs, column)
    context = {"runs": runs, "column": column, "delta": delta, "tolerance": tolerance}
    rows = [_claim_a(summary, context), _claim_b(summary, context), *_claim_c(summary, context)]
    return pd.DataFrame(rows).reindex(columns=COLUMNS).assign(metric=column, delta=delta, tolerance=tolerance,
                                                              dataset=dataset)


def claim_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """One row per claim: its verdict from its comparisons' (module docstring) and the
    smallest n among them."""
    rows = []
    for claim, comparisons in table.groupby("claim", sort=True):
        verdicts = set(comparisons["verdict"])
        tested = comparisons[comparisons["verdict"] != NOT_TESTED]
        verdict = (NOT_TESTED if tested.empty else NOT_REPRODUCED if NOT_REPRODUCED in verdicts
                   else REPRODUCED if set(tested["verdict"]) == {REPRODUCED} else INCONCLUSIVE)
        rows.append({"claim": claim, "statement": STATEMENTS[claim], "verdict": verdict,
                     "n": int(tested["n"].min()) if not tested.empty else 0})
    return pd.DataFrame(rows)


def format_claims(table: pd.DataFrame, fmt: str = "markdown") -> str:
    """The comparisons as csv (raw numbers), or markdown / LaTeX with a caption stating the
    interval and the rules, followed (markdown) by one verdict line per claim."""
    if fmt == "csv":
        return table.to_csv(index=False)
    metric = table["metric"].iloc[0]
    unit = metric.split("_", 1)[1]
    first = table.iloc[0]
    caption = (f"The paper's claims on {first['dataset']}, {metric.replace('_', ' ')}, paired over seeds: "
               f"difference = all-attention - other ({unit}; negative: all-attention better), mean and two-sided "
               f"{CONFIDENCE:.0%} Student-t interval over the n paired differences. (a) reproduced when the interval "
               f"lies within ±δ = ±{first['delta']:g} {unit}, not reproduced when entirely outside it; (b), (c) "
               f"reproduced when the interval lies below 0, not reproduced when above 0; otherwise inconclusive at "
               f"this n. Equal parameters: total counts within {first['tolerance']:.0%}.")
    first = ~table["claim"].duplicated()  # a claim's statement once, on its first comparison
    cells = pd.DataFrame([_claim_cells(row, unit, shown) for (_, row), shown in zip(table.iterrows(), first)])
    if fmt == "latex":
        return latex_table(cells, caption)
    verdicts = "\n".join(f"- **({v['claim']})** {v['statement']}: **{verdict_text(v['verdict'], v['n'])}**"
                         for _, v in claim_verdicts(table).iterrows())
    return f"{caption}\n\n{markdown_table(cells)}\n{verdicts}\n"


def verdict_text(verdict: str, n: int) -> str:
    """'inconclusive at n=2'; the other verdicts as they are."""
    return f"{verdict} at n={int(n)}" if verdict == INCONCLUSIVE else verdict


def summary_lines(table: pd.DataFrame) -> list[str]:
    """Short lines for a figure: per claim its verdict, then one indented line per comparison, e.g.
    '    all-attention N=128, 8 layers - transformer, 4 layers: +0.016 bpc, 95% interval [-0.027, +0.058],
    n=2: inconclusive'."""
    unit = table["metric"].iloc[0].split("_", 1)[1]
    first = table.iloc[0]
    lines = [f"The paper's claims (python -m analysis.report --claims): difference = all-attention - other in {unit}, "
             f"runs paired by seed, {CONFIDENCE:.0%} t-interval; δ = {first['delta']:g} {unit}; equal parameters "
             f"within {first['tolerance']:.0%}."]
    verdicts = claim_verdicts(table).set_index("claim")
    for claim, comparisons in table.groupby("claim", sort=True):
        verdict = verdicts.loc[claim]
        lines.append(f"({claim}) {verdict['statement']}: {verdict_text(verdict['verdict'], verdict['n'])}")
        for _, row in comparisons.iterrows():
            if row["verdict"] == NOT_TESTED:
                lines.append(f"      {row['note']}")
                continue
            lines.append(f"      {row['ours']} - {row['other']}: {fmt_delta(row['mean_diff'], unit)} {unit}, "
                         f"{CONFIDENCE:.0%} interval {_interval_text(row, unit)}, n={int(row['n'])}: {row['verdict']}"
                         + (f" ({row['note']})" if _text(row["note"]) else ""))
    return lines


def point_name(point: pd.Series) -> str:
    """'all-attention N=128, 8 layers' / 'transformer, 4 layers': a point as the claims name it."""
    variant = str(point["variant"]).replace("_", "-")
    persistent = f" N={int(point['num_persistent'])}" if point["variant"] not in (REFERENCE, ZERO) else ""
    return f"{variant}{persistent}, {int(point['num_layers'])} layers"


def _claim_a(summary: pd.DataFrame, context: dict[str, Any]) -> dict[str, Any]:
    return _against_equal_parameters("a", summary, context, REFERENCE, _equivalence, "no transformer runs",
                                     "no all-attention point within {:.0%} of the transformer's parameters")


def _claim_b(summary: pd.DataFrame, context: dict[str, Any]) -> dict[str, Any]:
    return _against_equal_parameters("b", summary, context, ZERO, _superiority, "no attention-only (N = 0) runs",
                                     "no all-attention N > 0 point within {:.0%} of attention-only's parameters")


def _against_equal_parameters(claim: str, summary: pd.DataFrame, context: dict[str, Any], variant: str,
                              test: Any, missing: str, unmatched: str) -> dict[str, Any]:
    """The best all-attention point within the parameter tolerance of the best `variant` point."""
    other = _best(summary[summary["variant"] == variant])
    if other is None:
        return _not_tested(claim, missing)
    ours = _best(_equal_parameters(_joint(summary), other, context["tolerance"]))
    if ours is None:
        return _not_tested(claim, unmatched.format(context["tolerance"]))
    return _compare(claim, ours, other, test, context)


def _claim_c(summary: pd.DataFrame, context: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for variant in SEPARATE:
        other = _best(summary[summary["variant"] == variant])
        if other is None:
            continue
        ours = _best(_same_shape(_joint(summary), other))
        rows.append(_compare("c", ours, other, _superiority, context) if ours is not None else
                    _not_tested("c", f"no all-attention point with {point_name(other)}'s depth, width and persistent parameters"))
    return rows or [_not_tested("c", f"no runs of {', '.join(SEPARATE)}")]


def _joint(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[(summary["variant"] == JOINT) & (summary["num_persistent"] > 0)]


def _best(points: pd.DataFrame) -> pd.Series | None:
    """The point with the lowest mean score; ties go to the one with more seeds."""
    if points.empty:
        return None
    return points.sort_values(["mean", "n"], ascending=[True, False], kind="stable").iloc[0]


def _equal_parameters(points: pd.DataFrame, other: pd.Series, tolerance: float) -> pd.DataFrame:
    relative = (points["params_total"] - other["params_total"]).abs() / other["params_total"]
    return points[relative <= tolerance]


def _same_shape(points: pd.DataFrame, other: pd.Series) -> pd.DataFrame:
    keys = [k for k in SHAPE_KEYS if k in points and k in other]
    if BUDGET_KEY in points and BUDGET_KEY in other and not pd.isna(other[BUDGET_KEY]):
        keys.append(BUDGET_KEY)
    same = pd.Series(True, index=points.index)
    for key in keys:
        same &= points[key] == other[key]
    return points[same]


def _compare(claim: str, ours: pd.Series, other: pd.Series, rule: Any, context: dict[str, Any]) -> dict[str, Any]:
    runs, column, delta = context["runs"], context["column"], context["delta"]
    mine, theirs = runs_of(runs, ours), runs_of(runs, other)
    pairs = mine[["seed", column]].merge(theirs[["seed", column]], on="seed", suffixes=("_ours", "_other"))
    differences = pairs[f"{column}_ours"] - pairs[f"{column}_other"]
    n = len(differences)
    mean = float(differences.mean()) if n else math.nan
    half = interval_half_width(float(differences.std(ddof=1)) if n > 1 else math.nan, n)
    low, high = mean - half, mean + half
    verdict, why = rule(low, high, delta) if n > 1 else (INCONCLUSIVE, "fewer than 2 seed pairs: no interval")
    notes = [why, _parameters_note(ours, other, context["tolerance"]), _unpaired_note(mine, theirs, n),
             _setup_note(mine, theirs)]
    return {"claim": claim, "statement": STATEMENTS[claim], "ours": point_name(ours), "other": point_name(other),
            "n": n, "mean_diff": mean, "ci_low": low, "ci_high": high, "verdict": verdict,
            "delta_params": ours["params_total"] - other["params_total"],
            "note": "; ".join(note for note in notes if note)}


def _equivalence(low: float, high: float, delta: float) -> tuple[str, str]:
    if -delta <= low and high <= delta:
        return REPRODUCED, ""
    if high < -delta:
        return NOT_REPRODUCED, "all-attention better by more than δ"
    if low > delta:
        return NOT_REPRODUCED, "all-attention worse by more than δ"
    return INCONCLUSIVE, "interval not within ±δ"


def _superiority(low: float, high: float, delta: float) -> tuple[str, str]:
    if high < 0:
        return REPRODUCED, ""
    if low > 0:
        return NOT_REPRODUCED, "the other side is better"
    return INCONCLUSIVE, "interval contains 0"


def _parameters_note(ours: pd.Series, other: pd.Series, tolerance: float) -> str:
    """For (c), whose sides are not chosen by parameters: say when they are not equal."""
    relative = (ours["params_total"] - other["params_total"]) / other["params_total"]
    return f"not at equal parameters (all-attention {relative:+.0%})" if abs(relative) > tolerance else ""


def _unpaired_note(mine: pd.DataFrame, theirs: pd.DataFrame, n: int) -> str:
    unpaired = len(mine) + len(theirs) - 2 * n
    return f"{unpaired} run(s) without a seed on the other side left out" if unpaired else ""


def _setup_note(mine: pd.DataFrame, theirs: pd.DataFrame) -> str:
    """Training or evaluation settings (not model.*) in which the two points differ: then
    the difference is not the model's alone."""
    both = pd.concat([mine.iloc[:1], theirs.iloc[:1]])
    fields = [f for f in config_fields(both) if not f.startswith("model.")]
    differ = [f for f in fields if both[f].astype(str).nunique() > 1]
    return f"also differ in {', '.join(differ)}" if differ else ""


def _not_tested(claim: str, why: str) -> dict[str, Any]:
    return {"claim": claim, "statement": STATEMENTS[claim], "n": 0, "verdict": NOT_TESTED, "note": why}


def _claim_cells(row: pd.Series, unit: str, with_statement: bool) -> dict[str, str]:
    tested = row["verdict"] != NOT_TESTED
    return {"claim": f"({row['claim']}) {row['statement']}" if with_statement else f"({row['claim']})",
            "comparison": f"{row['ours']} - {row['other']}" if tested else "—",
            "n": str(int(row["n"])), f"mean Δ {unit}": fmt_delta(row["mean_diff"], unit),
            f"{CONFIDENCE:.0%} interval": _interval_text(row, unit) if tested else "—",
            "verdict": verdict_text(row["verdict"], row["n"]),
            "Δ params": fmt_count(row["delta_params"], signed=True), "note": _text(row["note"])}


def _interval_text(row: pd.Series, unit: str) -> str:
    if math.isnan(row["ci_low"]):
        return "no interval (n < 2)"
    return f"[{fmt_delta(row['ci_low'], unit)}, {fmt_delta(row['ci_high'], unit)}]"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
