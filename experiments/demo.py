"""The main job, end to end on a laptop:  python -m experiments.demo [--set key=value ...]

1. prepare the embedded `lexicon` corpus (once);
2. submit the demo grid (experiments/demo.yaml) through submitit's local executor
   and wait: the same path as `python -m slurm.submit ... --executor local`;
3. collect the runs, draw Figure 2 in miniature, and print the comparison table
   with each variant's distance to the corpus's exact entropy floor.
Finished runs are not redone: running the demo again only redraws.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from experiments.run_dir import PROJECT_ROOT
from model.errors import UserError, run_cli

DEMO_GRID = PROJECT_ROOT / "experiments" / "demo.yaml"


def prepare_corpus(path: Path) -> None:
    from experiments import data

    if not (path / "meta.json").exists():
        data.main(["prepare", "lexicon", "--out", str(path)])


def run_grid(overrides: Sequence[str], root: Path) -> list[Path]:
    """Submit the demo grid locally, wait, and return its run directories."""
    from experiments.grid import load_grid
    from slurm.profile import load_profile
    from slurm.submit import plan, print_table, submit_planned, wait_for

    grid = load_grid(DEMO_GRID, overrides=overrides)
    profile = load_profile("local")
    planned = plan(grid, root, profile, force=False)
    print_table(planned)
    jobs = submit_planned(root / grid.name, planned, profile, local=True, max_parallel=len(planned))
    if wait_for(jobs):
        raise UserError(f"some demo runs failed: see python -m slurm.status {DEMO_GRID} --tail")
    return grid.run_dirs(root)


def report(run_dirs: list[Path], out_dir: Path) -> None:
    """Figure 2, its CSV, and the comparison table (also written as markdown)."""
    from analysis.collect import collect_runs
    from analysis.figure2 import figure2_data, write_figure2
    from analysis.report import compare_variants, format_report
    from experiments.atomic import atomic_write_text

    runs = collect_runs(run_dirs)
    written = write_figure2(figure2_data(runs), out_dir, with_published=False)
    table = format_report(compare_variants(runs, baseline="transformer"), "markdown")
    atomic_write_text(out_dir / "comparison.md", table + "\n")
    print("\n" + table)
    print("\nwritten: " + ", ".join(str(p) for p in written + [out_dir / "comparison.md"]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override every demo run (e.g. train.steps=50 for a quick look)")
    parser.add_argument("--root", type=Path, default=PROJECT_ROOT / "runs", help="results root (default runs/)")
    parser.add_argument("--out-dir", type=Path, help="figure and table folder (default <root>/demo/report)")
    parser.add_argument("--data", type=Path, default=PROJECT_ROOT / "data" / "lexicon", help="lexicon corpus folder")
    args = parser.parse_args(argv)
    prepare_corpus(args.data)
    run_dirs = run_grid([f"data.path={args.data}", *args.set], args.root)
    report(run_dirs, args.out_dir or args.root / "demo" / "report")
    return 0


if __name__ == "__main__":
    run_cli(main)
