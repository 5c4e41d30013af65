"""python -m experiments.data prepare NAME [options]  (the command is in command.py)."""
from experiments.cli import run_cli
from experiments.data.command import main

run_cli(main)
