"""The training loop of the paper's recipe, composing its collaborators.

Stages run in order: `train` (train.steps updates at optim.lr), `finetune`
(train.finetune_steps updates at lr * finetune_lr_scale), then `eval` (the full
dev/test evaluation into eval.json). Each concern has its own module:

- experiments/train_step.py        the update (forward/backward/clip over micro-batches)
- experiments/train_eval.py        the partial validation and the final evaluation
- experiments/train_metrics.py     metrics.jsonl records and log lines (and the trackers: tracking.py)
- experiments/train_status.py      status.json
- experiments/train_checkpoint.py  checkpoint contents, save and restore
- experiments/interrupt.py         SIGTERM / SIGUSR2 turned into a stop at a step boundary
- experiments/train_state.py       the progress they share (TrainState)

Everything the next step depends on is in the checkpoint, so a run killed at any
instant and resumed ends bit-identical to an uninterrupted one on CPU.
"""
from __future__ import annotations

import logging
import signal
import time

import torch

from experiments.data import Corpus
from experiments.distributed import DistContext
from experiments.evaluation import EvaluationStopped
from experiments.interrupt import InterruptFlag
from experiments.run_config import RunConfig
from experiments.run_dir import RunDir
from experiments.train_checkpoint import Checkpointer, accepted_hashes
from experiments.train_eval import TrainEvaluation
from experiments.train_metrics import MetricsWriter
from experiments.train_state import TrainState
from experiments.train_status import StatusWriter
from experiments.train_step import TrainStep
from model import build_model

log = logging.getLogger("train")

SIGNAL_EVERY = 10
"""With several processes, the ranks agree on a received stop signal (SIGTERM, SIGUSR2, ...)
every this many updates, not after each: the agreement is an all-reduce the host must wait
for, which would stop the GPUs from running ahead. The cost, in the worst case: the run
stops (and checkpoints) up to SIGNAL_EVERY - 1 updates after the signal arrived, so at a
time limit the signal's lead time (slurm: `--signal=USR2@N`) must cover that many updates
plus a checkpoint. A single process needs no agreement and checks after every update."""


class Trainer:
    """Trains one run in its run directory; one instance per process (rank)."""

    def __init__(self, cfg: RunConfig, run_dir: RunDir, corpus: Corpus, ctx: DistContext):
        self.cfg, self.run_dir, self.ctx, self.corpus = cfg, run_dir, ctx, corpus
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg.model).to(ctx.device)
        # Each rank draws its own dropout masks; rank 0 of a 1-process run is unchanged.
        torch.manual_seed(cfg.train.seed + ctx.rank)
        self.state = TrainState()
        self.updater = TrainStep(cfg, self.model, corpus.split("train"), ctx)
        self.evaluation = TrainEvaluation(cfg, self.model, corpus, run_dir, ctx)
        self.metrics = MetricsWriter(cfg, run_dir, ctx, corpus.unit)
        self.status = StatusWriter(run_dir, ctx)
        self.checkpoints = Checkpointer(run_dir.checkpoints, cfg.config_hash, self.model, self.updater.optimizer, ctx,
                                        batch_split=cfg.train.batch_split, caches=cfg.train.checkpoint_caches,
                                        seed=cfg.train.seed, accepted_hashes=accepted_hashes(cfg, run_dir),
                                        config=cfg.to_dict())
        self.restart = False
        """Start over at step 0 even when every checkpoint is unreadable (`experiments.train --restart`)."""
        self.interrupt = InterruptFlag()

    def run(self) -> None:
        """Resume if possible, train through every stage, then evaluate fully.
        Returns early, status PENDING, when SIGTERM or SIGUSR2 stopped the run."""
        self.resume()
        self.metrics.open(self.status.attempt, self.state)
        try:
            with self.interrupt:
                finished = self._train_stages() and self._final_evaluation()
            if finished:
                self._set_status("DONE", "done")
        finally:
            # DONE, PENDING when stopped by a signal (submitit's requeue exits through here), RUNNING on an error.
            self.metrics.close(self.status.last_state)

    def resume(self) -> None:
        """Load the newest readable checkpoint, if any, and count this attempt. A checkpoint of another
        process layout, or without caches, resumes with empty caches: said in the log, status.json
        and provenance.json (experiments/train_checkpoint.py)."""
        attempt = self.status.next_attempt()
        restored = self.checkpoints.restore(skip_damaged=self.restart)
        if restored is None:
            return
        self.state = restored.state
        if restored.caches is not None:
            self.updater.caches = restored.caches
        log.info("resumed from step %d (attempt %d)", self.state.step, attempt)
        if restored.note:
            log.warning("resumed inexactly: %s", restored.note)
            self.status.note = restored.note
        if self.ctx.is_main:
            self.run_dir.record_resume(attempt, restored.resume)

    def train_step(self, lr_scale: float) -> torch.Tensor:
        """One optimizer update at the stage's `lr_scale`; the mean train nll in nats, a 0-dim
        tensor on the device (not read: see experiments/train_metrics.py)."""
        return self.updater(self.state, lr_scale)

    def save_checkpoint(self) -> None:
        # The losses not read yet go into the checkpointed state; a non-finite one stops the
        # run here (NonFiniteLoss), so no checkpoint is written after it.
        self.metrics.read_losses(self.state)
        self.checkpoints.save(self.state, self.updater.caches)

    def _train_stages(self) -> bool:
        """Train up to the end of the last stage; False when a signal stopped the run."""
        for stage, last_step, lr_scale in self.cfg.train.stages():
            self._set_status("RUNNING", stage)
            while self.state.step < last_step:
                self._one_update(lr_scale)
                if self._stopped_by_signal(stage):
                    return False
            if self.state.step == last_step and self.checkpoints.last_step != last_step:
                self.save_checkpoint()
        return True

    def _one_update(self, lr_scale: float) -> None:
        """An update, then whatever falls due at its step: train record, partial validation, checkpoint."""
        started = time.perf_counter()
        loss = self.train_step(lr_scale)
        self.metrics.add_update(self.state, loss, time.perf_counter() - started)
        step, cfg = self.state.step, self.cfg.train
        if step % cfg.log_every == 0:
            self.metrics.write_train(self.state, self.model.span_stats())
            self._set_status("RUNNING", None)
        if step % cfg.eval_every == 0:
            self.metrics.write_val_partial(self.state, *self.evaluation.partial())
        if step % cfg.checkpoint_every == 0:
            self.save_checkpoint()

    def _final_evaluation(self) -> bool:
        """eval.json; False when a signal stopped the evaluation."""
        self._set_status("RUNNING", "eval")
        try:
            self.evaluation.final(self.state, stop=lambda: self.interrupt.agreed(self.ctx) is not None)
        except EvaluationStopped:
            # The weights are final and checkpointed: a later attempt redoes the evaluation.
            self._stop_for_signal(self.interrupt.agreed(self.ctx), "eval")
            return False
        return True

    def _stopped_by_signal(self, stage: str) -> bool:
        """On SIGTERM/SIGUSR2: checkpoint at this step boundary, then let the signal act
        (several processes look every SIGNAL_EVERY updates only)."""
        if self.ctx.active and self.state.step % SIGNAL_EVERY:
            return False
        signum = self.interrupt.agreed(self.ctx)
        if signum is None:
            return False
        if self.checkpoints.last_step != self.state.step:
            self.save_checkpoint()
        return self._stop_for_signal(signum, stage)

    def _stop_for_signal(self, signum: int, stage: str) -> bool:
        self._set_status("PENDING", stage)
        log.info("interrupted by %s at step %d (%s); checkpoint saved", signal.Signals(signum).name,
                 self.state.step, stage)
        return self.interrupt.forward(signum)

    def _set_status(self, state: str, stage: str | None) -> None:
        self.status.write(state, stage, self.state.step)
