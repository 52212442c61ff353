"""WordNet noun supersenses parsed from Debian's wordnet-base (/usr/share/wordnet/data.noun)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fedsub.config import DataConfig
from fedsub.data import load_splits, wordnet
from fedsub.data.wordnet import LEXNAMES, load_wordnet_supersense, parse_line
from fedsub.errors import ConfigError

DATA_NOUN = wordnet.WORDNET_DIR / "data.noun"
pytestmark = pytest.mark.skipif(not DATA_NOUN.is_file(), reason="needs Debian wordnet-base")


def _line(offset: str) -> str:
    with open(DATA_NOUN, encoding="utf-8") as handle:
        return next(line.rstrip("\n") for line in handle if line.startswith(offset + " "))


def test_parse_the_real_dog_line():
    offset, lex, pos, lemma, text = parse_line(_line("02084071"))
    assert (offset, pos, lemma) == ("02084071", "n", "dog")
    assert LEXNAMES[lex] == "noun.animal"
    assert text == (
        "a member of the genus Canis (probably descended from the common wolf) that has been "
        "domesticated by man since prehistoric times; occurs in many breeds"
    )


def test_lexnames_are_the_45_lexicographer_files():
    assert len(LEXNAMES) == 45
    assert LEXNAMES[3] == "noun.Tops" and LEXNAMES[28] == "noun.time" and LEXNAMES[29] == "verb.body"
    assert all(name.startswith("noun.") for name in LEXNAMES[3:29])


@pytest.mark.parametrize(
    ("offset", "supersense", "lemma", "text"),
    [
        (
            "03481172",
            "noun.artifact",
            "hammer",
            "a hand tool with a heavy rigid head and a handle; used to deliver an impulsive force by striking",
        ),
        (
            "07516354",
            "noun.feeling",
            "anger",
            "a strong emotion; a feeling that is oriented toward some real or supposed grievance",
        ),
        ("15169873", "noun.time", "week", "any period of seven consecutive days"),
        ("00001930", "noun.Tops", "physical entity", "an entity that has physical existence"),
    ],
)
def test_known_synsets(offset, supersense, lemma, text):
    source = load_wordnet_supersense()
    row = int(np.flatnonzero(source.columns["id"] == f"wn:n:{offset}")[0])
    assert source.names[source.labels[row]] == supersense
    assert source.columns["lemma"][row] == lemma  # first word, underscores to spaces
    assert source.columns["text"][row] == text
    assert source.columns["pos"][row] == "n"


def test_parse_reads_every_noun_synset():
    # its speed target (< 3 s) is measured by benchmarks/bench_wordnet.py, not asserted here
    offsets, lexnums, *_ = wordnet._parse_cached.__wrapped__(str(DATA_NOUN), 0, 0)
    assert len(offsets) == 82115  # WordNet 3.0 noun synsets
    assert set(np.unique(lexnums)) == set(range(3, 29))


def test_splits_keep_the_largest_classes_ordered_by_size():
    splits = load_splits(DataConfig(num_classes=5), seed=0)
    counts = Counter(splits.train["label"]) + Counter(splits.test["label"])
    sizes = [counts[c] for c in range(5)]
    assert sizes == sorted(sizes, reverse=True)
    assert splits.label_names[0] == "noun.artifact"
    all_counts = Counter(LEXNAMES[c] for c in load_wordnet_supersense().labels)
    assert splits.label_names == [name for name, _ in all_counts.most_common(5)]
    assert splits.input_column == "text" and splits.train.column_names == ["text", "label", "id", "lemma", "pos"]
    assert abs(len(splits.test) / (len(splits.train) + len(splits.test)) - 0.2) < 0.01


def test_caps_split_and_seed():
    cfg = DataConfig(num_classes=4, max_train_per_class=30, max_test_per_class=7)
    a, b, c = load_splits(cfg, seed=1), load_splits(cfg, seed=1), load_splits(cfg, seed=2)
    assert Counter(a.train["label"]) == {0: 30, 1: 30, 2: 30, 3: 30}
    assert Counter(a.test["label"]) == {0: 7, 1: 7, 2: 7, 3: 7}
    assert not set(a.train["id"]) & set(a.test["id"])
    assert a.train["id"] == b.train["id"] and a.test["id"] == b.test["id"]
    assert a.train["id"] != c.train["id"]


def test_missing_package_names_the_apt_command(monkeypatch, tmp_path):
    monkeypatch.setattr(wordnet, "WORDNET_DIR", tmp_path / "absent")
    with pytest.raises(
        ConfigError,
        match=r"^data.dataset=wordnet_supersense: .*data.noun not found; install it "
        r"with `apt-get install --no-install-recommends wordnet-base`$",
    ):
        load_splits(DataConfig(), seed=0)


def test_parses_a_hand_written_file(tmp_path):
    (tmp_path / "data.noun").write_text(
        "  1 license header line\n"
        "  2 another header line\n"
        '00000001 05 n 02 big_cat 0 lion 0 000 | a large feline; "the big cat roared"; "another"\n'
        "00000002 13 n 01 pie 0 000 | dish baked in pastry-lined pan often with a pastry top\n"
    )
    source = load_wordnet_supersense(tmp_path)
    assert list(source.columns["id"]) == ["wn:n:00000001", "wn:n:00000002"]
    assert [source.names[c] for c in source.labels] == ["noun.animal", "noun.food"]
    assert list(source.columns["text"]) == ["a large feline", "dish baked in pastry-lined pan often with a pastry top"]
    assert list(source.columns["lemma"]) == ["big cat", "pie"]
