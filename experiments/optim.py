"""Optimisers and learning-rate schedule of the paper's recipe (notes/paper.md).

- Adagrad as in the authors' code: each parameter tensor's *step* is clipped to
  gradient norm `clip`, while the squared-gradient accumulator receives the
  *unclipped* gradient; eps 1e-10 is added to the root, accumulator starts at 0.
- Adam with the global gradient norm clipped to `clip` (WikiText-103).
- Linear warm-up: the k-th update (k = 1, 2, ...) uses lr * min(1, k / warmup),
  so the very first update already uses lr / warmup, as in the authors' code
  where the scheduler is stepped before the optimizer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch

from model.errors import ConfigError

ADAGRAD_EPS = 1e-10


@dataclass
class OptimConfig:
    """The `optim:` section of a run config."""

    name: str
    """'adagrad' (character-level recipe) or 'adam' (WikiText-103 recipe)."""
    lr: float
    """Peak learning rate of the main stage."""
    clip: float = 0.0
    """Gradient-norm clipping threshold; 0 disables clipping."""
    clip_mode: str = "per_tensor"
    """'per_tensor' (each tensor's step clipped, Adagrad only) or 'global' (total norm)."""
    warmup_steps: int = 0
    """Linear warm-up length in optimizer steps; 0 disables it."""
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam's (beta1, beta2); only for name 'adam'."""

    def __post_init__(self) -> None:
        if self.name not in ("adagrad", "adam"):
            raise ConfigError("name", f"unknown optimizer {self.name!r}; choose adagrad or adam")
        if self.lr <= 0:
            raise ConfigError("lr", f"must be > 0, got {self.lr}")
        if self.clip < 0:
            raise ConfigError("clip", f"must be >= 0, got {self.clip}")
        if self.clip_mode not in ("per_tensor", "global"):
            raise ConfigError("clip_mode", f"must be per_tensor or global, got {self.clip_mode!r}")
        if self.clip_mode == "per_tensor" and self.name != "adagrad":
            raise ConfigError("clip_mode", "per_tensor clipping is implemented for adagrad only; use global")
        if self.warmup_steps < 0:
            raise ConfigError("warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        if self.name != "adam" and self.adam_betas != [0.9, 0.999]:
            raise ConfigError("adam_betas", f"is ignored by optimizer {self.name}; remove it")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ConfigError("adam_betas", f"must be two values in [0, 1), got {self.adam_betas}")


class ClippedAdagrad(torch.optim.Optimizer):
    """Adagrad whose per-tensor step is clipped but whose accumulator is not.

    Each update is a handful of `torch._foreach_*` calls over all tensors of a group
    (one C++ loop per operation instead of a Python loop over tensors); per tensor the
    arithmetic is the same as the authors' loop.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, clip: float):
        super().__init__(params, dict(lr=lr, clip=clip))

    @torch.no_grad()
    def step(self, closure=None) -> None:  # noqa: ARG002 - the Optimizer signature
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            sums = [self._sum(p) for p in params]
            torch._foreach_addcmul_(sums, grads, grads)
            if group["clip"] > 0:
                grads = _clipped(grads, group["clip"])
            denominators = torch._foreach_sqrt(sums)
            torch._foreach_add_(denominators, ADAGRAD_EPS)
            torch._foreach_addcdiv_(params, grads, denominators, value=-group["lr"])

    def _sum(self, p: torch.nn.Parameter) -> torch.Tensor:
        """The squared-gradient accumulator of `p`, created at 0."""
        state = self.state[p]
        if not state:
            state["sum"] = torch.zeros_like(p)
        return state["sum"]


def _clipped(grads: list[torch.Tensor], clip: float) -> list[torch.Tensor]:
    """Each gradient scaled to norm `clip` if its norm exceeds it: g * min(1, clip / |g|)
    (a gradient already within the bound is multiplied by exactly 1)."""
    scales = (clip / torch.stack(torch._foreach_norm(grads))).clamp_(max=1.0)
    return torch._foreach_mul(grads, scales.unbind())


def build_optimizer(cfg: OptimConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.name == "adagrad":
        clip = cfg.clip if cfg.clip_mode == "per_tensor" else 0.0
        return ClippedAdagrad(params, lr=cfg.lr, clip=clip)
    return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.adam_betas))


def clip_global_(cfg: OptimConfig, params: list[torch.nn.Parameter]) -> None:
    """Global-norm clipping before the step (per-tensor clipping lives in the optimizer)."""
    if cfg.clip > 0 and cfg.clip_mode == "global":
        torch.nn.utils.clip_grad_norm_(params, cfg.clip)


def learning_rate(cfg: OptimConfig, update: int, stage_scale: float) -> float:
    """Learning rate of the `update`-th optimizer update (1-based) in a stage scaled by `stage_scale`."""
    warm = min(1.0, update / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    return cfg.lr * stage_scale * warm


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
