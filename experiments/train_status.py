"""status.json as the trainer reports it (DESIGN §4): state, stage, step, attempt and heartbeat."""
from __future__ import annotations

from experiments.distributed import DistContext
from experiments.run_dir import RunDir


class StatusWriter:
    """Rewrites status.json (rank 0) and remembers this attempt's number and last state."""

    def __init__(self, run_dir: RunDir, ctx: DistContext):
        self.run_dir, self.ctx = run_dir, ctx
        self.attempt = 1
        """This attempt's number, counted by `next_attempt`."""
        self.last_state: str | None = None
        """The state last written by this attempt (PENDING, RUNNING, DONE, ...), None before the first."""
        self.note: str | None = None
        """What this attempt's status should say beside its state (e.g. an inexact resume: its caches
        started empty); written as `note` with every state of this attempt, and only of this attempt."""

    def next_attempt(self) -> int:
        """Count this attempt: one more than the attempt status.json holds (0 when there is none)."""
        self.attempt = int(self.run_dir.read_status().get("attempt") or 0) + 1
        return self.attempt

    def write(self, state: str, stage: str | None, step: int) -> None:
        """Write `state` at `step`; a `stage` of None keeps the stage written before."""
        self.last_state = state
        if self.ctx.is_main:
            fields = {"step": step, "attempt": self.attempt, "note": self.note}
            if stage is not None:
                fields["stage"] = stage
            self.run_dir.write_status(state, **fields)
