"""WikiText-103 (Merity et al. 2016): Wikipedia articles as pre-tokenised words.

The official zip holds `wikitext-103/wiki.{train,valid,test}.tokens`. Vocabulary:
every word of the three splits plus `<eos>` closing each line, 267,735 symbols
(valid and test hold no word missing from train: rare words are already `<unk>`).
Ids sorted by decreasing train count, as the adaptive softmax of the paper's
WikiText-103 model needs (its cutoffs assume the most frequent words first), with
ties in reverse order of first appearance: the ids the authors' loader gives (it
sorts train words by increasing count, stably, then reverses the list), so that
their WikiText-103 weights read the same words.
"""
from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from experiments.data.archive import (Archive, add_archive_arguments, archive_sources, fetch_source, open_member,
                                      sha256_file, source_record, unpinned_warning, verify_official)
from experiments.data.encoding import Prepared, SplitSource, word_corpus
from experiments.data.format import SPLITS
from experiments.data.registry import Dataset
from model.errors import UserError

ARCHIVE = Archive("wikitext-103-v1.zip", "https://wikitext.smerity.com/wikitext-103-v1.zip",
                  "242ba0f20b329cfdf1ccc61e9e9e5b59becf189db7f7a81cd2a0e2fc31539590", None)
MEMBERS = {split: f"wikitext-103/wiki.{split}.tokens" for split in SPLITS}
VOCAB = 267_735
SIZES = {"train": 103_227_021, "valid": 217_646, "test": 245_569}
"""Tokens (words + one <eos> per line) as Merity et al. (2016) count them; valid and test are WikiText-2's."""


def prepare(args: argparse.Namespace, work: Path) -> Prepared:
    path, url = fetch_source(args.source, ARCHIVE, work)
    digest = sha256_file(path)
    official = digest == ARCHIVE.sha256
    if not official and not args.allow_unpinned:
        verify_official(path, ARCHIVE, "; a miniature or other file needs --allow-unpinned")
    sources = {split: SplitSource(f"{path}:{member}", partial(open_member, path, member))
               for split, member in MEMBERS.items()}
    prepared = word_corpus(sources, by_frequency=True, authors_ties=True,
                           extra={"source": source_record(path, digest, url, official=official)})
    if len(prepared.vocab) != VOCAB:
        problem = (f"{path}: vocabulary of {len(prepared.vocab):,} words, the paper's is {VOCAB:,}; "
                   "the tokenisation here disagrees with the authors'")
        if official:
            raise UserError(problem)
        prepared.warnings.append(problem)
    if not official:
        prepared.warnings.append(unpinned_warning(path, ARCHIVE, digest))
    return prepared


DATASET = Dataset(name="wikitext-103", help="WikiText-103 words, ids by decreasing frequency", prepare=prepare,
                  add_arguments=lambda parser: add_archive_arguments(parser, ARCHIVE), official_vocab=VOCAB,
                  official_sizes=SIZES, source_paths=archive_sources(ARCHIVE))
