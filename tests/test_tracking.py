"""Live tracking (experiments/tracking.py): the `log:` section, and TensorBoard and W&B
following a run through a requeue with one value per step, read back with each tool's own format."""
from __future__ import annotations

import importlib
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest
import yaml

from experiments import checkpoint
from experiments.metrics import read_metrics
from experiments.run_config import load_run_config
from model.errors import ConfigError, UserError
from tests.conftest import PROJECT_ROOT
from tests.helpers import prepare_lexicon, tiny_config

STEPS, EVAL_EVERY = 300, 25


def require(module: str) -> ModuleType:
    """Import an optional tracking package, or skip (fail under CI=true, where tests/run.sh installs it)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        reason = f"{module} is not installed ({err}); pip install -r requirements-tracking.txt"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI must have it")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return prepare_lexicon(tmp_path_factory.mktemp("lexicon") / "lexicon")


def tracked_config(tmp_path: Path, corpus: Path, log: dict) -> Path:
    """A run long enough to be stopped part-way, with the `log:` section `log`."""
    path = tiny_config(tmp_path, corpus, train={"steps": STEPS, "checkpoint_every": 10, "eval_every": EVAL_EVERY})
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "log": log}))
    return path


def train(config: Path, run_dir: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "experiments.train", str(config), "--run-dir", str(run_dir), *extra],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _last_step(run_dir: Path) -> int:
    """The last step recorded so far; -1 before the first record (the file may exist empty)."""
    path = run_dir / "metrics.jsonl"
    records = read_metrics(path) if path.exists() else []
    return records[-1]["step"] if records else -1


def requeued_run(config: Path, run_dir: Path, env: dict[str, str]) -> None:
    """Stop the run by SIGTERM part-way, drop its newest checkpoint (as if a kill had come after
    steps recorded past the one before), resume it to the end: the resumed attempt
    records again steps the first one recorded."""
    first = train(config, run_dir, env)
    deadline = time.time() + 180
    while first.poll() is None and time.time() < deadline:
        if _last_step(run_dir) >= 35:
            first.send_signal(signal.SIGTERM)
            break
        time.sleep(0.01)
    _, stderr = first.communicate(timeout=180)
    assert first.returncode == 128 + signal.SIGTERM, stderr
    newest = checkpoint.complete_checkpoints(run_dir / "checkpoints")[0]
    for file in newest.iterdir():
        file.unlink()
    newest.rmdir()
    second = train(config, run_dir, env)
    _, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    assert "resumed from step" in stderr


def test_log_section_is_checked_and_left_out_of_the_run_id(corpus, tmp_path):
    config = tiny_config(tmp_path, corpus)
    plain = load_run_config(config)
    tracked = load_run_config(config, ["log.tensorboard=true", "log.wandb={project: p, mode: offline}"])
    assert tracked.log.tensorboard and tracked.log.wandb.mode == "offline" and not plain.log.tensorboard
    assert tracked.run_id == plain.run_id
    for override, field in (("log.wandb={project: p, mode: sometimes}", "log.wandb.mode"),
                            ("log.wandb={mode: offline}", "log.wandb.project"),
                            ("log.wandb={project: ' '}", "log.wandb.project"),
                            ("log.tensorbord=true", "log.tensorbord"),
                            ("log.tensorboard=1", "log.tensorboard")):
        with pytest.raises(ConfigError, match=re.escape(field)):
            load_run_config(config, [override])


@pytest.mark.parametrize("option, package", [("log.tensorboard=true", "tensorboard"),
                                             ("log.wandb={project: p, mode: offline}", "wandb")])
def test_an_enabled_tracker_that_is_not_installed_is_a_one_line_error(corpus, tmp_path, option, package):
    hidden = tmp_path / "hidden" / package
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": f"{hidden.parent}{os.pathsep}{PROJECT_ROOT}"}
    proc = train(tiny_config(tmp_path, corpus), tmp_path / "run", env, "--set", option)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in stderr, stderr
    assert stderr.splitlines()[-1] == (f"error: {option.split('=')[0]} is enabled but {package} is not installed: "
                                       "pip install -r requirements-tracking.txt")
    assert yaml.safe_load((tmp_path / "run" / "status.json").read_text())["state"] == "FAILED"


def test_tensorboard_scalars_of_a_requeued_run_read_back_once_per_step(corpus, tmp_path):
    require("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # optional: after require

    run_dir = tmp_path / "run"
    requeued_run(tracked_config(tmp_path, corpus, {"tensorboard": True}), run_dir, dict(os.environ))
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one file per attempt
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    records = read_metrics(run_dir / "metrics.jsonl")
    for split, field in (("train", "bpc"), ("train", "lr"), ("val_partial", "loss")):
        expected = [r for r in records if r["split"] == split]
        scalars = events.Scalars(f"{split}/{field}")
        assert [s.step for s in scalars] == [r["step"] for r in expected]
        assert [s.value for s in scalars] == pytest.approx([r[field] for r in expected], rel=1e-6)
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, STEPS + 1))


def wandb_records(path: Path) -> Iterator[object]:
    """The protobuf records of a W&B transaction log (.wandb): LevelDB's log format after a
    7-byte W&B header; 32 KiB blocks of chunks, each with a 7-byte header (crc, length, type)."""
    from wandb.proto import wandb_internal_pb2  # optional: callers require("wandb") first

    data, block, position, pending = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B", path
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def test_wandb_follows_a_requeued_run_as_one_run_without_repeated_steps(corpus, tmp_path):
    require("wandb")
    run_dir, wandb_dir = tmp_path / "run", tmp_path / "wandb-home"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true",
           "WANDB_CONFIG_DIR": str(wandb_dir / "config"), "WANDB_CACHE_DIR": str(wandb_dir / "cache"),
           "WANDB_DATA_DIR": str(wandb_dir / "data")}
    config = tracked_config(tmp_path, corpus, {"wandb": {"project": "harness-test", "mode": "offline"}})
    requeued_run(config, run_dir, env)
    run_id = load_run_config(config).run_id
    files = sorted(wandb_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 2, list(wandb_dir.rglob("*.wandb"))  # one per attempt, both for the same W&B run
    rows = []
    for file in files:
        records = list(wandb_records(file))
        assert {r.run.run_id for r in records if r.WhichOneof("record_type") == "run"} == {run_id}
        rows += [r.history for r in records if r.WhichOneof("record_type") == "history"]
    steps = [row.step.num for row in rows]
    assert steps == sorted(set(steps)), "a step was logged twice"
    logged = {(row.step.num, "/".join(item.nested_key) or item.key): float(item.value_json)
              for row in rows for item in row.item}
    records = read_metrics(run_dir / "metrics.jsonl")
    for split, field in (("train", "bpc"), ("val_partial", "loss")):
        expected = {r["step"]: r[field] for r in records if r["split"] == split}
        got = {step: value for (step, key), value in logged.items() if key == f"{split}/{field}"}
        assert sorted(got) == sorted(expected)
        assert [got[s] for s in sorted(got)] == pytest.approx([expected[s] for s in sorted(expected)], rel=1e-9)


KEY = "0123456789abcdef" * 3
"""A key of a format wandb accepts (40+ letters, digits or underscores)."""
NO_KEY = ("log.wandb.mode is online but no W&B API key is set (WANDB_API_KEY or `wandb login`); "
          "use log.wandb.mode: offline to log locally")


@pytest.fixture
def no_wandb_login(tmp_path, monkeypatch) -> Path:
    """A home without W&B credentials or settings (the returned folder), and no W&B variables."""
    home = tmp_path / "home"
    home.mkdir()
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_MODE", "WANDB_CONFIG_DIR",
                 "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    return home


def wandb_run(corpus: Path, tmp_path: Path, mode: str | None):
    mode_text = "null" if mode is None else mode
    return load_run_config(tiny_config(tmp_path, corpus), [f"log.wandb={{project: p, mode: {mode_text}}}"])


def test_wandb_online_without_an_api_key_is_refused_before_the_run_directory_is_made(corpus, tmp_path,
                                                                                       no_wandb_login):
    run_dir = tmp_path / "run"
    proc = train(tiny_config(tmp_path, corpus), run_dir, dict(os.environ), "--set",
                 "log.wandb={project: p, mode: online}")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in stderr, stderr
    assert stderr.splitlines()[-1] == f"error: {NO_KEY}"
    assert not run_dir.exists()


@pytest.mark.parametrize("where", ["WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "~/.netrc", "~/_netrc", "$NETRC",
                                   "netrc default entry", "settings api_key", "self-hosted netrc",
                                   "self-hosted by settings", "forge netrc"])
def test_wandb_online_starts_with_a_key_where_wandb_finds_one(corpus, tmp_path, no_wandb_login, monkeypatch, where):
    from experiments.tracking import check_wandb_login

    netrc_line = f"machine api.wandb.ai login user password {KEY}\n"
    if where in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.setenv(where, KEY)
    elif where in ("~/.netrc", "~/_netrc"):
        (no_wandb_login / where[2:]).write_text(netrc_line)
    elif where == "$NETRC":
        (tmp_path / "elsewhere").write_text(netrc_line)
        monkeypatch.setenv("NETRC", str(tmp_path / "elsewhere"))
    elif where == "netrc default entry":
        (no_wandb_login / ".netrc").write_text(f"default login user password {KEY}\n")
    elif where == "forge netrc":  # where wandb 0.31 saves the key of W&B's cloud
        (no_wandb_login / ".netrc").write_text(f"machine api.forge.coreweave.com login user password {KEY}\n")
    elif where.startswith("self-hosted"):
        (no_wandb_login / ".netrc").write_text(f"machine wandb.example.com:8080 login user password {KEY}\n")
        if where == "self-hosted netrc":
            monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com:8080")
        else:  # `wandb login --host` saves the host in the settings file
            (no_wandb_login / ".config" / "wandb").mkdir(parents=True)
            (no_wandb_login / ".config/wandb/settings").write_text("[default]\nbase_url = https://wandb.example.com:8080\n")
    else:
        monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
        (tmp_path / "wandb-config").mkdir()
        (tmp_path / "wandb-config" / "settings").write_text(f"[default]\napi_key = {KEY}\n")
    check_wandb_login(wandb_run(corpus, tmp_path, "online"))


@pytest.mark.parametrize("netrc_text", [None, "", f"machine api.wandb.ai login user password {KEY}\n",
                                        "machine wandb.example.com login user\n", "machine ... unparsable \"\n"])
def test_wandb_online_without_a_key_for_its_host_is_refused(corpus, tmp_path, no_wandb_login, monkeypatch,
                                                            netrc_text):
    from experiments.tracking import check_wandb_login

    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")  # the api.wandb.ai entry is another host's
    monkeypatch.setenv("WANDB_API_KEY", "")  # set but empty: wandb ignores it
    if netrc_text is not None:
        (no_wandb_login / ".netrc").write_text(netrc_text)
    with pytest.raises(UserError) as refused:
        check_wandb_login(wandb_run(corpus, tmp_path, "online"))
    assert str(refused.value) == NO_KEY


@pytest.mark.parametrize("where", ["WANDB_API_KEY", "~/.netrc"])
def test_wandb_online_with_a_key_wandb_refuses_is_refused_before_the_run(corpus, tmp_path, no_wandb_login,
                                                                          monkeypatch, where):
    """A 3-character key passed the preflight, then wandb.init refused it: a traceback, the run FAILED
    (a fresh-user finding). wandb's own format check now runs in the preflight."""
    from experiments.tracking import check_wandb_login

    if where == "WANDB_API_KEY":
        monkeypatch.setenv("WANDB_API_KEY", "abc")
    else:
        (no_wandb_login / ".netrc").write_text("machine api.wandb.ai login user password abc\n")
    with pytest.raises(UserError, match="is not one wandb accepts: API key must have 40"):
        check_wandb_login(wandb_run(corpus, tmp_path, "online"))


def test_wandb_modes_that_stay_local_need_no_key(corpus, tmp_path, no_wandb_login, monkeypatch):
    from experiments.tracking import check_wandb_login

    for mode in ("offline", "disabled"):
        check_wandb_login(wandb_run(corpus, tmp_path, mode))
    check_wandb_login(load_run_config(tiny_config(tmp_path, corpus)))  # no W&B at all
    with pytest.raises(UserError, match=re.escape("log.wandb.mode is null (W&B default: online) but no W&B API key")):
        check_wandb_login(wandb_run(corpus, tmp_path, None))  # null: W&B's default, online here
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_wandb_login(wandb_run(corpus, tmp_path, None))
    monkeypatch.delenv("WANDB_MODE")
    (no_wandb_login / ".config" / "wandb").mkdir(parents=True)
    (no_wandb_login / ".config/wandb/settings").write_text("[default]\nmode = offline\n")
    check_wandb_login(wandb_run(corpus, tmp_path, None))
