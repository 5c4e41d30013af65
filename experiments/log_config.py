"""The `log:` section of a run config: optional live tracking (experiments/tracking.py).

Left out of the run-id hash (run_config.NOT_HASHED): where curves are shown cannot
change results, so runs keep their ids whether tracking is on or off.

    log:
      tensorboard: true
      wandb: {project: all-attention, entity: my-team, mode: offline}
"""
from __future__ import annotations

from dataclasses import dataclass

from model.errors import ConfigError

WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class WandbConfig:
    """The `log.wandb:` section: the Weights & Biases project a run is logged to (its run id is the W&B id)."""

    project: str
    """W&B project name (required)."""
    entity: str | None = None
    """W&B team or user; null = the default entity of the logged-in account."""
    mode: str | None = None
    """'online', 'offline' (files under the run directory, or WANDB_DIR; upload later with `wandb sync`)
    or 'disabled'; null = W&B's own default (the WANDB_MODE environment variable, else online)."""

    def __post_init__(self) -> None:
        if not self.project.strip():
            raise ConfigError("project", "must name a W&B project, got an empty string")
        if self.entity is not None and not self.entity.strip():
            raise ConfigError("entity", "must name a W&B team or user, or be null")
        if self.mode is not None and self.mode not in WANDB_MODES:
            raise ConfigError("mode", f"must be {', '.join(WANDB_MODES)} or null, got {self.mode!r}")


@dataclass
class LogConfig:
    """The `log:` section: trackers fed the metrics records as they are written; all off by default."""

    tensorboard: bool = False
    """Write the records as TensorBoard scalars under <run_dir>/tensorboard/ (tags '<split>/<field>', x = step)."""
    wandb: WandbConfig | None = None
    """Log the records to Weights & Biases (same tags); null = off."""
