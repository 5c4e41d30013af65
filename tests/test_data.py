"""Data preparation: real corpora through the real code paths, the lexicon's floor, and bad input."""
from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import experiments.data.archive as archive_module
import experiments.data.datasets.text as text_module
from experiments.data import EOS, DataConfig, decode_bytes, encode_text, load_corpus, main
from experiments.data.datasets.lexicon import LexiconSpec, entropy_floor_bpc, generate_splits, make_lexicon
from model.errors import ConfigError, UserError
from tests.conftest import PROJECT_ROOT

ENWIK5_USED_BYTES = 100_000
WIKITEXT2_TOKENS = {"train": 2_088_628, "valid": 217_646, "test": 245_569}
WIKITEXT2_VOCAB = 33_278
SMALL_LEXICON = ["--num-words", "60", "--train-chars", "20000", "--valid-chars", "2000", "--test-chars", "2000"]


def prepare(*argv: str | Path) -> None:
    assert main(["prepare", *map(str, argv)]) == 0


def all_ids(path: Path) -> np.ndarray:
    corpus = load_corpus(path)
    return np.concatenate([corpus.split(split) for split in ("train", "valid", "test")])


def assert_first_appearance_order(ids: np.ndarray) -> None:
    """Id k first occurs before id k + 1: the authors' vocabulary order."""
    values, first = np.unique(ids, return_index=True)
    assert np.array_equal(values, np.arange(len(values)))
    assert np.all(np.diff(first) > 0)


# ---------------------------------------------------------------- real corpora


def test_enwik5_goes_through_the_enwik8_path_with_a_scaled_split(shared_data: Path, tmp_path: Path) -> None:
    enwik5 = shared_data / "enwik8" / "enwik5"
    prepare("enwik8", "--source", enwik5, "--scaled-split", ENWIK5_USED_BYTES, "--out", tmp_path / "raw")
    corpus = load_corpus(tmp_path / "raw", dataset="enwik8")
    assert {s: len(corpus.split(s)) for s in ("train", "valid", "test")} == {"train": 90_000, "valid": 5_000, "test": 5_000}
    assert isinstance(corpus.split("train"), np.memmap)
    assert (corpus.level, corpus.unit, corpus.meta["dtype"]) == ("char", "bpc", "uint8")
    source_bytes = enwik5.read_bytes()[:ENWIK5_USED_BYTES]
    assert decode_bytes(all_ids(tmp_path / "raw"), corpus.vocab) == source_bytes
    assert np.array_equal(encode_text(source_bytes, corpus.meta), all_ids(tmp_path / "raw"))
    assert_first_appearance_order(all_ids(tmp_path / "raw"))
    assert corpus.meta["source"]["sha256"] == hashlib.sha256(enwik5.read_bytes()).hexdigest()
    assert corpus.meta["source"]["official"] is False and corpus.meta["source"]["scaled_split"] == ENWIK5_USED_BYTES


def test_enwik5_zipped_like_the_official_archive_gives_the_same_corpus(shared_data: Path, tmp_path: Path) -> None:
    archive = tmp_path / "enwik8.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("enwik8", (shared_data / "enwik8" / "enwik5").read_bytes()[:ENWIK5_USED_BYTES])
    prepare("enwik8", "--source", tmp_path, "--scaled-split", ENWIK5_USED_BYTES, "--out", tmp_path / "zipped")
    prepare("enwik8", "--source", shared_data / "enwik8" / "enwik5", "--scaled-split", ENWIK5_USED_BYTES,
            "--out", tmp_path / "raw")
    for name in ("train.bin", "valid.bin", "test.bin"):
        assert (tmp_path / "zipped" / name).read_bytes() == (tmp_path / "raw" / name).read_bytes()


def test_wikitext2_word_level_matches_the_published_counts(shared_data: Path, tmp_path: Path) -> None:
    prepare("text", "--source", shared_data / "wikitext-2", "--level", "word", "--out", tmp_path / "w")
    corpus = load_corpus(tmp_path / "w", dataset="text")
    assert {s: len(corpus.split(s)) for s in WIKITEXT2_TOKENS} == WIKITEXT2_TOKENS
    assert len(corpus.vocab) == WIKITEXT2_VOCAB and corpus.meta["dtype"] == "uint16"
    assert (corpus.level, corpus.unit) == ("word", "ppl")
    assert corpus.vocab[0] == EOS  # the file opens with a blank line
    train_text = (shared_data / "wikitext-2" / "train.txt").read_text(encoding="utf-8")
    assert int((corpus.split("train") == corpus.vocab.index(EOS)).sum()) == train_text.count("\n")
    assert np.array_equal(encode_text(shared_data / "wikitext-2" / "valid.txt", corpus.meta), corpus.split("valid"))


def test_wikitext2_char_level_round_trips_bytes(shared_data: Path, tmp_path: Path) -> None:
    prepare("text", "--source", shared_data / "wikitext-2", "--level", "char", "--out", tmp_path / "c")
    corpus = load_corpus(tmp_path / "c")
    for split in ("train", "valid", "test"):
        raw = (shared_data / "wikitext-2" / f"{split}.txt").read_bytes()
        assert len(corpus.split(split)) == len(raw)
    assert decode_bytes(corpus.split("valid"), corpus.vocab) == (shared_data / "wikitext-2" / "valid.txt").read_bytes()
    assert EOS in corpus.vocab and "\n" not in corpus.vocab


def test_frequency_order_sorts_by_train_count_with_ties_by_first_appearance(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.txt").write_text("b a c\na c\nd\n", encoding="utf-8")
    (source / "valid.txt").write_text("a new\n", encoding="utf-8")
    (source / "test.txt").write_text("later a\n", encoding="utf-8")
    prepare("text", "--source", source, "--level", "word", "--vocab-order", "frequency", "--out", tmp_path / "f")
    prepare("text", "--source", source, "--level", "word", "--out", tmp_path / "a")
    # train counts: <eos> 3, a 2, c 2, b 1, d 1; then valid's and test's new words in order
    assert load_corpus(tmp_path / "f").vocab == [EOS, "a", "c", "b", "d", "new", "later"]
    assert load_corpus(tmp_path / "a").vocab == ["b", "a", "c", EOS, "d", "new", "later"]


def test_a_split_with_two_candidate_files_is_refused(tmp_path: Path) -> None:
    """train.txt next to wiki.train.tokens: one of them was taken silently."""
    source = tmp_path / "src"
    source.mkdir()
    for split in ("train", "valid", "test"):
        (source / f"{split}.txt").write_text("a b\n", encoding="utf-8")
    (source / "wiki.train.tokens").write_text("c d\n", encoding="utf-8")
    with pytest.raises(UserError, match="train.txt and wiki.train.tokens both hold the train split"):
        main(["prepare", "text", "--source", str(source), "--level", "word", "--out", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------- the embedded corpus


def independent_floor(words: list[bytes], exponent: float) -> float:
    weights = [1.0 / (rank ** exponent) for rank in range(1, len(words) + 1)]
    total = sum(weights)
    entropy = 0.0
    chars_per_word = 0.0
    for weight, word in zip(weights, words):
        p = weight / total
        entropy -= p * math.log2(p)
        chars_per_word += p * (len(word) + 1)
    return entropy / chars_per_word


def test_lexicon_floor_matches_an_independent_computation(tmp_path: Path) -> None:
    spec = LexiconSpec(num_words=300, seed=7)
    lexicon = make_lexicon(spec)
    words = lexicon.words
    assert len(set(words)) == 300
    assert all(3 <= len(w) <= 8 and w.isalpha() and w.islower() for w in words)
    assert entropy_floor_bpc(lexicon) == pytest.approx(independent_floor(words, 1.0), rel=1e-12)
    prepare("lexicon", "--num-words", 300, "--seed", 7, "--out", tmp_path / "lex")
    assert load_corpus(tmp_path / "lex").meta["entropy_floor_bpc"] == pytest.approx(independent_floor(words, 1.0), rel=1e-12)


def test_lexicon_text_has_the_floor_as_its_empirical_code_length() -> None:
    spec = LexiconSpec(num_words=300, seed=7, train_chars=400_000)
    lexicon, texts = generate_splits(spec)
    rank_of = {word: rank for rank, word in enumerate(lexicon.words, 1)}
    normaliser = sum(1.0 / rank for rank in range(1, 301))
    words = texts["train"].split(b" ")[:-1]  # the last word may be cut by the size limit
    bits = sum(math.log2(normaliser * rank_of[w]) for w in words)
    chars = sum(len(w) + 1 for w in words)
    assert bits / chars == pytest.approx(entropy_floor_bpc(lexicon), rel=0.02)


def test_lexicon_is_deterministic_and_27_symbols_without_eos(tmp_path: Path) -> None:
    prepare("lexicon", *SMALL_LEXICON, "--seed", 3, "--out", tmp_path / "one")
    prepare("lexicon", *SMALL_LEXICON, "--seed", 3, "--out", tmp_path / "two")
    prepare("lexicon", *SMALL_LEXICON, "--seed", 4, "--out", tmp_path / "other")
    for name in ("train.bin", "valid.bin", "test.bin", "meta.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert (tmp_path / "one" / "train.bin").read_bytes() != (tmp_path / "other" / "train.bin").read_bytes()
    corpus = load_corpus(tmp_path / "one")
    assert sorted(corpus.vocab) == sorted(" abcdefghijklmnopqrstuvwxyz") and corpus.meta["level"] == "char"
    assert_first_appearance_order(all_ids(tmp_path / "one"))


def test_lexicon_valid_and_test_do_not_depend_on_the_train_size() -> None:
    _, small = generate_splits(LexiconSpec(seed=5, train_chars=1_000))
    _, large = generate_splits(LexiconSpec(seed=5, train_chars=50_000))
    assert (small["valid"], small["test"]) == (large["valid"], large["test"])
    assert b"\n" not in large["train"] and len(large["train"]) == 50_000


# ---------------------------------------------------------------- loading and config


def test_load_rejects_missing_incomplete_and_inconsistent_data(tmp_path: Path) -> None:
    prepare("lexicon", *SMALL_LEXICON, "--out", tmp_path / "lex")
    with pytest.raises(UserError, match="no prepared data"):
        load_corpus(tmp_path / "absent")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train.bin").write_bytes(b"abc")
    with pytest.raises(UserError, match="no meta.json"):
        load_corpus(tmp_path / "half")
    with pytest.raises(ConfigError, match="holds 'lexicon'"):
        load_corpus(tmp_path / "lex", dataset="enwik8")
    (tmp_path / "lex" / "valid.bin").write_bytes(b"x" * 10)
    with pytest.raises(UserError, match="valid.bin: 10 bytes") as err:
        load_corpus(tmp_path / "lex")
    assert "\n" not in str(err.value)


def test_encode_text_maps_unknown_words_to_unk_only_when_the_vocabulary_has_it() -> None:
    with_unk = {"level": "word", "vocab": [EOS, "a", "<unk>"]}
    assert encode_text(b"a zzz\n", with_unk).tolist() == [1, 2, 0]
    with pytest.raises(UserError, match="'zzz' is not in the vocabulary"):
        encode_text(b"a zzz\n", {"level": "word", "vocab": [EOS, "a"]})
    with pytest.raises(UserError, match="byte 98 at offset 1"):
        encode_text(b"ab", {"level": "char", "vocab": ["a", EOS]})


def test_data_config_validates_its_fields() -> None:
    assert DataConfig(dataset="lexicon", path="data/lexicon").dataset == "lexicon"
    with pytest.raises(ConfigError) as err:
        DataConfig(dataset="enwik9", path="data/x")
    assert err.value.field == "dataset"
    with pytest.raises(ConfigError) as err:
        DataConfig(dataset="text", path="")
    assert err.value.field == "path"


def test_force_replaces_prepared_data_and_leaves_no_scratch(tmp_path: Path) -> None:
    prepare("lexicon", *SMALL_LEXICON, "--seed", 1, "--out", tmp_path / "lex")
    prepare("lexicon", *SMALL_LEXICON, "--seed", 2, "--out", tmp_path / "lex", "--force")
    assert load_corpus(tmp_path / "lex").meta["source"]["spec"]["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lex"]


def small_text_source(folder: Path, shared_data: Path) -> Path:
    folder.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (folder / f"{split}.txt").write_bytes((shared_data / "wikitext-2" / f"{split}.txt").read_bytes()[:5000])
    return folder


def test_force_never_replaces_a_source_or_a_folder_that_is_not_prepared_data(shared_data: Path, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """--out equal to, above or below --source (also through a symlink, also an archive's folder) deleted the
    source with --force, and the refusal without it recommended --force."""
    source = small_text_source(tmp_path / "s" / "wt", shared_data)
    (tmp_path / "s" / "notes.txt").write_text("notes\n")
    (tmp_path / "link").symlink_to(tmp_path / "s")
    archive = tmp_path / "z" / "enwik8.zip"
    archive.parent.mkdir()
    archive.write_bytes((shared_data / "enwik8" / "enwik5").read_bytes())
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for module, name in ((text_module, "split_file"), (archive_module, "sha256_file")):
        monkeypatch.setattr(module, name, lambda *_: pytest.fail("read a source before refusing --out"))
    text = ["text", "--source", source, "--level", "char"]
    enwik = ["enwik8", "--source", archive.parent, "--scaled-split", ENWIK5_USED_BYTES]
    cases = [("holds the source", [*text, "--out", tmp_path / "s"]), ("is the source", [*text, "--out", source]),
             ("lies inside the source", [*text, "--out", source / "x"]),
             ("holds the source", [*text, "--out", tmp_path / "link"]),
             ("holds the source", [*enwik, "--out", archive.parent])]
    for expected, argv in cases:
        for force in ([], ["--force"]):
            with pytest.raises(UserError, match=expected) as err:
                main(["prepare", *map(str, argv), *force])
            assert "--force" not in str(err.value) and "\n" not in str(err.value)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_force_replaces_only_prepared_data_or_an_empty_folder(shared_data: Path, tmp_path: Path) -> None:
    """A folder of someone's files was deleted by --force, and the refusal without it recommended --force."""
    source = small_text_source(tmp_path / "src", shared_data)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("notes\n")
    prepare("lexicon", *SMALL_LEXICON, "--out", tmp_path / "lex")
    (tmp_path / "lex" / "notes.txt").write_text("added by hand\n")  # prepared, but no longer only prepared data
    for out in (theirs, tmp_path / "lex"):
        for force in ([], ["--force"]):
            with pytest.raises(UserError, match="is not prepared data.*; choose another --out$") as err:
                main(["prepare", "text", "--source", str(source), "--level", "char", "--out", str(out), *force])
            assert "--force" not in str(err.value)
    assert (theirs / "notes.txt").is_file() and (tmp_path / "lex" / "notes.txt").is_file()
    (tmp_path / "empty").mkdir()
    prepare("text", "--source", source, "--level", "char", "--out", tmp_path / "empty", "--force")
    assert load_corpus(tmp_path / "empty").meta["dataset"] == "text"


def test_force_through_a_symlinked_out_prepares_into_its_target(tmp_path: Path) -> None:
    """--force replaced a link (data/lexicon -> a scratch disk) by a real folder beside it, silently
    (a fresh-user finding): the data is prepared where the link points, and the link stays."""
    prepare("lexicon", *SMALL_LEXICON, "--out", tmp_path / "scratch" / "lex")
    link = tmp_path / "project-data"
    link.symlink_to(tmp_path / "scratch" / "lex")
    prepare("lexicon", "--num-words", "30", *SMALL_LEXICON[2:], "--out", link, "--force")
    assert link.is_symlink() and load_corpus(tmp_path / "scratch" / "lex").meta == load_corpus(link).meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project-data", "scratch"]


def test_a_vocabulary_of_one_symbol_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    """Each split "\n\n\n" was prepared as "vocabulary 1", which training then refused with --force advice."""
    source = tmp_path / "newlines"
    source.mkdir()
    for split in ("train", "valid", "test"):
        (source / f"{split}.txt").write_text("\n\n\n")
    for level in ("char", "word"):
        with pytest.raises(UserError, match=f"^{source}: .*1 symbol.*a language model needs at least 2 symbols$"):
            main(["prepare", "text", "--source", str(source), "--level", level, "--out", str(tmp_path / "out")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["newlines"]


# ---------------------------------------------------------------- bad input from the command line


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def bad_input_cases(tmp: Path, existing: Path) -> dict[str, list[str | Path]]:
    enwik_like = b"<mediawiki> some text\n" * 5_000
    archive = tmp / "enwik8.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("enwik8", enwik_like)
    truncated = tmp / "truncated.zip"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    empty = tmp / "empty.zip"
    zipfile.ZipFile(empty, "w").close()  # starts with the end record, PK\x05\x06: was read as 22 raw bytes
    wrong = tmp / "wrong" / "enwik8.zip"
    wrong.parent.mkdir()
    wrong.write_bytes(bytes(36_445_475))  # the official size, not the official bytes
    replace = ["--out", existing, "--force"]  # even --force must not touch data when the input is bad
    return {
        "unknown name": ["prepare", "enwik9", *replace],
        "missing source": ["prepare", "enwik8", "--source", tmp / "absent.zip", *replace],
        "missing text directory": ["prepare", "text", "--source", tmp / "absent", "--level", "word", *replace],
        "truncated zip": ["prepare", "enwik8", "--source", truncated, "--scaled-split", "1000", *replace],
        "truncated official zip": ["prepare", "enwik8", "--source", truncated, *replace],
        "empty zip": ["prepare", "enwik8", "--source", empty, "--allow-unpinned", *replace],
        "empty zip for text8": ["prepare", "text8", "--source", empty, "--allow-unpinned", *replace],
        "wrong checksum": ["prepare", "enwik8", "--source", wrong.parent, *replace],
        "wrong wikitext-103 zip": ["prepare", "wikitext-103", "--source", archive, *replace],
        "source too short for the split": ["prepare", "enwik8", "--source", archive, "--scaled-split", "200000", *replace],
        "bad scaled split": ["prepare", "enwik8", "--source", archive, "--scaled-split", "1001", *replace],
        "option of another corpus": ["prepare", "enwik8", "--level", "char", *replace],
        "text without level": ["prepare", "text", "--source", tmp, *replace],
        "bad lexicon parameter": ["prepare", "lexicon", "--num-words", "0", *replace],
        "existing output without --force": ["prepare", "lexicon", *SMALL_LEXICON, "--out", existing],
    }


def run_data_cli(argv: list[str | Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "experiments.data", *map(str, argv)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_every_bad_input_is_one_line_exit_2_and_leaves_prepared_data_untouched(tmp_path: Path) -> None:
    existing = tmp_path / "out" / "prepared"
    prepare("lexicon", *SMALL_LEXICON, "--out", existing)
    before = snapshot(existing)
    for case, argv in bad_input_cases(tmp_path, existing).items():
        result = run_data_cli(argv)
        lines = result.stderr.splitlines()
        assert result.returncode == 2, (case, result.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (case, result.stderr)
        assert snapshot(existing) == before, case
        assert [p.name for p in existing.parent.iterdir()] == ["prepared"], case  # no scratch left behind


def test_loading_a_missing_directory_from_a_command_is_one_line_exit_2(tmp_path: Path) -> None:
    code = ("import sys; from experiments.cli import run_cli; from experiments.data import load_corpus; "
            "run_cli(lambda argv: load_corpus(sys.argv[1]) and 0)")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "absent")], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "no prepared data" in result.stderr


def test_meta_json_records_the_schema(tmp_path: Path) -> None:
    prepare("lexicon", *SMALL_LEXICON, "--out", tmp_path / "lex")
    meta = json.loads((tmp_path / "lex" / "meta.json").read_text())
    assert {"format", "dataset", "level", "vocab", "vocab_order", "sizes", "dtype", "sha256", "source",
            "entropy_floor_bpc"} <= set(meta)
    for name, digest in meta["sha256"].items():
        assert hashlib.sha256((tmp_path / "lex" / name).read_bytes()).hexdigest() == digest
    assert len(set(meta["vocab"])) == len(meta["vocab"])
