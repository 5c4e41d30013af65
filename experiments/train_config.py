"""The `train:` section of a run config: steps, batching, stages, precision, checkpoint and log cadence."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from experiments.cli import at_least
from model.errors import ConfigError

PRECISIONS = ("fp32", "tf32", "bf16")
"""train.precision choices (experiments/train_step.py applies them)."""
MAX_THREADS = 4096
"""Most torch CPU threads a run (or `evaluate --threads`) may ask for. torch.set_num_threads takes a
C int (2^31 and up is a ValueError 'Overflow when unpacking long') and accepts 2^31 - 1, which
then tries to start that many threads; the largest CPU nodes have a few hundred hardware threads,
so 4096 refuses only mistakes."""


@dataclass
class TrainConfig:
    """The `train:` section: steps, batching, stages, checkpoints and logging."""

    steps: int
    """Optimizer updates of the main stage."""
    block_size: int
    """Tokens per row and step (M); also the evaluation block."""
    batch_size: int
    """Rows per step over all processes (B), each a contiguous stream."""
    seed: int = 0
    """Seeds model init, dropout and the data restart offsets."""
    batch_split: int = 1
    """Gradient accumulation: the rows are processed in this many chunks, same result."""
    finetune_steps: int = 0
    """Updates of the fine-tune stage that follows the main one (paper: 30k / 10k / 50k)."""
    finetune_lr_scale: float = 0.1
    """Learning-rate factor of the fine-tune stage (paper: lr / 10)."""
    checkpoint_every: int = 1000
    """Checkpoint period in updates (also written at stage ends and on SIGTERM/SIGUSR2)."""
    log_every: int = 100
    """Period in updates of the train log line and metrics record."""
    eval_every: int = 1000
    """Period in updates of the partial validation (recorded as split 'val_partial')."""
    val_fraction: float = 0.1
    """Fraction of the validation blocks used by the partial validation (authors: a tenth)."""
    device: str = "auto"
    """'cpu', 'cuda' or 'auto' (cuda when visible)."""
    precision: str = "fp32"
    """'fp32' (the paper's), 'tf32' (fp32 tensors, CUDA matmuls on TF32 tensor cores) or 'bf16'
    (autocast to bfloat16 on the run's device, CUDA or CPU; softmax, span renormalisation,
    loss, weights and optimizer state stay fp32). Older configs' `bf16: false|true` reads as fp32|bf16."""
    compile: bool = False
    """Train through torch.compile(model): the same math (not part of the run id); the first
    steps pay the compilation."""
    threads: int = 0
    """torch intra-op threads on CPU; 0 keeps torch's default; at most MAX_THREADS."""
    checkpoint_caches: str = "exact"
    """'exact': every checkpoint holds each rank's layer caches, so a run resumed on the same layout
    ends bit-identical to an uninterrupted one; 'none': checkpoints hold the model, optimizer and
    progress only (much smaller at long spans), and a resumed run starts its caches empty (said in
    its log and provenance.json). Not part of the run id."""

    def __post_init__(self) -> None:
        for name in ("steps", "block_size", "batch_size", "batch_split", "checkpoint_every", "log_every", "eval_every"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("seed", "finetune_steps", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be >= 0, got {getattr(self, name)}")
        if self.threads > MAX_THREADS:
            raise ConfigError("threads", threads_problem(self.threads))
        if self.batch_size % self.batch_split:
            raise ConfigError("batch_split", f"{self.batch_split} does not divide batch_size={self.batch_size}")
        if not 0.0 < self.finetune_lr_scale <= 1.0:
            raise ConfigError("finetune_lr_scale", f"must be in (0, 1], got {self.finetune_lr_scale}")
        if not 0.0 < self.val_fraction <= 1.0:
            raise ConfigError("val_fraction", f"must be in (0, 1], got {self.val_fraction}")
        if self.checkpoint_caches not in ("exact", "none"):
            raise ConfigError("checkpoint_caches", f"must be exact or none, got {self.checkpoint_caches!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError("device", f"must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError("precision", f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @staticmethod
    def upgrade_legacy(data: dict[str, Any]) -> dict[str, Any]:
        """The section as an older schema wrote it, in today's keys (experiments.config.build
        calls this before checking keys): `bf16: false|true`, replaced by `precision`, reads
        as precision fp32|bf16. Run directories written before keep loading, and keep their
        run ids (see `hash_form`)."""
        if "bf16" not in data:
            return data
        data = dict(data)
        legacy = data.pop("bf16")
        if not isinstance(legacy, bool):
            raise ConfigError("bf16", f"must be bool (the legacy form of precision), got {legacy!r}")
        if "precision" in data:
            raise ConfigError("bf16", "replaced by precision: give precision only")
        data["precision"] = "bf16" if legacy else "fp32"
        return data

    @staticmethod
    def hash_form(section: dict[str, Any]) -> dict[str, Any]:
        """The section as the run-id hash sees it (experiments/run_config.py): precision fp32
        and bf16 as the legacy `bf16: false|true` they replaced, so that every run id from
        before `precision` existed is unchanged; tf32 as `precision: tf32`."""
        section = dict(section)
        if section.get("precision") in ("fp32", "bf16"):
            section["bf16"] = section.pop("precision") == "bf16"
        return section

    def stages(self) -> list[tuple[str, int, float]]:
        """(name, last global step of the stage, lr scale) for each training stage."""
        return [("train", self.steps, 1.0), ("finetune", self.steps + self.finetune_steps, self.finetune_lr_scale)]


def threads_flag(text: str) -> int:
    """argparse `type` of a --threads flag: 0 (torch's choice) to MAX_THREADS, as train.threads."""
    value = at_least(0)(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(threads_problem(value))
    return value


def threads_problem(threads: int) -> str:
    """Why `threads` (> MAX_THREADS) is refused: shared by train.threads and evaluate's --threads."""
    return (f"must be <= {MAX_THREADS} (torch CPU threads; more than any machine has cores), got {threads}; "
            "0 keeps torch's default")
