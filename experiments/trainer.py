"""The training loop of the paper's recipe, split into step / eval / checkpoint / log.

Stages run in order: `train` (train.steps updates at optim.lr), `finetune`
(train.finetune_steps updates at lr * finetune_lr_scale), then `eval` (the full
dev/test evaluation into eval.json). Everything the next step depends on (model,
optimizer, step, data offset, caches, RNG states of every rank, the running
log averages) is in the checkpoint, so a run killed at any instant and resumed
ends bit-identical to an uninterrupted one on CPU.
"""
from __future__ import annotations

import logging
import math
import signal
import time
from typing import Any

import torch

from experiments import checkpoint
from experiments.batches import TokenStream, restart_offset
from experiments.distributed import DistContext
from experiments.data import Corpus
from experiments.evaluation import EvaluationStopped, evaluate_stream, evaluate_tokens, unit_value
from experiments.interrupt import SIGNALS, InterruptFlag
from experiments.optim import build_optimizer, clip_global_, learning_rate, set_learning_rate
from experiments.run_dir import RunDir
from experiments.run_config import RunConfig
from model import build_model
from model.errors import UserError
from model.summary import summarize

log = logging.getLogger("train")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the run stops as FAILED, last good checkpoint kept."""


class Trainer:
    """Trains one run in its run directory; one instance per process (rank)."""

    def __init__(self, cfg: RunConfig, run_dir: RunDir, corpus: Corpus, ctx: DistContext):
        self.cfg, self.run_dir, self.ctx, self.corpus = cfg, run_dir, ctx, corpus
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg.model).to(ctx.device)
        # Each rank draws its own dropout masks; rank 0 of a 1-process run is unchanged.
        torch.manual_seed(cfg.train.seed + ctx.rank)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg.optim, self.params)
        rows = ctx.rows(cfg.train.batch_size)
        self.train_stream = TokenStream(corpus.split("train"), cfg.train.batch_size, cfg.train.block_size, rows)
        self.val_stream = TokenStream(corpus.split("valid"), cfg.train.batch_size, cfg.train.block_size, rows)
        self.micro_rows = _split_rows(rows.stop - rows.start, cfg.train.batch_split)
        self.caches = [self.model.init_cache(n, device=ctx.device) for n in self.micro_rows]
        self.state = {"step": 0, "offset": 0, "epoch": 0, "tokens": 0, "log_loss": 0.0, "log_steps": 0}
        self.attempt = 1
        self.interrupt = InterruptFlag()
        self._interval_seconds = 0.0  # wall time of the current log interval (not checkpointed)
        self._last_checkpoint_step: int | None = None

    # ---------------------------------------------------------------- run
    def run(self) -> None:
        """Resume if possible, train through every stage, then evaluate fully."""
        self.resume()
        with self.interrupt:
            for stage, last_step, lr_scale in self.cfg.train.stages():
                self._set_status("RUNNING", stage)
                while self.state["step"] < last_step:
                    self._one_update(lr_scale)
                    if self._handle_interrupt(stage):
                        return
                if self.state["step"] == last_step and not self._checkpointed_now():
                    self.save_checkpoint()
            self._set_status("RUNNING", "eval")
            try:
                self.final_evaluation()
            except EvaluationStopped:
                # The weights are final and checkpointed: a later attempt redoes the evaluation.
                self._stop_for_signal(self._agreed_signal(), "eval")
                return
        self._set_status("DONE", "done")

    def _one_update(self, lr_scale: float) -> None:
        started = time.perf_counter()
        loss = self.train_step(lr_scale)
        self._accumulate_log(loss, time.perf_counter() - started)
        step, cfg = self.state["step"], self.cfg.train
        if step % cfg.log_every == 0:
            self.log_train(lr_scale)
        if step % cfg.eval_every == 0:
            self.evaluate_partial()
        if step % cfg.checkpoint_every == 0:
            self.save_checkpoint()

    # ---------------------------------------------------------------- step
    def train_step(self, lr_scale: float) -> float:
        """One optimizer update on the next block of every stream; returns the mean nll."""
        cfg = self.cfg
        lr = learning_rate(cfg.optim, self.state["step"] + 1, lr_scale)
        set_learning_rate(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = self._forward_backward()
        self.ctx.average_gradients(self.params)
        clip_global_(cfg.optim, self.params)
        self.optimizer.step()
        self.model.clamp_span_()
        self._advance_data()
        (loss_sum,) = self.ctx.all_reduce_sum([loss_sum])
        mean_loss = loss_sum / (cfg.train.batch_size * cfg.train.block_size)
        if not math.isfinite(mean_loss):
            raise NonFiniteLoss(f"non-finite training loss {mean_loss} at step {self.state['step']}")
        self.state["last_lr"] = lr
        return mean_loss

    def _forward_backward(self) -> float:
        """Accumulate gradients over the micro-batches; returns this rank's nll sum."""
        inputs, targets = self.train_stream.block(self.state["offset"], self.ctx.device)
        local_tokens = inputs.numel()
        loss_sum, start = 0.0, 0
        for index, rows in enumerate(self.micro_rows):
            chunk = slice(start, start + rows)
            start += rows
            with self._autocast():
                nll, self.caches[index] = self.model(inputs[chunk], self.caches[index], targets[chunk])
            # Scaled by the local token count so that averaging over ranks gives the global mean.
            loss = nll.float().sum() / local_tokens
            if index == 0:
                loss = loss + self.model.span_loss()
            loss.backward()
            loss_sum += nll.detach().double().sum().item()
        return loss_sum

    def _autocast(self):
        enabled = self.cfg.train.bf16 and self.ctx.device.type == "cuda"
        return torch.autocast(device_type=self.ctx.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _advance_data(self) -> None:
        """Next offset; past the end of the data, restart at a random offset with empty caches."""
        cfg, state = self.cfg.train, self.state
        state["step"] += 1
        state["tokens"] += cfg.batch_size * cfg.block_size
        state["offset"] += cfg.block_size
        if not self.train_stream.fits(state["offset"]):
            state["epoch"] += 1
            state["offset"] = restart_offset(cfg.seed, state["epoch"], cfg.block_size)
            self.caches = [self.model.init_cache(n, device=self.ctx.device) for n in self.micro_rows]

    # ---------------------------------------------------------------- eval
    def evaluate_partial(self) -> None:
        """Validation on the first val_fraction of the valid blocks: a progress signal only."""
        blocks = max(1, int(self.val_stream.num_blocks * self.cfg.train.val_fraction))
        loss, tokens = evaluate_stream(self.model, self.val_stream, self.ctx, max_blocks=blocks)
        unit = self.corpus.unit
        record = {"split": "val_partial", "loss": loss, unit: unit_value(loss, unit), "eval_tokens": tokens}
        self._write_record(record)
        log.info("step %d | val_partial loss %.4f | %s %.4f", self.state["step"], loss, unit, record[unit])

    def final_evaluation(self) -> None:
        """Full dev/test evaluation with the authors' batching, written to eval.json."""
        cfg, unit = self.cfg, self.corpus.unit
        result: dict[str, Any] = {"unit": unit, "step": self.state["step"]}
        for split in cfg.eval.splits:
            result[split] = evaluate_tokens(self.model, self.corpus.split(split), cfg.train.block_size,
                                            cfg.eval.batch_size, self.ctx, unit, cfg.eval.max_tokens,
                                            stop=lambda: self._agreed_signal() is not None)
            log.info("final %s: loss %.4f | %s %.4f", split, result[split]["loss"], unit, result[split][unit])
        if self.ctx.is_main:
            self.run_dir.write_eval({**result, **self._model_facts()})

    def _model_facts(self) -> dict[str, Any]:
        facts = summarize(self.cfg.model)
        facts["tokens_per_s"] = self.state.get("tokens_per_s")
        if "entropy_floor_bpc" in self.corpus.meta:
            facts["entropy_floor_bpc"] = self.corpus.meta["entropy_floor_bpc"]
        return facts

    # ---------------------------------------------------------------- log
    def _accumulate_log(self, loss: float, seconds: float) -> None:
        self.state["log_loss"] += loss
        self.state["log_steps"] += 1
        self._interval_seconds += seconds

    def log_train(self, lr_scale: float) -> None:
        """Write the interval's mean train loss as a metrics record and a log line."""
        state, cfg, unit = self.state, self.cfg.train, self.corpus.unit
        loss = state["log_loss"] / state["log_steps"]
        seconds = self._interval_seconds
        tokens_per_s = state["log_steps"] * cfg.batch_size * cfg.block_size / seconds if seconds else 0.0
        span_mean, span_max = self.model.span_stats()
        record = {"split": "train", "loss": loss, unit: unit_value(loss, unit), "lr": state["last_lr"],
                  "ms_per_step": 1000 * seconds / state["log_steps"], "tokens_per_s": tokens_per_s,
                  "span_mean": span_mean, "span_max": span_max}
        self._write_record(record)
        state["log_loss"], state["log_steps"], self._interval_seconds = 0.0, 0, 0.0
        state["tokens_per_s"] = tokens_per_s
        total = cfg.steps + cfg.finetune_steps
        log.info("step %d/%d | loss %.4f | %s %.4f | lr %.3g | %.0f tok/s | span %.0f/%.0f",
                 state["step"], total, loss, unit, record[unit], state["last_lr"], tokens_per_s, span_mean, span_max)
        self._set_status("RUNNING", None)

    def _write_record(self, record: dict[str, Any]) -> None:
        if self.ctx.is_main:
            base = {"step": self.state["step"], "tokens": self.state["tokens"], "attempt": self.attempt, "time": time.time()}
            self.run_dir.append_metrics({**base, **record})

    def _set_status(self, state: str, stage: str | None) -> None:
        if self.ctx.is_main:
            fields = {"step": self.state["step"], "attempt": self.attempt}
            if stage is not None:
                fields["stage"] = stage
            self.run_dir.write_status(state, **fields)

    # ---------------------------------------------------------------- checkpoint
    def save_checkpoint(self) -> None:
        shared = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                  "state": dict(self.state), "config_hash": self.cfg.config_hash}
        per_rank = {"caches": self.caches, "rng": checkpoint.rng_state()}
        checkpoint.save(self.run_dir.checkpoints, self.state["step"], shared, per_rank, self.ctx)
        self._last_checkpoint_step = self.state["step"]

    def _checkpointed_now(self) -> bool:
        return self._last_checkpoint_step == self.state["step"]

    def resume(self) -> None:
        """Load the newest readable checkpoint, if any, and count this attempt."""
        self.attempt = int(self.run_dir.read_status().get("attempt") or 0) + 1
        loaded = checkpoint.load_latest(self.run_dir.checkpoints, self.ctx)
        if loaded is None:
            return
        shared, per_rank = loaded
        if shared.get("config_hash") != self.cfg.config_hash:
            raise UserError(f"checkpoints in {self.run_dir.checkpoints} belong to another config; move them away to restart")
        self.model.load_state_dict(shared["model"])
        self.optimizer.load_state_dict(shared["optimizer"])
        self.state = dict(shared["state"])
        self.caches = [[c.to(self.ctx.device) for c in cache] for cache in per_rank["caches"]]
        checkpoint.set_rng_state(per_rank["rng"])
        self._last_checkpoint_step = self.state["step"]
        log.info("resumed from step %d (attempt %d)", self.state["step"], self.attempt)

    def _handle_interrupt(self, stage: str) -> bool:
        """On SIGTERM/SIGUSR2: checkpoint at this step boundary, then let the signal act."""
        signum = self._agreed_signal()
        if signum is None:
            return False
        if not self._checkpointed_now():
            self.save_checkpoint()
        return self._stop_for_signal(signum, stage)

    def _stop_for_signal(self, signum: int, stage: str) -> bool:
        self._set_status("PENDING", stage)
        log.info("interrupted by %s at step %d (%s); checkpoint saved", signal.Signals(signum).name,
                 self.state["step"], stage)
        return self.interrupt.forward(signum)

    def _agreed_signal(self) -> int | None:
        """The signal to stop at after this step, the same on every rank: ranks receive a
        signal at different steps, and all must checkpoint the same one."""
        received = self.ctx.all_reduce_sum([float(self.interrupt.signum == s) for s in SIGNALS])
        return next((s for s, count in zip(SIGNALS, received) if count > 0), None)


def _split_rows(rows: int, parts: int) -> list[int]:
    if rows % parts:
        raise UserError(f"train.batch_split={parts} does not divide this process's {rows} rows")
    return [rows // parts] * parts
