"""SIGTERM / SIGUSR2 turned into "checkpoint at the next step boundary".

A signal handler runs between two bytecodes, possibly in the middle of an
optimizer step, so it only records the signal. The training loop checks the
flag after each update, writes a checkpoint, then acts on the signal: SIGUSR2
goes to the handler installed before (submitit's, which requeues the SLURM job
and exits); otherwise the run stops and the command exits with 128 + signal
number. A later attempt resumes from that checkpoint.
"""
from __future__ import annotations

import signal
from types import FrameType

from experiments.distributed import DistContext

SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class InterruptFlag:
    """While entered, records SIGTERM and SIGUSR2 instead of acting on them; the handlers before are restored on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stopped_by: int | None = None
        self._previous: dict[int, object] = {}
        self._frame: FrameType | None = None

    def __enter__(self) -> "InterruptFlag":
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.signum, self._frame = signum, frame

    def agreed(self, ctx: DistContext) -> int | None:
        """The signal to stop at after this step, the same on every rank (a collective call):
        ranks receive a signal at different steps, and all must checkpoint the same one."""
        received = ctx.all_reduce_sum([float(self.signum == s) for s in SIGNALS])
        return next((s for s, count in zip(SIGNALS, received) if count > 0), None)

    def forward(self, signum: int) -> bool:
        """Hand `signum` (this step's signal, agreed by every rank) on. True when the run must stop."""
        self.signum = None
        previous = self._previous.get(signum)
        if signum == signal.SIGUSR2 and callable(previous):
            self.__exit__()
            previous(signum, self._frame)  # submitit's handler requeues the job and exits here
        # SIGTERM means SLURM is about to kill the job (scontrol requeue, preemption, scancel):
        # submitit's SIGTERM handler would carry on training into the SIGKILL, so stop instead.
        self.stopped_by = signum
        return True
