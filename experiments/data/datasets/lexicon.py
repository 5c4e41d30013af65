"""lexicon, the embedded corpus (DESIGN §6): random words drawn i.i.d. from a Zipfian lexicon.

Its entropy rate is known exactly, so every run can report how far it is from
the floor. Words are distinct and contain no space, so the text and the word
sequence determine each other; the entropy rate per character is therefore
H(W) / E[len(w) + 1] (renewal argument: each word costs its letters plus one
space). Predicting inside a word requires the lexicon stored in the weights,
which is what the paper's FFN-vs-persistent-memory ablation probes.

Vocabulary: 27 symbols (a-z and the space; no newline anywhere, so no `<eos>`),
ids by first appearance. `prepare lexicon` takes every LexiconSpec field as an option.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from experiments.data.encoding import Prepared, char_corpus
from experiments.data.format import SPLITS
from experiments.data.registry import Dataset
from model.errors import ConfigError, UserError

ALPHABET = b"abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class LexiconSpec:
    """Every parameter of the generator; the same spec always yields the same bytes."""

    num_words: int = 1000
    """K, the number of distinct words in the lexicon."""
    min_len: int = 3
    """Shortest word, in letters."""
    max_len: int = 8
    """Longest word, in letters (lengths are uniform in min_len..max_len)."""
    zipf_exponent: float = 1.0
    """s in p_i ∝ 1 / i**s over word ranks i = 1..K (DESIGN §6: 1.0)."""
    train_chars: int = 2_000_000
    """Characters in the train split."""
    valid_chars: int = 100_000
    """Characters in the valid split."""
    test_chars: int = 100_000
    """Characters in the test split."""
    seed: int = 0
    """Seed of numpy's SeedSequence; lexicon and each split get independent child streams."""

    def __post_init__(self) -> None:
        if self.min_len < 1:
            raise ConfigError("min_len", f"must be >= 1, got {self.min_len}")
        if self.max_len < self.min_len:
            raise ConfigError("max_len", f"must be >= min_len={self.min_len}, got {self.max_len}")
        if not 1 <= self.num_words <= distinct_word_capacity(self.min_len, self.max_len):
            raise ConfigError("num_words", f"must be in 1..{distinct_word_capacity(self.min_len, self.max_len)} "
                              f"(distinct words of {self.min_len}..{self.max_len} letters), got {self.num_words}")
        if self.zipf_exponent < 0:
            raise ConfigError("zipf_exponent", f"must be >= 0, got {self.zipf_exponent}")
        for name in ("train_chars", "valid_chars", "test_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ConfigError("seed", f"must be >= 0, got {self.seed}")

    def split_chars(self, split: str) -> int:
        return {"train": self.train_chars, "valid": self.valid_chars, "test": self.test_chars}[split]

    def as_dict(self) -> dict[str, int | float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Lexicon:
    """The words (ASCII bytes) and their probabilities, word i having rank i + 1."""

    words: list[bytes]
    probs: np.ndarray


def distinct_word_capacity(min_len: int, max_len: int) -> int:
    """How many distinct words the alphabet allows; more would make the draw loop forever."""
    return sum(len(ALPHABET) ** n for n in range(min_len, max_len + 1))


def _streams(seed: int) -> dict[str, np.random.Generator]:
    # Independent child streams keep valid/test identical when only train_chars changes.
    children = np.random.SeedSequence(seed).spawn(1 + len(SPLITS))
    return {name: np.random.default_rng(child) for name, child in zip(("lexicon",) + SPLITS, children)}


def make_lexicon(spec: LexiconSpec) -> Lexicon:
    """Draw K distinct words (letters uniform, length uniform) and their Zipf probabilities."""
    rng = _streams(spec.seed)["lexicon"]
    letters = np.frombuffer(ALPHABET, dtype=np.uint8)
    words: dict[bytes, None] = {}
    while len(words) < spec.num_words:
        length = int(rng.integers(spec.min_len, spec.max_len + 1))
        words.setdefault(letters[rng.integers(0, len(letters), size=length)].tobytes())
    weights = 1.0 / np.arange(1, spec.num_words + 1, dtype=np.float64) ** spec.zipf_exponent
    return Lexicon(words=list(words), probs=weights / weights.sum())


def entropy_floor_bpc(lexicon: Lexicon) -> float:
    """Exact entropy rate in bits per character: H(W) / E[len(w) + 1]."""
    p = lexicon.probs
    word_entropy_bits = float(-(p * np.log2(p)).sum())
    mean_chars_per_word = float((p * np.array([len(w) + 1 for w in lexicon.words])).sum())
    return word_entropy_bits / mean_chars_per_word


def _sample_text(lexicon: Lexicon, num_chars: int, rng: np.random.Generator) -> bytes:
    # Each word plus its space takes at least min_len + 1 characters, so this many always suffice.
    num_draws = num_chars // (min(len(w) for w in lexicon.words) + 1) + 1
    cdf = np.cumsum(lexicon.probs)
    ranks = np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(num_draws), side="right"), len(cdf) - 1)
    return b" ".join(lexicon.words[r] for r in ranks)[:num_chars]


def generate_splits(spec: LexiconSpec) -> tuple[Lexicon, dict[str, bytes]]:
    """The lexicon and the train/valid/test texts (lowercase words, single spaces, no newline)."""
    lexicon = make_lexicon(spec)
    streams = _streams(spec.seed)
    texts = {split: _sample_text(lexicon, spec.split_chars(split), streams[split]) for split in SPLITS}
    return lexicon, texts


# ---------------------------------------------------------------- prepare lexicon


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in fields(LexiconSpec):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                            help=f"LexiconSpec.{f.name} (default: {f.default})")


def prepare(args: argparse.Namespace, work: Path) -> Prepared:
    try:
        spec = LexiconSpec(**{f.name: getattr(args, f.name) for f in fields(LexiconSpec)})
    except ConfigError as err:
        raise UserError(f"--{err.field.replace('_', '-')}: {err.message}") from None
    lexicon, texts = generate_splits(spec)
    extra = {"entropy_floor_bpc": entropy_floor_bpc(lexicon),
             "source": {"generator": __name__, "spec": spec.as_dict()}}
    return char_corpus(texts, by_frequency=False, extra=extra)


DATASET = Dataset(name="lexicon", help="the embedded synthetic corpus (DESIGN §6)", prepare=prepare,
                  add_arguments=add_arguments)
