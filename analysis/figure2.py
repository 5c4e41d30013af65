"""The paper's Figure 2 from runs: dev score against N (left), integration variants (right).

Left: attention_only (N=0, drawn left of an axis break) and all_attention by N on
a log2 axis, the transformer as a horizontal reference. Right: one bar per
integration variant; all_attention at the N the other variants use. Means over
seeds with one-std error bars. The numbers plotted are written to figure2.csv;
PNG and PDF are byte-identical from render to render.

    python -m analysis.figure2 DIR_OR_GRID... [--out-dir results/figures] [--published/--no-published]
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

from analysis.aggregate import evaluated, one_corpus, seed_summary
from analysis.collect import load_runs
from analysis.inputs import add_inputs_argument, selection
from analysis.published import load_published
from experiments.atomic import atomic_write_bytes, atomic_write_text
from model.errors import UserError
from experiments.cli import run_cli

RIGHT_LABELS = {"all_attention": "all-attn", "attn_split": "attn-split", "head_split": "head-split",
                "single_head": "single-head", "ffn_attn": "FF-attn"}
LEFT_MARKERS = {"attention_only": "s", "all_attention": "o"}
REFERENCE = "transformer"
ZERO_GAP = 1.5  # log2 units between the N=0 point and the smallest N > 0
PLOT_COLUMNS = ["panel", "series", "variant", "label", "num_persistent", "num_layers", "x", "mean", "std", "n"]
DPI = 150
# No software version or date in the files, a fixed hash salt and matplotlib's own
# defaults (not the user's matplotlibrc): the same numbers give the same bytes.
METADATA = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None}}
STYLE = {"svg.hashsalt": "figure2", "font.family": "DejaVu Sans", "font.size": 9}


def figure2_data(runs: pd.DataFrame, published: pd.DataFrame | None = None) -> pd.DataFrame:
    """The exact numbers drawn: one row per point, bar, reference line or published marker."""
    runs, column = evaluated(runs, "dev")
    dataset = one_corpus(runs)
    summary = seed_summary(runs, column)
    _check_one_config_per_point(summary)
    rows = _left_points(summary) + _reference_lines(summary) + _right_bars(summary)
    if not rows:
        raise UserError(f"no runs of the Figure 2 variants ({', '.join(LEFT_MARKERS)}, {', '.join(RIGHT_LABELS)})")
    unit = column.split("_", 1)[1]
    if published is not None:
        rows += _published_points(published, dataset, unit)
    data = pd.DataFrame(rows, columns=PLOT_COLUMNS).assign(dataset=dataset, unit=unit)
    return _place_zero(data)


def write_figure2(data: pd.DataFrame, out_dir: Path, with_published: bool) -> list[Path]:
    """Render `data` to figure2.png/.pdf and write it as figure2.csv; the paths written."""
    paths = [out_dir / f"figure2.{fmt}" for fmt in ("png", "pdf", "csv")]
    with matplotlib.style.context(["default", STYLE]):
        figure = render_figure(data, with_published)
        for path in paths[:2]:
            buffer = io.BytesIO()
            fmt = path.suffix[1:]
            figure.savefig(buffer, format=fmt, dpi=DPI, metadata=METADATA[fmt])
            atomic_write_bytes(path, buffer.getvalue())
    atomic_write_text(paths[2], data.to_csv(index=False))
    return paths


def render_figure(data: pd.DataFrame, with_published: bool) -> Figure:
    """The two-panel figure (not using pyplot, so no global backend state)."""
    unit = data["unit"].iloc[0]
    figure = Figure(figsize=(10, 4.4))
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1]})
    _draw_left(left, data[data["panel"] == "left"], unit)
    _draw_right(right, data[data["panel"] == "right"], unit)
    figure.text(0.5, 0.015, _caption(data, with_published), ha="center", va="bottom", fontsize=7.5)
    figure.subplots_adjust(left=0.07, right=0.985, top=0.92, bottom=0.24, wspace=0.22)
    return figure


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
            "mean": point["mean"], "std": point["std"], "n": point["n"]}


def _left_points(summary: pd.DataFrame) -> list[dict[str, Any]]:
    points = summary[summary["variant"].isin(LEFT_MARKERS)]
    return [_row("left", "ours", p, f"N={int(p['num_persistent'])}", _log2_or_nan(p["num_persistent"]))
            for _, p in points.iterrows()]


def _reference_lines(summary: pd.DataFrame) -> list[dict[str, Any]]:
    lines = summary[summary["variant"] == REFERENCE]
    return [_row("left", REFERENCE, p, f"transformer ({int(p['num_layers'])} layers)", math.nan)
            for _, p in lines.iterrows()]


def _right_bars(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """Bars in the paper's order; all_attention only at the N the other variants use most."""
    bars = summary[summary["variant"].isin(RIGHT_LABELS)]
    joint = bars["variant"] == "all_attention"
    if bars.loc[joint, "num_persistent"].nunique() > 1:
        reference = bars[~joint] if (~joint).any() else bars[joint]
        target = reference["num_persistent"].mode().max()
        bars = bars[~joint | (bars["num_persistent"] == target)]
    order = {v: i for i, v in enumerate(RIGHT_LABELS)}
    bars = bars.assign(_order=bars["variant"].map(order)).sort_values(["_order", "num_persistent"], kind="stable")
    return [_row("right", "ours", p, f"{RIGHT_LABELS[p['variant']]} N={int(p['num_persistent'])}", float(x))
            for x, (_, p) in enumerate(bars.iterrows())]


def _published_points(published: pd.DataFrame, dataset: str, unit: str) -> list[dict[str, Any]]:
    """The paper's own model's published dev score for this dataset, at its N."""
    known = published[(published["dataset"] == dataset) & (published["split"] == "dev")
                      & (published["metric"] == unit) & published["num_persistent"].notna()]
    return [{"panel": "left", "series": f"published ({p['source']})", "variant": "all_attention",
             "label": f"{p['model']}, {p['params_m']:g}M", "num_persistent": int(p["num_persistent"]),
             "num_layers": int(p["num_layers"]), "x": math.log2(p["num_persistent"]), "mean": p["value"],
             "std": math.nan, "n": math.nan} for _, p in known.iterrows()]


def _log2_or_nan(n: float) -> float:
    return math.log2(n) if n > 0 else math.nan


def _place_zero(data: pd.DataFrame) -> pd.DataFrame:
    """Put N=0 left of the smallest N > 0 on the log2 axis, beyond a visible gap."""
    left = data["panel"] == "left"
    zero = left & (data["series"] == "ours") & (data["num_persistent"] == 0)
    positive = data.loc[left & (data["num_persistent"] > 0), "x"]
    data.loc[zero, "x"] = positive.min() - ZERO_GAP if not positive.empty else 0.0
    return data


def _draw_left(ax: Axes, left: pd.DataFrame, unit: str) -> None:
    ax.set_title("Number of persistent vectors N")
    if left.empty:
        return _say_empty(ax, "no attention-only, all-attention or transformer runs")
    ours = left[left["series"] == "ours"]
    for variant, marker in LEFT_MARKERS.items():
        points = ours[ours["variant"] == variant].sort_values("x")
        if not points.empty:
            ax.errorbar(points["x"], points["mean"], yerr=points["std"].fillna(0), marker=marker,
                        capsize=3, label=variant.replace("_", "-") + " (ours)")
            _annotate_n(ax, points)
    for _, line in left[left["series"] == REFERENCE].iterrows():
        ax.axhline(line["mean"], color="gray", linestyle="--", label=f"{line['label']} (ours, n={int(line['n'])})")
        if not pd.isna(line["std"]):
            ax.axhspan(line["mean"] - line["std"], line["mean"] + line["std"], color="gray", alpha=0.15)
    for series, points in left[left["series"].str.startswith("published")].groupby("series"):
        ax.plot(points["x"], points["mean"], linestyle="none", marker="*", markersize=11,
                markerfacecolor="none", label=f"{series}: all-attention")
    _label_n_axis(ax, left)
    ax.margins(y=0.12)  # room for the n= labels above the highest point
    ax.set_ylabel(f"dev {unit}")
    ax.legend(fontsize=7)


def _label_n_axis(ax: Axes, left: pd.DataFrame) -> None:
    placed = left.dropna(subset=["x"]).drop_duplicates("x").sort_values("x")
    if placed.empty:  # only the transformer reference: no N axis to label
        ax.set_xticks([])
        return
    ax.set_xticks(placed["x"], [str(int(n)) for n in placed["num_persistent"]])
    ax.set_xlabel("N per head (log2 axis; N=0 is attention-only, left of the break)")
    if (placed["num_persistent"] == 0).any() and (placed["num_persistent"] > 0).any():
        ax.axvline(placed["x"].min() + ZERO_GAP / 2, color="lightgray", linestyle=":")
    ax.set_xlim(placed["x"].min() - 0.75, placed["x"].max() + 0.75)


def _draw_right(ax: Axes, right: pd.DataFrame, unit: str) -> None:
    ax.set_title("Integration of persistent vectors")
    if right.empty:
        return _say_empty(ax, "no runs of the integration variants")
    colors = [f"C{list(RIGHT_LABELS).index(v)}" for v in right["variant"]]
    std = right["std"].fillna(0)
    ax.bar(right["x"], right["mean"], yerr=std, capsize=3, color=colors)
    ax.set_xticks(right["x"], [label.replace(" ", "\n", 1) for label in right["label"]], fontsize=8)
    _annotate_n(ax, right)
    low, high = (right["mean"] - std).min(), (right["mean"] + std).max()
    pad = 0.15 * (high - low) if high > low else 0.05 * abs(high) or 0.1
    ax.set_ylim(low - pad, high + 2 * pad)  # bars start at the axis floor: differences are the point
    ax.set_ylabel(f"dev {unit}")


def _say_empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", transform=ax.transAxes)


def _annotate_n(ax: Axes, points: pd.DataFrame) -> None:
    for x, mean, std, n in zip(points["x"], points["mean"], points["std"].fillna(0), points["n"]):
        ax.annotate(f"n={int(n)}", (x, mean + std), xytext=(0, 3), textcoords="offset points",
                    ha="center", fontsize=7)


def _caption(data: pd.DataFrame, with_published: bool) -> str:
    dataset, unit = data["dataset"].iloc[0], data["unit"].iloc[0]
    text = (f"{dataset}: dev {unit} of each run's final evaluation. Points and bars: mean over seeds; error bars: "
            f"one standard deviation; n: seeds. ")
    if (data["series"] == REFERENCE).any():
        text += "Dashed line and band: the transformer baseline (mean ± std). "
    if data["series"].str.startswith("published").any():
        text += (f"Open stars: published dev {unit} of the authors' all-attention model at its N (source in the "
                 "legend); the paper's Figure 2 values are not available as numbers.")
    elif with_published:
        text += f"No published dev {unit} is known for {dataset} (the paper's Figure 2 values are not available)."
    else:
        text += "Published numbers not drawn."
    return textwrap.fill(text, width=170)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.figure2", description=__doc__.splitlines()[0])
    add_inputs_argument(parser)
    parser.add_argument("--out-dir", type=Path, default=Path("results/figures"), help="default results/figures")
    parser.add_argument("--published", action=argparse.BooleanOptionalAction, default=True,
                        help="overlay published numbers (default on)")
    args = parser.parse_args(argv)
    data = figure2_data(load_runs(args.inputs, **selection(args)), load_published() if args.published else None)
    for path in write_figure2(data, args.out_dir, args.published):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
