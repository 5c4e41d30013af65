"""The trainer's metrics records (DESIGN §4) and the log lines beside them.

Rank 0 appends each record to metrics.jsonl, the source of truth about a run's
curves, then hands it to the trackers the `log:` section enables
(experiments/tracking.py). A train record covers the updates since the previous one (the log
interval): its loss is their mean, its throughput their wall time.

The updates' losses stay on the device (a 0-dim tensor each) until a train record or a
checkpoint needs them: reading one makes the host wait for the device, which must be
free to run ahead. So a NaN or inf loss is found when they are read, up to
`train.log_every` updates late (NonFiniteLoss names the update it happened at); a
checkpoint reads them first, so none is written after a non-finite loss.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch

from experiments.distributed import DistContext
from experiments.evaluation import unit_value
from experiments.run_config import RunConfig
from experiments.run_dir import RunDir
from experiments.tracking import Trackers
from experiments.train_state import TrainState
from experiments.train_step import NonFiniteLoss

log = logging.getLogger("train")


class MetricsWriter:
    """Writes the train and val_partial records of one attempt (rank 0; other ranks only log)."""

    def __init__(self, cfg: RunConfig, run_dir: RunDir, ctx: DistContext, unit: str):
        self.cfg, self.run_dir, self.ctx, self.unit = cfg, run_dir, ctx, unit
        self.attempt = 1
        """Attempt number written into every record."""
        self.trackers = Trackers()
        self._interval_seconds = 0.0  # wall time of the current log interval: not checkpointed, as it is not reproducible
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, mean loss on the device) not yet read

    def open(self, attempt: int, state: TrainState) -> None:
        """Start the records of attempt number `attempt`, resumed at `state`: opens the enabled
        trackers on rank 0 (UserError when one's package is not installed)."""
        self.attempt = attempt
        if self.ctx.is_main:
            self.trackers = Trackers.open(self.cfg, self.run_dir, state.step)

    def close(self, status: str | None) -> None:
        """End this attempt's tracking; `status` is the run's last status state (DONE, PENDING, ...)."""
        self.trackers.close(status)

    def add_update(self, state: TrainState, loss: torch.Tensor | float, seconds: float) -> None:
        """Count update `state.step` (mean nll `loss` in nats, a device tensor not read here;
        `seconds` of wall time) in the log interval."""
        self._pending.append((state.step, torch.as_tensor(loss, dtype=torch.float64)))
        state.log_steps += 1
        self._interval_seconds += seconds

    def read_losses(self, state: TrainState) -> None:
        """Add the losses not read yet to `state.log_loss`, in update order (the same float sums
        as reading each at its update). The wait for the device counts in the interval's time.
        Raises NonFiniteLoss when one is NaN or inf."""
        if not self._pending:
            return
        started = time.perf_counter()
        values = torch.stack([loss for _, loss in self._pending]).tolist()
        self._interval_seconds += time.perf_counter() - started
        steps = [step for step, _ in self._pending]
        self._pending = []
        for step, value in zip(steps, values):
            if not math.isfinite(value):
                raise NonFiniteLoss(f"non-finite training loss {value} at step {step} (read at step {state.step}: "
                                    f"losses are read every train.log_every updates and before each checkpoint)")
            state.log_loss += value

    def write_train(self, state: TrainState, span: tuple[float, float]) -> None:
        """The interval's train record and log line (`span`: mean and max attention span); starts the next interval."""
        self.read_losses(state)
        cfg, unit, seconds = self.cfg.train, self.unit, self._interval_seconds
        loss = state.log_loss / state.log_steps
        tokens_per_s = state.log_steps * cfg.batch_size * cfg.block_size / seconds if seconds else 0.0
        record = {"split": "train", "loss": loss, unit: unit_value(loss, unit), "lr": state.last_lr,
                  "ms_per_step": 1000 * seconds / state.log_steps, "tokens_per_s": tokens_per_s,
                  "span_mean": span[0], "span_max": span[1]}
        self._write(state, record)
        state.log_loss, state.log_steps, self._interval_seconds = 0.0, 0, 0.0
        state.tokens_per_s = tokens_per_s
        log.info("step %d/%d | loss %.4f | %s %.4f | lr %.3g | %.0f tok/s | span %.0f/%.0f",
                 state.step, cfg.steps + cfg.finetune_steps, loss, unit, record[unit], state.last_lr, tokens_per_s,
                 *span)

    def write_val_partial(self, state: TrainState, loss: float, tokens: int) -> None:
        """The partial validation's record and log line: mean nll `loss` (nats) over `tokens` tokens."""
        record = {"split": "val_partial", "loss": loss, self.unit: unit_value(loss, self.unit), "eval_tokens": tokens}
        self._write(state, record)
        log.info("step %d | val_partial loss %.4f | %s %.4f", state.step, loss, self.unit, record[self.unit])

    def _write(self, state: TrainState, record: dict[str, Any]) -> None:
        if self.ctx.is_main:
            base = {"step": state.step, "tokens": state.tokens, "attempt": self.attempt, "time": time.time()}
            record = {**base, **record}
            self.run_dir.append_metrics(record)
            self.trackers.log(record)
