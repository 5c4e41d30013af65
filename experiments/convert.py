"""Import a checkpoint of the authors' released code into this project's layout:

    python -m experiments.convert AUTHORS.pt --config CONFIG.yaml --out OURS.pt

The key mapping is `model.convert_official`'s; this command adds the run config
(for the geometry) and the atomic write of `{"model": state_dict}`.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch

from experiments.atomic import atomic_write
from experiments.cli import run_cli
from experiments.run_config import load_run_config
from model.convert_official import convert, read_their_checkpoint


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.convert", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path, help="the authors' checkpoint (.pt)")
    parser.add_argument("--config", required=True, help="our run config of the same geometry")
    parser.add_argument("--out", required=True, type=Path, help="converted file to write")
    args = parser.parse_args(argv)
    cfg = load_run_config(args.config)
    state = convert(read_their_checkpoint(args.checkpoint), cfg.model)
    atomic_write(args.out, lambda f: torch.save({"model": state}, f))
    print(f"converted {len(state)} tensors into {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
