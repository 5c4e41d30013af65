"""Optional live tracking: the metrics records as TensorBoard scalars and in Weights & Biases.

metrics.jsonl stays the source of truth (DESIGN §4): rank 0 hands each record to
the trackers right after writing its line. Neither package is a dependency of the
harness: both come from requirements-tracking.txt and are imported only when the
`log:` section (experiments/log_config.py) enables them; enabled but not installed
is a one-line UserError before training starts.

A scalar is named '<split>/<field>' ('train/bpc', 'val_partial/loss', ...) and
plotted against the step. A resumed attempt recomputes the steps after its
checkpoint, which the attempt before may have recorded already; each tracker
keeps one value per step in its own way:
- TensorBoard: each attempt writes a new event file in <run_dir>/tensorboard/
  that opens with a purge at the step after its checkpoint, so TensorBoard drops
  the earlier attempt's values from there on (the last written wins, as in
  metrics.jsonl).
- W&B: every attempt continues the W&B run whose id is the run id
  (resume="allow"). W&B cannot rewrite a step, so a record is sent only if its
  step is past the last one of its split in metrics.jsonl when the attempt
  started (on CPU the values are identical anyway).

W&B online needs an API key; `check_wandb_login` looks for one before the run starts.
"""
from __future__ import annotations

import configparser
import importlib
import netrc
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, Protocol
from urllib.parse import urlsplit

from experiments.log_config import WandbConfig
from experiments.metrics import read_metrics
from experiments.run_config import RunConfig
from experiments.run_dir import RunDir
from model.errors import UserError

REQUIREMENTS = "requirements-tracking.txt"
NOT_SCALARS = ("step", "split", "attempt", "time")
"""Record fields that say where a value belongs rather than being one."""
WANDB_CLOUD = ("api.wandb.ai", "api.forge.coreweave.com", "forge.coreweave.com")
"""The hosts of W&B's cloud; wandb 0.31 finds its netrc entry under api.forge.coreweave.com or api.wandb.ai."""
WANDB_LOCAL_MODES = ("offline", "dryrun", "disabled")
"""W&B modes that never contact the server (the others need an API key)."""


class Tracker(Protocol):
    def log(self, record: Mapping[str, Any]) -> None:
        """Send one metrics record (DESIGN §4)."""

    def close(self, state: str | None) -> None:
        """End this attempt; `state` is the run's last status state (DONE, PENDING when stopped by a signal)."""


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """'<split>/<field>' -> value for every numeric field of a metrics record."""
    return {f"{record['split']}/{key}": float(value) for key, value in record.items()
            if key not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool)}


def _import(module: str, option: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{option} is enabled but {package} is not installed: "
                        f"pip install -r {REQUIREMENTS}") from None


def check_wandb_login(cfg: RunConfig) -> None:
    """UserError, before anything is written, when the run logs to W&B online and wandb would
    find no credentials (its wandb.init then fails at step 0, after queueing under SLURM).

    Decided from the environment and files alone (no import of wandb, no network; the key is not
    checked with the server), following wandb's own lookup (`wandb login --help`,
    https://docs.wandb.ai/models/ref/cli/wandb-login, and wandb 0.31's sdk/lib/wbauth): the
    WANDB_API_KEY or WANDB_IDENTITY_TOKEN_FILE variable, the api_key setting of the global
    settings file ($WANDB_CONFIG_DIR/settings, default ~/.config/wandb/settings; the workspace
    settings file in the run's wandb folder is not read), then the netrc file ($NETRC, else
    ~/.netrc, else ~/_netrc) entry for the server's host (WANDB_BASE_URL, else the settings
    file's base_url, else W&B's cloud). A null mode is W&B's default: WANDB_MODE, else the
    settings file's mode, else online."""
    if cfg.log.wandb is None:
        return
    settings = _wandb_settings()
    mode = cfg.log.wandb.mode or os.environ.get("WANDB_MODE") or settings.get("mode") or "online"
    if mode in WANDB_LOCAL_MODES:
        return
    found = _wandb_credentials(settings)
    if found is None:
        raise UserError(f"log.wandb.mode is {cfg.log.wandb.mode or 'null (W&B default: online)'} but no W&B API key "
                        "is set (WANDB_API_KEY or `wandb login`); use log.wandb.mode: offline to log locally")
    key, where = found
    problem = _wandb_key_problem(key) if key is not None else None
    if problem:
        raise UserError(f"the W&B API key of {where} is not one wandb accepts: {problem}")


def _wandb_key_problem(key: str) -> str | None:
    """wandb's own check of a key's format (wandb.init refuses the key by it), when wandb has one."""
    try:
        from wandb.sdk.lib.wbauth.validation import check_api_key  # wandb >= 0.2x; absent: not checked here
    except ImportError:
        return None
    return check_api_key(key)


def _wandb_settings() -> dict[str, str]:
    """The [default] section of W&B's global settings file (empty when it is missing or unreadable)."""
    folder = Path(os.environ.get("WANDB_CONFIG_DIR") or "~/.config/wandb").expanduser()
    parser = configparser.ConfigParser()
    try:
        parser.read(folder / "settings")
        return dict(parser.items("default"))
    except (OSError, configparser.Error):
        return {}


def _wandb_credentials(settings: Mapping[str, str]) -> tuple[str | None, str] | None:
    """(the API key, or None for an identity token file; where it was found) as wandb would find
    them for its server, or None when there are none."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"], "WANDB_API_KEY"
    if os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return None, "WANDB_IDENTITY_TOKEN_FILE"
    if settings.get("api_key"):
        return settings["api_key"], "W&B's settings file"
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or settings.get("base_url") or "https://api.wandb.ai").netloc
    machines = WANDB_CLOUD[:2] if host in WANDB_CLOUD else (host,)
    home_files = [Path(name).expanduser() for name in ("~/.netrc", "~/_netrc")]
    path = os.environ.get("NETRC") or next((file for file in home_files if file.exists()), home_files[0])
    try:
        entries = netrc.netrc(str(Path(path).expanduser()))
    except (OSError, netrc.NetrcParseError):  # wandb warns and reads no key from it
        return None
    keys = [(entries.authenticators(machine) or ("", "", ""))[2] for machine in machines]  # (login, account, key)
    key = next((k for k in keys if k), None)
    return None if key is None else (key, f"the netrc file {path}")


class TensorBoardTracker:
    """Event files in `log_dir`, one per attempt, flushed at every record like metrics.jsonl."""

    def __init__(self, log_dir: Path, resumed_step: int):
        tensorboard = _import("torch.utils.tensorboard", "log.tensorboard", "tensorboard")
        self.writer = tensorboard.SummaryWriter(str(log_dir), purge_step=resumed_step + 1)

    def log(self, record: Mapping[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=record["step"], walltime=record["time"])
        self.writer.flush()

    def close(self, state: str | None) -> None:
        self.writer.close()


class WandbTracker:
    """The W&B run with the run's id; its files go to WANDB_DIR if set, else to the run directory."""

    def __init__(self, cfg: WandbConfig, run: RunConfig, run_dir: RunDir):
        wandb = _import("wandb", "log.wandb", "wandb")
        self.logged = _last_steps(run_dir.metrics)
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, mode=cfg.mode, id=run.run_id, name=run.run_id,
                              group=run.grid or None, config=run.to_dict(), resume="allow",
                              dir=None if os.environ.get("WANDB_DIR") else str(run_dir.path),
                              # The log lines stay on stderr (the SLURM log) untouched.
                              settings=wandb.Settings(console="off"))

    def log(self, record: Mapping[str, Any]) -> None:
        if record["step"] > self.logged.get(record["split"], 0):
            self.run.log(scalars(record), step=record["step"])

    def close(self, state: str | None) -> None:
        if state == "PENDING":
            self.run.mark_preempting()  # shown as preempted; the next attempt resumes it
        self.run.finish(exit_code=0 if state == "DONE" else 1)


def _last_steps(metrics: Path) -> dict[str, int]:
    """split -> the last step recorded in metrics.jsonl (empty when there is none yet)."""
    records = read_metrics(metrics) if metrics.exists() else []
    return {record["split"]: record["step"] for record in records}  # sorted by step: the last one stays


class Trackers:
    """The trackers the run's `log:` section enables, for one attempt (rank 0 only)."""

    def __init__(self, trackers: list[Tracker] | None = None):
        self.trackers = trackers or []

    @classmethod
    def open(cls, cfg: RunConfig, run_dir: RunDir, resumed_step: int) -> Trackers:
        """Start the enabled trackers for an attempt resuming after step `resumed_step` (0 = from
        scratch). Raises UserError when an enabled tracker's package is not installed."""
        opened = cls()
        try:
            if cfg.log.tensorboard:
                opened.trackers.append(TensorBoardTracker(run_dir.path / "tensorboard", resumed_step))
            if cfg.log.wandb is not None:
                opened.trackers.append(WandbTracker(cfg.log.wandb, cfg, run_dir))
        except BaseException:
            opened.close(None)
            raise
        return opened

    def log(self, record: Mapping[str, Any]) -> None:
        for tracker in self.trackers:
            tracker.log(record)

    def close(self, state: str | None) -> None:
        for tracker in self.trackers:
            tracker.close(state)
        self.trackers = []
