"""The trainer's progress: every counter the next step depends on, saved in each checkpoint."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping


@dataclass
class TrainState:
    """Progress of one run, the same on every rank; a checkpoint's "state" entry.

    The running sums of the current log interval are here too, so that a resumed
    run writes the same train records as an uninterrupted one.
    """

    step: int = 0
    """Optimizer updates done (over all stages)."""
    offset: int = 0
    """Token offset, within every row, of the next training block."""
    epoch: int = 0
    """Times the training data was exhausted; seeds the random restart offset."""
    tokens: int = 0
    """Training tokens consumed, over all ranks."""
    log_loss: float = 0.0
    """Sum of the mean train losses (nats per token) of the current log interval."""
    log_steps: int = 0
    """Updates in the current log interval."""
    last_lr: float | None = None
    """Learning rate of the latest update; None before the first."""
    tokens_per_s: float | None = None
    """Training throughput of the latest log interval (eval.json reports it); None before the first."""

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint form: unset optional fields are left out, as checkpoints always had them."""
        return {name: value for name, value in asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainState:
        """Read a checkpoint's "state"; fields it lacks keep their defaults. TypeError on unknown keys."""
        return cls(**data)
