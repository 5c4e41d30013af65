"""One optimizer update of the paper's recipe: forward, backward, clip and update.

The rows of a step are processed in `train.batch_split` micro-batches, each with
its own cache, and their gradients accumulate: the update equals the unsplit one.
Each rank reads its own rows of every block; gradients are averaged over ranks by
DistributedDataParallel (all-reduced during the last micro-batch's backward, `no_sync`
before) and the loss is summed over ranks on the device, so every rank takes the
same update.

Precision (`train.precision`): fp32 as the paper; tf32 lets CUDA run fp32 matmuls on
TF32 tensor cores (process-wide, `apply_precision`); bf16 runs the forward under
torch.autocast(bfloat16) on the run's device (CUDA or CPU): the matmuls in bf16, while
the softmaxes (model/persistent.py, model/attention.py, inside SDPA's kernels on the
fused path), the adaptive-span renormalisation, the loss (model/transformer.py casts
the logits to fp32) and the span penalty stay fp32; the weights, their gradients and
the optimizer state are fp32 throughout (autocast casts copies, never the parameters),
so no loss scaling is needed.

No host sync in a step (CUDA runs ahead of the host) but one: with adaptive-span
trimming the kept spans and cache lengths are sizes, read once per update for every
layer (TransformerLM.decide_spans). The loss is returned as a device tensor; the
trainer reads it when a log line or a checkpoint needs it (experiments/train_metrics.py).
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

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
    """The loss became NaN or inf; the run stops as FAILED, last good checkpoint kept.

    Losses stay on the device until a log line or a checkpoint reads them, so a NaN is
    detected up to `train.log_every` updates after it happened (the message names the
    update); no checkpoint is written after it (experiments/train_metrics.py)."""


def apply_precision(precision: str) -> None:
    """Set this process's fp32 matmul precision for `precision` (train.precision): TF32 tensor
    cores for fp32 matmuls and cuDNN convolutions under 'tf32', full fp32 otherwise (what
    bf16 autocast keeps in fp32 is then computed in full fp32)."""
    tf32 = precision == "tf32"
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The forward pass's autocast region: bfloat16 on `device` under 'bf16', none otherwise."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class TrainStep:
    """The update of one step; owns the optimizer, this rank's training rows and the caches.

    The caches are carried from block to block and emptied when the data restarts;
    they are part of every checkpoint (`caches`). `model` is what is saved and restored;
    `forward_model` is what the forward pass calls: `model` itself, compiled with
    `train.compile`, wrapped in DistributedDataParallel with several processes.
    """

    def __init__(self, cfg: RunConfig, model: TransformerLM, tokens: np.ndarray, ctx: DistContext):
        self.cfg, self.model, self.ctx = cfg, model, ctx
        apply_precision(cfg.train.precision)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(cfg.optim, self.params)
        rows = ctx.rows(cfg.train.batch_size)
        self.stream = TokenStream(tokens, cfg.train.batch_size, cfg.train.block_size, rows)
        self.micro_rows = _split_rows(rows.stop - rows.start, cfg.train.batch_split)
        self.caches: Caches = self.empty_caches()
        self.forward_model = ctx.data_parallel(torch.compile(model) if cfg.train.compile else model)

    def empty_caches(self) -> Caches:
        spans = self.model.decide_spans()
        return [self.model.init_cache(rows, device=self.ctx.device, spans=spans) for rows in self.micro_rows]

    def __call__(self, state: TrainState, lr_scale: float) -> torch.Tensor:
        """Update the model on the block at `state.offset`, at the stage's lr scale, and
        advance `state`; returns the mean nll (nats per token) over every rank as a 0-dim
        float64 tensor on the device, not read here (reading it would make the host wait)."""
        cfg = self.cfg
        lr = learning_rate(cfg.optim, state.step + 1, lr_scale)
        set_learning_rate(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = self._forward_backward(state.offset)
        clip_global_(cfg.optim, self.params)
        self.optimizer.step()
        self.model.clamp_span_()
        self._advance(state)
        mean_loss = self.ctx.all_reduce_sum_(loss_sum) / (cfg.train.batch_size * cfg.train.block_size)
        state.last_lr = lr
        return mean_loss

    def _forward_backward(self, offset: int) -> torch.Tensor:
        """Accumulate gradients over the micro-batches (averaged over ranks during the last
        one's backward); returns this rank's nll sum (nats), float64 on the device."""
        inputs, targets = self.stream.block(offset, self.ctx.device)
        local_tokens = inputs.numel()
        spans = self.model.decide_spans()  # z changes only at the optimizer step: once per update
        loss_sum, start = None, 0
        for index, rows in enumerate(self.micro_rows):
            chunk = slice(start, start + rows)
            start += rows
            with self._sync_gradients(index == len(self.micro_rows) - 1):
                with autocast(self.cfg.train.precision, self.ctx.device):
                    nll, self.caches[index] = self.forward_model(inputs[chunk], self.caches[index], targets[chunk],
                                                                 spans)
                # Scaled by the local token count so that averaging over ranks gives the global mean.
                loss = nll.float().sum() / local_tokens
                if index == 0:
                    loss = loss + self.model.span_loss()
                loss.backward()
            part = nll.detach().double().sum()
            loss_sum = part if loss_sum is None else loss_sum + part
        return loss_sum

    def _sync_gradients(self, last: bool) -> AbstractContextManager:
        """DDP all-reduces the gradients in the backward of the last micro-batch only."""
        if last or not hasattr(self.forward_model, "no_sync"):
            return nullcontext()
        return self.forward_model.no_sync()

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
