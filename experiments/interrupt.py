"""SIGTERM / SIGUSR2 turned into "checkpoint at the next step boundary".

A signal handler runs between two bytecodes, possibly in the middle of an
optimizer step, so it only records the signal. The training loop checks the
flag after each update, writes a checkpoint, then forwards the signal: to the
handler that was installed before (submitit's, which requeues the SLURM job and
exits) or, with no Python handler before, by stopping the run so the command
exits with 128 + signal number.
"""
from __future__ import annotations

import signal
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


class InterruptFlag:
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

    @property
    def pending(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "none"

    def forward(self) -> bool:
        """Hand the signal on. True when the run must stop, False to carry on."""
        signum, self.signum = self.signum, None
        previous = self._previous.get(signum)
        if callable(previous):
            self.__exit__()
            previous(signum, self._frame)  # submitit's USR2 handler requeues and exits here
            self.__enter__()
            return False
        self.stopped_by = signum
        return True
