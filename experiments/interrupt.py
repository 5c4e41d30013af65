"""SIGTERM / SIGUSR2 turned into "checkpoint at the next step boundary".

A signal handler runs between two bytecodes, possibly in the middle of an
optimizer step, so it only records the signal. The training loop checks the
flag after each update, writes a checkpoint, then acts on the signal: SIGUSR2
goes to the handler installed before (submitit's, which requeues the SLURM job
and exits); otherwise the run stops and the command exits with 128 + signal
number. A later attempt resumes from that checkpoint.

The time-limit signal is whatever SLURM was told to send (`--signal=SIG@N`):
USR2 by default, another one when a site sets submitit's SUBMITIT_PREEMPT_SIGNAL
or a cluster profile names one. `register_requeue_signal(signum)` (called by the
SLURM job before training starts) makes every InterruptFlag entered afterwards
treat that signal like SIGUSR2.
"""
from __future__ import annotations

import signal
from types import FrameType

from experiments.distributed import DistContext

SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)
"""The signals always trapped; `stop_signals()` adds the registered time-limit signals.
SIGINT (Ctrl-C in a terminal) is handled as SIGTERM: checkpoint at the next step boundary,
then stop (exit 130, status PENDING); a second Ctrl-C before that stops at once
(KeyboardInterrupt; the previous checkpoint stays). A process started with SIGINT ignored
keeps ignoring it, as shells leave background jobs: slurm.submit starts its local runs so,
and a Ctrl-C meant for the submitting command must not stop them."""

_REQUEUE_EXTRA: list[int] = []
_HELD: list[int] = []
"""SIGTERMs received between `hold_sigterm_until_training` and the next InterruptFlag entered."""


def hold_sigterm_until_training() -> None:
    """Record SIGTERM until an InterruptFlag is entered, which then acts on it (checkpoint after
    the first update, then stop). A SLURM job's start-up (imports, data checks, the model, the
    checkpoint) takes seconds to minutes, and submitit's own handler ignores SIGTERM: a stop or a
    preemption notice sent then was lost, and the run trained on into the SIGKILL."""
    signal.signal(signal.SIGTERM, _hold)


def _hold(signum: int, frame: FrameType | None) -> None:
    _HELD.append(signum)


def register_requeue_signal(signum: int) -> None:
    """Trap `signum` like SIGUSR2: checkpoint at the next step boundary, then hand it to the
    handler installed before (submitit's requeue). Every rank must register the same signals
    (they are agreed on by position). SIGTERM, SIGKILL, SIGSTOP and SIGINT cannot be registered."""
    signum = signal.Signals(signum)
    if signum in (signal.SIGTERM, signal.SIGKILL, signal.SIGSTOP, signal.SIGINT, signal.SIGCONT):
        raise ValueError(f"{signum.name} cannot be a time-limit signal")
    if signum not in SIGNALS and signum not in _REQUEUE_EXTRA:
        _REQUEUE_EXTRA.append(signum)


def unregister_requeue_signal(signum: int) -> None:
    """Undo `register_requeue_signal` (flags entered later no longer trap `signum`)."""
    if signum in _REQUEUE_EXTRA:
        _REQUEUE_EXTRA.remove(signum)


def requeue_signals() -> tuple[int, ...]:
    """The time-limit signals: SIGUSR2 and the registered ones."""
    return (signal.SIGUSR2, *_REQUEUE_EXTRA)


def stop_signals() -> tuple[int, ...]:
    """Every signal an InterruptFlag traps, in the order ranks agree on them."""
    return (*SIGNALS, *_REQUEUE_EXTRA)


class InterruptFlag:
    """While entered, records SIGTERM, SIGUSR2 and the registered time-limit signals instead of
    acting on them; the handlers before are restored on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stopped_by: int | None = None
        self._previous: dict[int, object] = {}
        self._frame: FrameType | None = None
        self._signals: tuple[int, ...] = stop_signals()

    def __enter__(self) -> "InterruptFlag":
        self._signals = stop_signals()
        for signum in self._signals:
            if signum == signal.SIGINT and signal.getsignal(signum) is signal.SIG_IGN:
                continue  # started with Ctrl-C ignored (slurm.submit's local runs, `cmd &`): it stays ignored
            self._previous[signum] = signal.signal(signum, self._record)
        if _HELD:  # received during start-up (hold_sigterm_until_training)
            self.signum = _HELD[-1]
            _HELD.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: the user will not wait for the checkpoint
        self.signum, self._frame = signum, frame

    def agreed(self, ctx: DistContext) -> int | None:
        """The signal to stop at after this step, the same on every rank (a collective call):
        ranks receive a signal at different steps, and all must checkpoint the same one."""
        received = ctx.all_reduce_sum([float(self.signum == s) for s in self._signals])
        return next((s for s, count in zip(self._signals, received) if count > 0), None)

    def forward(self, signum: int) -> bool:
        """Hand `signum` (this step's signal, agreed by every rank) on. True when the run must stop."""
        self.signum = None
        previous = self._previous.get(signum)
        if signum in requeue_signals() and callable(previous):
            self.__exit__()
            previous(signum, self._frame)  # submitit's handler requeues the job and exits here
        # SIGTERM means SLURM is about to kill the job (scontrol requeue, preemption, scancel):
        # submitit's SIGTERM handler would carry on training into the SIGKILL, so stop instead.
        self.stopped_by = signum
        return True
