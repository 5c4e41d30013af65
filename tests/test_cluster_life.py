"""Issue 10 ("cluster life"): one test per case, named test_caseNN_...; each stands for its kind."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

from experiments.config import build
from experiments.run_config import RunConfig, load_run_config
from model.errors import ConfigError
from slurm.profile import ClusterProfile
from tests.conftest import PROJECT_ROOT
from tests.test_config import VALID

FIXTURE_RUNS = Path(__file__).parent / "fixtures" / "runs" / "fig2_demo"


def _run_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(VALID)
    return path


# ---------------------------------------------------------------- case 5: NaN and infinity


def _float_fields(cls: type, prefix: str = "") -> list[str]:
    """Dotted paths of every field typed float, float | None or list[float] (as `path[0]`),
    nested dataclasses included."""
    found = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint = hints[f.name]
        options = [o for o in typing.get_args(hint) if o is not type(None)] or [hint]
        if typing.get_origin(hint) is list:
            options = []
            if typing.get_args(hint) == (float,):
                found.append(f"{prefix}{f.name}[0]")
        path = f"{prefix}{f.name}"
        if float in options:
            found.append(path)
        for option in options:
            if dataclasses.is_dataclass(option):
                found += _float_fields(option, f"{path}.")
    return found


def _override(field: str, value: str) -> list[str]:
    """--set lines putting `value` into `field` (a list field's first item, the rest valid)."""
    if not field.endswith("[0]"):
        return [f"{field}={value}"]
    extra = ["optim.name=adam"] if field == "optim.adam_betas[0]" else []
    return extra + [f"{field[:-3]}=[{value}, 0.5]"]


RUN_FLOAT_FIELDS = _float_fields(RunConfig)
PROFILE_FLOAT_FIELDS = _float_fields(ClusterProfile)
NON_FINITE = [".nan", ".inf", "-.inf", ".NaN", "+.inf"]


def test_case05_the_sweep_finds_the_float_fields():
    # The sweep below is only as good as its introspection: it must see the nested sections.
    assert {"optim.lr", "optim.clip", "model.dropout", "model.adaptive_span.loss_coef",
            "train.finetune_lr_scale", "optim.adam_betas[0]"} <= set(RUN_FLOAT_FIELDS)
    assert PROFILE_FLOAT_FIELDS == ["achieved_tflops_per_gpu"]


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("field", RUN_FLOAT_FIELDS)
def test_case05_every_run_config_float_field_refuses_nan_and_inf(tmp_path, field, value):
    with pytest.raises(ConfigError) as info:
        load_run_config(_run_yaml(tmp_path), _override(field, value))
    assert info.value.field == field and "finite" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("field", PROFILE_FLOAT_FIELDS)
def test_case05_every_cluster_profile_float_field_refuses_nan_and_inf(field, value):
    with pytest.raises(ConfigError, match=f"^{field}: must be a finite number"):
        build(ClusterProfile, {"partition": "gpu", field: value})


@pytest.mark.parametrize("override,field", [
    ("optim.clip=.nan", "optim.clip"),  # used to disable clipping silently
    ("optim.lr=.nan", "optim.lr"),  # used to be accepted
    ("optim.lr=.inf", "optim.lr"),
    ("model.adaptive_span.loss_coef=.nan", "model.adaptive_span.loss_coef"),  # "cannot convert float NaN to integer"
    ("optim.lr=1" + "0" * 400, "optim.lr"),  # an int too large for a float: OverflowError before
])
def test_case05_reported_cases_are_one_line_errors(tmp_path, override, field):
    with pytest.raises(ConfigError) as info:
        load_run_config(_run_yaml(tmp_path), [override])
    assert str(info.value).startswith(f"{field}: must be a finite number")


def test_case05_profile_with_nan_throughput_dry_run_is_one_line(tmp_path):
    """`slurm.submit --dry-run` with a cluster profile whose throughput is .nan: exit 2, one line."""
    clusters = tmp_path / "clusters"
    clusters.mkdir()
    (clusters / "nanny.yaml").write_text("partition: gpu\nachieved_tflops_per_gpu: .nan\n")
    (tmp_path / "base.yaml").write_text(VALID)
    (tmp_path / "grid.yaml").write_text("base: base.yaml\nname: g\nseeds: [0]\n")
    script = textwrap.dedent(f"""
        import slurm.profile
        slurm.profile.CLUSTERS_DIR = __import__("pathlib").Path({str(clusters)!r})
        from experiments.cli import run_cli
        from slurm.submit import main
        run_cli(main, [{str(tmp_path / 'grid.yaml')!r}, "--cluster", "nanny", "--dry-run",
                       "--root", {str(tmp_path / 'runs')!r}])
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert "achieved_tflops_per_gpu: must be a finite number, got nan" in proc.stderr


# ---------------------------------------------------------------- case 11: files honour the umask


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it after."""
    previous = os.umask(0o077)
    os.umask(previous)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o002], ids=["umask022", "umask002"])
def test_case11_run_files_and_checkpoints_get_the_users_umask(tmp_path, umask, mask):
    import torch

    from experiments import checkpoint
    from experiments.atomic import atomic_write_text, current_umask
    from experiments.distributed import DistContext
    from experiments.run_dir import RunDir

    umask(mask)
    assert current_umask() == mask
    run = RunDir(tmp_path / "run")
    atomic_write_text(run.config, "name: x\n")  # how experiments.train writes config.yaml
    run.write_status("RUNNING", step=1)
    run.write_eval({"unit": "bpc"})
    ckpt = checkpoint.save(run.checkpoints, 1, {"model": {}}, {"rng": torch.zeros(1)},
                           DistContext(rank=0, world_size=1, device=torch.device("cpu")))
    plain = tmp_path / "plain"
    plain.write_text("x")  # what any other program would create
    expected = stat.S_IMODE(plain.stat().st_mode)
    assert expected == 0o666 & ~mask
    written = [run.config, run.status_file, run.eval_file, *sorted(ckpt.iterdir())]
    assert len(written) >= 5
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {p.name: oct(expected) for p in written}
