"""One optimizer update of the paper's recipe: forward, backward, clip and update.

The rows of a step are processed in `train.batch_split` micro-batches, each with
its own cache, and their gradients accumulate: the update equals the unsplit one.
Each rank reads its own rows of every block; gradients and losses are averaged
over ranks, so every rank takes the same update.
"""
from __future__ import annotations

import math
from contextlib import AbstractContextManager

import numpy as np
import torch

from experiments.batches import TokenStream, restart_offset
from experiments.distributed import DistContext
from experiments.optim import build_optimizer, clip_global_, learning_rate, set_learning_rate
from experiments.run_config import RunConfig
from experiments.train_state import TrainState
from model import TransformerLM
from model.errors import UserError

Caches = list[list[torch.Tensor]]
"""One cache per micro-batch: the model's per-layer cache of the previous block."""


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the run stops as FAILED, last good checkpoint kept."""


class TrainStep:
    """The update of one step; owns the optimizer, this rank's training rows and the caches.

    The caches are carried from block to block and emptied when the data restarts;
    they are part of every checkpoint (`caches`).
    """

    def __init__(self, cfg: RunConfig, model: TransformerLM, tokens: np.ndarray, ctx: DistContext):
        self.cfg, self.model, self.ctx = cfg, model, ctx
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg.optim, self.params)
        rows = ctx.rows(cfg.train.batch_size)
        self.stream = TokenStream(tokens, cfg.train.batch_size, cfg.train.block_size, rows)
        self.micro_rows = _split_rows(rows.stop - rows.start, cfg.train.batch_split)
        self.caches: Caches = self.empty_caches()

    def empty_caches(self) -> Caches:
        return [self.model.init_cache(rows, device=self.ctx.device) for rows in self.micro_rows]

    def __call__(self, state: TrainState, lr_scale: float) -> float:
        """Update the model on the block at `state.offset`, at the stage's lr scale, and
        advance `state`; returns the mean nll (nats per token) over every rank.
        Raises NonFiniteLoss when that loss is NaN or inf."""
        cfg = self.cfg
        lr = learning_rate(cfg.optim, state.step + 1, lr_scale)
        set_learning_rate(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = self._forward_backward(state.offset)
        self.ctx.average_gradients(self.params)
        clip_global_(cfg.optim, self.params)
        self.optimizer.step()
        self.model.clamp_span_()
        self._advance(state)
        (loss_sum,) = self.ctx.all_reduce_sum([loss_sum])
        mean_loss = loss_sum / (cfg.train.batch_size * cfg.train.block_size)
        if not math.isfinite(mean_loss):
            raise NonFiniteLoss(f"non-finite training loss {mean_loss} at step {state.step}")
        state.last_lr = lr
        return mean_loss

    def _forward_backward(self, offset: int) -> float:
        """Accumulate gradients over the micro-batches; returns this rank's nll sum (nats)."""
        inputs, targets = self.stream.block(offset, self.ctx.device)
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

    def _autocast(self) -> AbstractContextManager:
        enabled = self.cfg.train.bf16 and self.ctx.device.type == "cuda"
        return torch.autocast(device_type=self.ctx.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _advance(self, state: TrainState) -> None:
        """Next offset; past the end of the data, restart at a random offset with empty caches."""
        cfg = self.cfg.train
        state.step += 1
        state.tokens += cfg.batch_size * cfg.block_size
        state.offset += cfg.block_size
        if not self.stream.fits(state.offset):
            state.epoch += 1
            state.offset = restart_offset(cfg.seed, state.epoch, cfg.block_size)
            self.caches = self.empty_caches()


def _split_rows(rows: int, parts: int) -> list[int]:
    """This rank's rows cut into `parts` equal micro-batches; UserError when they do not divide."""
    if rows % parts:
        raise UserError(f"train.batch_split={parts} does not divide this process's {rows} rows")
    return [rows // parts] * parts
