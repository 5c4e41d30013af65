"""The command line:  python -m experiments.data prepare NAME [options]

One subcommand per registered dataset (registry.py); every one takes --out
(default: data/<name> under the project root) and --force. Warnings (e.g. a
source not checked against its pinned sha256) are printed on stderr once the
corpus is in place; errors are one line, exit status 2 (experiments/cli.py).
An --out that is, holds or lies in a source the dataset reads is refused, --force
or not: replacing it would delete the user's input.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from experiments.cli import ArgumentParser, folder
from experiments.data.registry import datasets, get
from experiments.data.corpus import PROJECT_ROOT
from experiments.data.format import SPLITS
from experiments.data.publish import prepare_into
from model.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m experiments.data", description="Prepare corpora for training.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = commands.add_parser("prepare", help="prepare a corpus").add_subparsers(
        dest="name", required=True, metavar="NAME", title="corpora")
    for dataset in datasets().values():
        sub = names.add_parser(dataset.name, help=dataset.help)
        dataset.add_arguments(sub)
        sub.add_argument("--out", type=folder, help="output directory (default: data/<name> under the project root)")
        sub.add_argument("--force", action="store_true", help="replace existing data at --out")
    return parser


def default_out(args: argparse.Namespace) -> Path:
    dataset = get(args.name)
    return PROJECT_ROOT / "data" / (dataset.default_out(args) if dataset.default_out else args.name)


def refuse_source_overlap(out: Path, sources: Sequence[Path]) -> None:
    """Raises UserError if `out` is, holds or lies inside one of `sources` (symlinks resolved): --force
    would delete the source, and the scratch folder beside `out` would land among the user's files."""
    real_out = out.resolve()
    for source in sources:
        real = source.resolve()
        relation = ("is" if real_out == real else "lies inside" if real in real_out.parents
                    else "holds" if real_out in real.parents else None)
        if relation:
            raise UserError(f"--out {out} {relation} the source {source}; choose an --out outside it")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out) if args.out else default_out(args)
    if out.is_symlink():  # e.g. data/enwik8 -> a scratch disk: prepare there; replacing the link would move the data
        out = Path(os.path.realpath(out))
    dataset = get(args.name)
    refuse_source_overlap(out, dataset.source_paths(args))  # before refuse_existing's advice, and any reading
    meta, warnings = prepare_into(out, args.name, lambda work: dataset.prepare(args, work), args.force,
                                  source=getattr(args, "source", None) or args.name)
    sizes = " / ".join(f"{split} {meta['sizes'][split]:,}" for split in SPLITS)
    floor = f", entropy floor {meta['entropy_floor_bpc']:.4f} bpc" if "entropy_floor_bpc" in meta else ""
    print(f"prepared {args.name} in {out}: {meta['level']} level, vocabulary {meta['vocab_size']:,}, "
          f"tokens {sizes}{floor}")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
