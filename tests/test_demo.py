"""The README's main job (experiments/demo.sh) at a reduced size."""
from __future__ import annotations

import os
import shutil
import subprocess

import pandas as pd

from tests.conftest import PROJECT_ROOT

OLD_RUN = PROJECT_ROOT / "tests" / "fixtures" / "runs" / "fig2_demo" / "transformer-n0-s1-e94e2119"


def test_demo_grid_end_to_end(tmp_path):
    # A finished run of the same grid made earlier with other settings: the demo's analysis
    # reads the runs its submission recorded, so this one is not pooled with them.
    shutil.copytree(OLD_RUN, tmp_path / "runs" / "demo" / OLD_RUN.name)
    env = {**os.environ, "DEMO_ROOT": str(tmp_path / "runs"), "DEMO_DATA": str(tmp_path / "lexicon")}
    cmd = ["bash", "experiments/demo.sh", "--set", "train.steps=20", "--set", "train.eval_every=10", "--set", "train.checkpoint_every=10",
           "--set", "train.log_every=10", "--set", "eval.max_tokens=2048"]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = tmp_path / "runs" / "demo" / "report"
    assert (report / "figure2.png").stat().st_size > 10_000
    assert (report / "figure2.pdf").exists()
    plotted = pd.read_csv(report / "figure2.csv")
    assert {"attention_only", "all_attention", "transformer", "attn_split", "single_head"} <= set(plotted["variant"])
    assert (plotted["n"] == 1).all(), plotted
    table = (report / "comparison.md").read_text()
    assert "floor" in table and "transformer" in table
    assert "| transformer (baseline) | 0 | 4 | 1 |" in table
    assert "demo: 8 submitted run(s) matching --set data.path=" in proc.stderr
    assert "8 of 8 runs finished" in proc.stdout

    again = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "8 done" in again.stdout and "0 to submit" in again.stdout


def test_demo_runs_differ_only_in_the_fields_the_demo_names():
    """Fixed depth and geometry: N, the variant and the FFN width are the only changes (experiments/demo.yaml)."""
    from experiments.grid import load_grid

    def flat(data, prefix=""):
        for key, value in data.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    runs = {cfg.name: dict(flat(cfg.to_dict())) for cfg in load_grid(PROJECT_ROOT / "experiments" / "demo.yaml").runs}
    reference = runs["all-attn-N128"]
    allowed = {"name", "model.variant", "model.num_persistent", "model.ffn_size"}
    for name, values in runs.items():
        differing = {k for k in reference.keys() | values.keys() if reference.get(k) != values.get(k)}
        assert differing <= allowed, (name, differing - allowed)
        assert values["model.num_layers"] == 4
    assert sorted(v["model.num_persistent"] for v in runs.values() if v["model.variant"] in ("all_attention", "attention_only")) == [0, 32, 128]
