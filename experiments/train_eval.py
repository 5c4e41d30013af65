"""The trainer's evaluations: the periodic partial validation and the final full one.

The partial validation reads the first `train.val_fraction` of the validation
blocks in the training batch geometry: a progress signal, recorded as
'val_partial' and never compared with published numbers. The final evaluation is
the paper's (experiments/evaluation.py), written to eval.json with the model's
size and cost.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from experiments.batches import TokenStream
from experiments.data import Corpus
from experiments.distributed import DistContext
from experiments.evaluation import evaluate_stream, evaluate_tokens
from experiments.run_config import RunConfig
from experiments.run_dir import RunDir
from experiments.train_state import TrainState
from model import TransformerLM
from model.summary import summarize

log = logging.getLogger("train")


class TrainEvaluation:
    """Evaluates the model being trained; the model's training mode is left as it was."""

    def __init__(self, cfg: RunConfig, model: TransformerLM, corpus: Corpus, run_dir: RunDir, ctx: DistContext):
        self.cfg, self.model, self.corpus, self.run_dir, self.ctx = cfg, model, corpus, run_dir, ctx
        batch = cfg.train.batch_size
        self.val_stream = TokenStream(corpus.split("valid"), batch, cfg.train.block_size, ctx.rows(batch))

    def partial(self) -> tuple[float, int]:
        """(mean nll in nats, tokens) on the first val_fraction of the validation blocks (at least one)."""
        blocks = max(1, int(self.val_stream.num_blocks * self.cfg.train.val_fraction))
        return evaluate_stream(self.model, self.val_stream, self.ctx, max_blocks=blocks)

    def final(self, state: TrainState, stop: Callable[[], bool]) -> None:
        """Full evaluation of every `eval.splits` split with the authors' batching, into eval.json
        (rank 0). `stop` is asked before each block: EvaluationStopped when it says so."""
        cfg, unit = self.cfg, self.corpus.unit
        result: dict[str, Any] = {"unit": unit, "step": state.step}
        for split in cfg.eval.splits:
            result[split] = evaluate_tokens(self.model, self.corpus.split(split), cfg.train.block_size,
                                            cfg.eval.batch_size, self.ctx, unit, cfg.eval.max_tokens, stop=stop)
            log.info("final %s: loss %.4f | %s %.4f", split, result[split]["loss"], unit, result[split][unit])
        if self.ctx.is_main:
            self.run_dir.write_eval({**result, **self._model_facts(state)})

    def _model_facts(self, state: TrainState) -> dict[str, Any]:
        """Parameters and FLOPs (model.summary), the measured throughput, the corpus's entropy floor if known."""
        facts = summarize(self.cfg.model)
        facts["tokens_per_s"] = state.tokens_per_s
        if "entropy_floor_bpc" in self.corpus.meta:
            facts["entropy_floor_bpc"] = self.corpus.meta["entropy_floor_bpc"]
        return facts
