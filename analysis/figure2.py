"""The paper's Figure 2 from runs: dev score against N (left), integration variants (right).

Each panel answers one question at a glance. Left, "does N matter?": attention_only
(N=0, drawn left of an axis break) and all_attention by N on a log2 axis. Right, "does
joint beat split?": one point per integration variant, all_attention at the N the other
variants use. In both, the transformer is a dashed line with its interval as a band:
"does all-attention match the transformer?". Every point is the mean over seeds with the
two-sided 95% Student-t interval of that mean as its error bar (none for one seed; the
interval of analysis.aggregate), labelled with its number of seeds n and its depth; the
y axis (shared by both panels) names the unit, the corpus and the evaluated subset
(eval.max_tokens of the runs' configs). Published numbers are drawn beside ours only
when comparable (same dataset, our evaluation on the whole split, parameter counts
within 10%), else in a panel of their own. Below the panels, the paper's three claims
as analysis.claims tests them on the same runs (`--no-claims` leaves them out).

The numbers plotted are written to figure2.csv; PNG and PDF are byte-identical from
render to render.

    python -m analysis.figure2 DIR_OR_GRID... [--out-dir results/figures] [--published/--no-published]
                                              [--claims/--no-claims] [--delta D]
"""
from __future__ import annotations

import argparse
import io
import math
import textwrap
from pathlib import Path
from typing import Any, Sequence

import matplotlib.style
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis.aggregate import CONFIDENCE, evaluated, one_corpus, seed_summary
from analysis.claims import evaluate_claims, summary_lines
from analysis.collect import load_runs
from analysis.inputs import add_inputs_argument, selection
from analysis.published import load_published
from analysis.render import dataset_label, fmt_count
from experiments.atomic import atomic_write_bytes, atomic_write_text
from model.errors import UserError
from experiments.cli import ArgumentParser, folder, non_negative, run_cli

RIGHT_LABELS = {"all_attention": "all-attn", "attn_split": "attn-split", "head_split": "head-split",
                "single_head": "single-head", "ffn_attn": "FF-attn"}
LEFT_MARKERS = {"attention_only": "s", "all_attention": "o"}
REFERENCE = "transformer"
ZERO_GAP = 1.5  # log2 units between the N=0 point and the smallest N > 0
SCALE_TOLERANCE = 0.10  # a published model is "at our scale" within this relative parameter difference
PLOT_COLUMNS = ["panel", "series", "variant", "label", "num_persistent", "num_layers", "x", "mean", "std", "n", "ci",
                "params_total"]
"""figure2.csv: panel is left, right, reference (the transformer, drawn in both) or published
(not comparable, its own panel); mean, std and ci (the 95% t-interval's half-width) in the unit."""
DPI = 150
# No software version or date in the files, a fixed hash salt and matplotlib's own
# defaults (not the user's matplotlibrc): the same numbers give the same bytes.
METADATA = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None}}
STYLE = {"svg.hashsalt": "figure2", "font.family": "DejaVu Sans", "font.size": 9}
REFERENCE_COLOR = "dimgray"
TEXT_LINE_INCHES = 0.15  # height of one line of the caption block at its font size
TEXT_WIDTH = 190  # characters of one line of the caption block that fit the narrower figure


def figure2_data(runs: pd.DataFrame, published: pd.DataFrame | None = None) -> pd.DataFrame:
    """The exact numbers drawn: one row per point, reference line or published marker, with the
    corpus (`dataset_label`) and evaluated subset (`subset`) the axis names."""
    runs, column = evaluated(runs, "dev")
    dataset = one_corpus(runs)
    summary = seed_summary(runs, column)
    _check_one_config_per_point(summary)
    rows = _left_points(summary) + _reference_lines(summary) + _right_points(summary)
    if not rows:
        raise UserError(f"no runs of the Figure 2 variants ({', '.join(LEFT_MARKERS)}, {', '.join(RIGHT_LABELS)})")
    unit = column.split("_", 1)[1]
    if published is not None:
        rows += _published_points(published, dataset, unit, _our_scale(runs, summary))
    data = pd.DataFrame(rows, columns=PLOT_COLUMNS).assign(
        dataset=dataset, unit=unit, dataset_label=dataset_label(dataset, _first(runs, "data_name")),
        subset=evaluated_subset(runs, unit))
    return _place_zero(data)


def evaluated_subset(runs: pd.DataFrame, unit: str) -> str:
    """Which part of the valid split the dev scores cover, e.g. 'first 200k characters of
    valid' (the runs' eval.max_tokens), or 'whole valid split'."""
    column = "eval.max_tokens"
    caps = sorted(runs[column].dropna().unique()) if column in runs else []
    if not caps:
        return "whole valid split"
    noun = "characters" if unit == "bpc" else "tokens"
    uncapped = " or whole split" if runs[column].isna().any() else ""
    return f"first {' / '.join(fmt_count(c, compact=True) for c in caps)} {noun} of valid{uncapped}"


def write_figure2(data: pd.DataFrame, out_dir: Path, with_published: bool,
                  claims: pd.DataFrame | None = None) -> list[Path]:
    """Render `data` (and the `claims` table of analysis.claims, when given) to
    figure2.png/.pdf and write `data` as figure2.csv; the paths written."""
    paths = [out_dir / f"figure2.{fmt}" for fmt in ("png", "pdf", "csv")]
    with matplotlib.style.context(["default", STYLE]):
        figure = render_figure(data, with_published, claims)
        for path in paths[:2]:
            buffer = io.BytesIO()
            fmt = path.suffix[1:]
            figure.savefig(buffer, format=fmt, dpi=DPI, metadata=METADATA[fmt])
            atomic_write_bytes(path, buffer.getvalue())
    atomic_write_text(paths[2], data.to_csv(index=False))
    return paths


def render_figure(data: pd.DataFrame, with_published: bool, claims: pd.DataFrame | None = None) -> Figure:
    """The figure (not using pyplot, so no global backend state): the two panels sharing
    their y axis, a third for published numbers that are not comparable, and below them
    the caption and the claims."""
    own_panel = data[data["panel"] == "published"]
    text = _caption_lines(data, with_published) + (summary_lines(claims) if claims is not None else [])
    text = [part for line in text for part in _wrap(line)]
    height = 4.4 + TEXT_LINE_INCHES * len(text)
    figure = Figure(figsize=(11.5 if own_panel.empty else 14.5, height))
    ratios = [1.15, 1] + ([0.55] if not own_panel.empty else [])
    axes = figure.subplots(1, len(ratios), gridspec_kw={"width_ratios": ratios})
    left, right = axes[0], axes[1]
    right.sharey(left)
    reference = data[data["panel"] == "reference"]
    ylabel = f"dev {data['unit'].iloc[0]} (lower is better)\n{data['dataset_label'].iloc[0]}, {data['subset'].iloc[0]}"
    _draw_left(left, data[data["panel"] == "left"], reference, ylabel)
    _draw_right(right, data[data["panel"] == "right"], reference, ylabel)
    _fit_y(left, data[data["panel"].isin(["left", "right", "reference"])])
    if not own_panel.empty:
        _draw_published(axes[2], own_panel, data["dataset_label"].iloc[0], data["unit"].iloc[0])
    _legend(figure, axes[:2])
    figure.text(0.01, 0.01, "\n".join(text), ha="left", va="bottom", fontsize=7.5, linespacing=1.35)
    # the text block takes a fixed height per line, the x labels about 0.75 inch above it
    bottom = (TEXT_LINE_INCHES * len(text) + 0.75) / height
    figure.subplots_adjust(left=0.075, right=0.99, top=1 - 0.75 / height, bottom=bottom, wspace=0.25)
    return figure


def _legend(figure: Figure, axes: Sequence[Axes]) -> None:
    """One legend for both panels, above them, where it hides no point."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        figure.legend(list(entries.values()), list(entries), loc="upper center", ncol=len(entries), fontsize=7.5,
                      frameon=False)


def _fit_y(ax: Axes, shown: pd.DataFrame) -> None:
    """The shared y range: every mean and interval, with room above for the point labels."""
    ci = shown["ci"].fillna(0)
    low, high = (shown["mean"] - ci).min(), (shown["mean"] + ci).max()
    span = high - low if high > low else max(abs(high) * 0.05, 0.1)
    ax.set_ylim(low - 0.06 * span, high + 0.22 * span)


def _check_one_config_per_point(summary: pd.DataFrame) -> None:
    clashes = summary[summary.duplicated(["variant", "num_persistent"], keep=False)]
    if not clashes.empty:
        points = sorted({f"{v} N={n}" for v, n in zip(clashes["variant"], clashes["num_persistent"])})
        differ = sorted({d for d in clashes["differs"] if d})
        detail = f" (they differ in {'; '.join(differ)})" if differ else ""
        raise UserError(f"several configurations for {', '.join(points)}{detail}: pass the runs of one figure")


def _row(panel: str, series: str, point: pd.Series, label: str, x: float) -> dict[str, Any]:
    return {"panel": panel, "series": series, "variant": point["variant"], "label": label,
            "num_persistent": point["num_persistent"], "num_layers": point["num_layers"], "x": x,
            "mean": point["mean"], "std": point["std"], "n": point["n"], "ci": point["ci"],
            "params_total": point.get("params_total", math.nan)}


def _left_points(summary: pd.DataFrame) -> list[dict[str, Any]]:
    points = summary[summary["variant"].isin(LEFT_MARKERS)]
    return [_row("left", "ours", p, f"N={int(p['num_persistent'])}", _log2_or_nan(p["num_persistent"]))
            for _, p in points.iterrows()]


def _reference_lines(summary: pd.DataFrame) -> list[dict[str, Any]]:
    lines = summary[summary["variant"] == REFERENCE]
    return [_row("reference", REFERENCE, p, f"transformer, {int(p['num_layers'])} layers", math.nan)
            for _, p in lines.iterrows()]


def _right_points(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """Points in the paper's order; all_attention only at the N the other variants use most."""
    points = summary[summary["variant"].isin(RIGHT_LABELS)]
    joint = points["variant"] == "all_attention"
    if points.loc[joint, "num_persistent"].nunique() > 1:
        reference = points[~joint] if (~joint).any() else points[joint]
        target = reference["num_persistent"].mode().max()
        points = points[~joint | (points["num_persistent"] == target)]
    order = {v: i for i, v in enumerate(RIGHT_LABELS)}
    points = points.assign(_order=points["variant"].map(order)).sort_values(["_order", "num_persistent"], kind="stable")
    return [_row("right", "ours", p, f"{RIGHT_LABELS[p['variant']]} N={int(p['num_persistent'])}", float(x))
            for x, (_, p) in enumerate(points.iterrows())]


def _our_scale(runs: pd.DataFrame, summary: pd.DataFrame) -> tuple[bool, list[float]]:
    """Whether our dev scores cover the whole split, and our all-attention parameter counts."""
    full = bool(runs["eval_full"].eq(True).all()) if "eval_full" in runs else False
    joint = summary[summary["variant"] == "all_attention"]
    return full, joint["params_total"].dropna().tolist() if "params_total" in joint else []


def _published_points(published: pd.DataFrame, dataset: str, unit: str,
                      scale: tuple[bool, list[float]]) -> list[dict[str, Any]]:
    """The paper's own model's published dev score for this dataset, at its N: beside ours
    (panel left) when comparable, else in a panel of their own (panel published)."""
    known = published[(published["dataset"] == dataset) & (published["split"] == "dev")
                      & (published["metric"] == unit) & published["num_persistent"].notna()]
    full, ours = scale

    def panel(params_m: float) -> str:
        same_scale = any(abs(p - params_m * 1e6) <= SCALE_TOLERANCE * params_m * 1e6 for p in ours)
        return "left" if full and same_scale else "published"

    return [{"panel": panel(p["params_m"]), "series": f"published ({p['source']})", "variant": "all_attention",
             "label": f"{p['params_m']:g}M, {int(p['num_layers'])} layers", "num_persistent": int(p["num_persistent"]),
             "num_layers": int(p["num_layers"]), "x": math.log2(p["num_persistent"]), "mean": p["value"],
             "std": math.nan, "n": math.nan, "ci": math.nan, "params_total": p["params_m"] * 1e6}
            for _, p in known.iterrows()]


def _first(runs: pd.DataFrame, column: str) -> Any:
    return runs[column].iloc[0] if column in runs and not runs.empty else None


def _log2_or_nan(n: float) -> float:
    return math.log2(n) if n > 0 else math.nan


def _place_zero(data: pd.DataFrame) -> pd.DataFrame:
    """Put N=0 left of the smallest N > 0 on the log2 axis, beyond a visible gap."""
    left = data["panel"] == "left"
    zero = left & (data["series"] == "ours") & (data["num_persistent"] == 0)
    positive = data.loc[left & (data["num_persistent"] > 0), "x"]
    data.loc[zero, "x"] = positive.min() - ZERO_GAP if not positive.empty else 0.0
    return data


def _draw_left(ax: Axes, left: pd.DataFrame, reference: pd.DataFrame, ylabel: str) -> None:
    ax.set_title("Does N matter?  all-attention by N per head (N = 0: attention-only)", fontsize=9.5)
    _draw_reference(ax, reference)
    ours = left[left["series"] == "ours"]
    for variant, marker in LEFT_MARKERS.items():
        points = ours[ours["variant"] == variant].sort_values("x")
        if not points.empty:
            color = "C0" if variant == "all_attention" else "C5"  # C1-C4 are the right panel's variants
            ax.errorbar(points["x"], points["mean"], yerr=points["ci"].fillna(0), marker=marker, color=color,
                        capsize=3, linewidth=1, label=variant.replace("_", "-") + " (ours)")
            _annotate_points(ax, points)
    for series, points in left[left["series"].str.startswith("published")].groupby("series"):
        ax.plot(points["x"], points["mean"], linestyle="none", marker="*", markersize=11, color="black",
                markerfacecolor="none", label=f"{series}: all-attention")
    if left.empty and reference.empty:
        _say_empty(ax, "no attention-only, all-attention or transformer runs")
    _label_n_axis(ax, left)
    ax.set_ylabel(ylabel)


def _draw_reference(ax: Axes, reference: pd.DataFrame) -> None:
    """The transformer: a dashed line at its mean, its 95% interval as a band, its own legend entry."""
    for _, line in reference.iterrows():
        spread = f"{CONFIDENCE:.0%} CI band" if not pd.isna(line["ci"]) else "no interval"
        ax.axhline(line["mean"], color=REFERENCE_COLOR, linestyle="--", linewidth=1,
                   label=f"{line['label']} (n={int(line['n'])}; {spread})")
        if not pd.isna(line["ci"]):
            ax.axhspan(line["mean"] - line["ci"], line["mean"] + line["ci"], color=REFERENCE_COLOR, alpha=0.15,
                       linewidth=0)


def _label_n_axis(ax: Axes, left: pd.DataFrame) -> None:
    placed = left.dropna(subset=["x"]).drop_duplicates("x").sort_values("x")
    if placed.empty:  # only the transformer reference: no N axis to label
        ax.set_xticks([])
        return
    ax.set_xticks(placed["x"], [str(int(n)) for n in placed["num_persistent"]])
    ax.set_xlabel("N per head (log2 axis; N = 0 is attention-only, left of the break)")
    if (placed["num_persistent"] == 0).any() and (placed["num_persistent"] > 0).any():
        ax.axvline(placed["x"].min() + ZERO_GAP / 2, color="lightgray", linestyle=":")
    ax.set_xlim(placed["x"].min() - 0.75, placed["x"].max() + 0.75)


def _draw_right(ax: Axes, right: pd.DataFrame, reference: pd.DataFrame, ylabel: str) -> None:
    ax.set_title("Does joint beat split?  integration of persistent vectors", fontsize=9.5)
    ax.yaxis.set_tick_params(labelleft=True)  # the shared axis keeps its numbers here too
    ax.set_ylabel(ylabel)
    _draw_reference(ax, reference)
    if right.empty:
        return _say_empty(ax, "no runs of the integration variants")
    for _, point in right.iterrows():
        color = f"C{list(RIGHT_LABELS).index(point['variant'])}"
        ax.errorbar(point["x"], point["mean"], yerr=0 if pd.isna(point["ci"]) else point["ci"], marker="o",
                    markersize=7 if point["variant"] == "all_attention" else 5, color=color, capsize=4)
    ax.set_xticks(right["x"], [label.replace(" ", "\n", 1) for label in right["label"]], fontsize=8)
    ax.set_xlim(right["x"].min() - 0.6, right["x"].max() + 0.6)
    _annotate_points(ax, right)


def _draw_published(ax: Axes, published: pd.DataFrame, dataset: str, unit: str) -> None:
    """Published numbers that are not comparable with ours, on their own axis."""
    ax.set_title("Published, not comparable\n(other scale or evaluation)", fontsize=9.5)
    for series, points in published.groupby("series"):
        ax.plot(points["x"], points["mean"], linestyle="none", marker="*", markersize=11, markerfacecolor="none",
                color="black", label=series)
        for x, mean, label in zip(points["x"], points["mean"], points["label"]):
            ax.annotate(label, (x, mean), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=6.5)
    placed = published.drop_duplicates("x").sort_values("x")
    ax.set_xticks(placed["x"], [str(int(n)) for n in placed["num_persistent"]])
    ax.set_xlim(placed["x"].min() - 0.75, placed["x"].max() + 0.75)
    ax.margins(y=0.25)
    ax.set_xlabel("N per head (log2 axis)")
    ax.set_ylabel(f"published dev {unit}\n{dataset}, whole valid split")
    ax.legend(fontsize=7, loc="best")


def _say_empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", transform=ax.transAxes)


def _annotate_points(ax: Axes, points: pd.DataFrame) -> None:
    """Above each error bar: the point's depth and number of seeds."""
    for x, mean, ci, n, layers in zip(points["x"], points["mean"], points["ci"].fillna(0), points["n"],
                                      points["num_layers"]):
        ax.annotate(f"{int(layers)} layers\nn={int(n)}", (x, mean + ci), xytext=(0, 3), textcoords="offset points",
                    ha="center", va="bottom", fontsize=6.5, linespacing=1.1)


def _caption_lines(data: pd.DataFrame, with_published: bool) -> list[str]:
    label, unit = data["dataset_label"].iloc[0], data["unit"].iloc[0]
    text = (f"{label}: dev {unit} of each run's final evaluation ({data['subset'].iloc[0]}). Points: mean over n "
            f"seeds; error bars: two-sided {CONFIDENCE:.0%} Student-t interval of that mean (none for n = 1). ")
    if (data["series"] == REFERENCE).any():
        text += f"Dashed line and band: the transformer, mean and {CONFIDENCE:.0%} interval. "
    text += ("The claims below pair runs by seed, so their intervals are narrower than these bars when a seed moves "
             "both models alike. ")
    published = data["series"].str.startswith("published")
    if published.any():
        text += (f"Open stars: published dev {unit} of the authors' all-attention model at its N (source in the "
                 "legend), beside ours only when comparable (same dataset, whole split, parameters within "
                 f"{SCALE_TOLERANCE:.0%}); the paper's Figure 2 values are not available as numbers.")
    elif with_published:
        text += f"No published dev {unit} is known for {label} (the paper's Figure 2 values are not available)."
    else:
        text += "Published numbers not drawn."
    return textwrap.wrap(text, width=TEXT_WIDTH)


def _wrap(line: str) -> list[str]:
    """A caption or claims line in lines of at most TEXT_WIDTH characters, keeping its indent
    and indenting its continuations two more."""
    indent = line[: len(line) - len(line.lstrip())]
    return textwrap.wrap(line.strip(), width=TEXT_WIDTH, initial_indent=indent, subsequent_indent=indent + "  ") or [line]


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m analysis.figure2", description=__doc__.splitlines()[0])
    add_inputs_argument(parser)
    parser.add_argument("--out-dir", type=folder, default=Path("results/figures"), help="default results/figures")
    parser.add_argument("--published", action=argparse.BooleanOptionalAction, default=True,
                        help="draw published numbers (default on)")
    parser.add_argument("--claims", action=argparse.BooleanOptionalAction, default=True,
                        help="state the paper's claims under the panels (analysis.claims; default on)")
    parser.add_argument("--delta", type=non_negative, default=None,
                        help="equivalence margin of claim (a), in the metric's units (default 0.02 bpc, 0.5 ppl)")
    args = parser.parse_args(argv)
    runs = load_runs(args.inputs, **selection(args))
    data = figure2_data(runs, load_published() if args.published else None)
    claims = evaluate_claims(runs, args.delta) if args.claims else None
    for path in write_figure2(data, args.out_dir, args.published, claims):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
