"""Local .csv/.jsonl/.parquet files and `hf:` datasets (load_dataset mocked: no hub here)."""

from __future__ import annotations

import json
from collections import Counter

import datasets
import pandas as pd
import pytest

from fedsub.config import DataConfig
from fedsub.data import load_splits
from fedsub.data.files import encode_labels
from fedsub.errors import ConfigError

ROWS = [
    {"sentence": f"sentence number {i}", "category": ["sports", "arts", "news"][i % 3], "topic": f"t{i % 4}"}
    for i in range(60)
]


def _write(path, rows=ROWS):
    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_local_file_with_string_labels(hf_cache, suffix):
    path = _write(hf_cache / f"data{suffix}")
    cfg = DataConfig(dataset=str(path), text_column="sentence", label_column="category")
    splits = load_splits(cfg, seed=0)
    assert splits.label_names == ["arts", "news", "sports"]  # sorted names -> ids 0, 1, 2
    assert splits.input_column == "text"
    assert splits.train.column_names == ["text", "label", "id", "topic"]
    assert splits.train.features["label"].dtype == "int64" and splits.train.features["text"].dtype == "string"
    assert Counter(splits.train["label"]) == {0: 16, 1: 16, 2: 16}
    assert Counter(splits.test["label"]) == {0: 4, 1: 4, 2: 4}
    for row in splits.train:  # ids are the file's row numbers; text and label follow them
        source = ROWS[int(row["id"].removeprefix("row:"))]
        assert row["text"] == source["sentence"] and splits.label_names[row["label"]] == source["category"]
        assert row["topic"] == source["topic"]


def test_local_file_integer_labels_and_own_ids(hf_cache):
    rows = [{"id": f"doc{i}", "text": f"t {i}", "label": [10, 3, 7][i % 3]} for i in range(30)]
    splits = load_splits(DataConfig(dataset=str(_write(hf_cache / "ints.jsonl", rows))), seed=0)
    assert splits.label_names == ["3", "7", "10"]  # numeric order, not string order
    assert all(i.startswith("doc") for i in splits.train["id"])
    assert len(set(splits.train["id"]) | set(splits.test["id"])) == 30


def test_rows_without_text_or_label_are_dropped(hf_cache):
    rows = [{"text": None if i == 3 else f"t{i}", "label": None if i == 4 else "ab"[i % 2]} for i in range(20)]
    splits = load_splits(DataConfig(dataset=str(_write(hf_cache / "holes.jsonl", rows))), seed=0)
    ids = set(splits.train["id"]) | set(splits.test["id"])
    assert len(ids) == 18 and not {"row:3", "row:4"} & ids


def test_duplicate_ids_are_rejected(hf_cache):
    rows = [{"id": i % 5, "text": f"t{i}", "label": "ab"[i % 2]} for i in range(10)]
    with pytest.raises(ConfigError, match=r"^data.dataset: column 'id' of .*dup.csv has duplicate values"):
        load_splits(DataConfig(dataset=str(_write(hf_cache / "dup.csv", rows))), seed=0)


def test_encode_labels_class_label_and_missing():
    codes, names = encode_labels([[0, 2, -1, None]], datasets.ClassLabel(names=["a", "b", "c"]))
    assert names == ["a", "b", "c"] and codes[0].tolist() == [0, 2, -1, -1]
    codes, names = encode_labels([[2.0, 1.0, None], [1.0]], datasets.Value("float64"))
    assert names == ["1", "2"] and codes[0].tolist() == [1, 0, -1] and codes[1].tolist() == [0]


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (
            {"text_column": "body", "label_column": "category"},
            r"^data.text_column: column 'body' not in .*; columns are: sentence, category, topic$",
        ),
        (
            {"text_column": "sentence", "label_column": "kind"},
            r"^data.label_column: column 'kind' not in .*; columns are: sentence, category, topic$",
        ),
        (
            {"text_column": "sentence", "label_column": "category", "num_classes": 4},
            r"^data.num_classes: 4 requested but .* has 3 classes",
        ),
    ],
)
def test_bad_columns_and_classes(hf_cache, kwargs, pattern):
    path = _write(hf_cache / "data.csv")
    with pytest.raises(ConfigError, match=pattern):
        load_splits(DataConfig(dataset=str(path), **kwargs), seed=0)


def test_single_class_is_rejected(hf_cache):
    rows = [{"text": f"t{i}", "label": "only"} for i in range(10)]
    with pytest.raises(ConfigError, match=r"^data.label_column: .* has 1 class\(es\) with examples; need at least 2$"):
        load_splits(DataConfig(dataset=str(_write(hf_cache / "one.csv", rows))), seed=0)


def test_float_labels_are_rejected(hf_cache):
    rows = [{"text": f"t{i}", "label": i / 7} for i in range(10)]
    with pytest.raises(ConfigError, match=r"^data.label_column: column 'label' holds 0.14"):
        load_splits(DataConfig(dataset=str(_write(hf_cache / "reg.csv", rows))), seed=0)


@pytest.mark.parametrize(
    ("dataset", "pattern"),
    [
        ("/no/such/file.csv", r"^data.dataset: file /no/such/file.csv not found"),
        ("imagenet", r"^data.dataset: unknown dataset 'imagenet'; use wordnet_supersense, fashion_mnist, digits"),
        ("notes.txt", r"^data.dataset: unknown dataset 'notes.txt'"),
    ],
)
def test_bad_dataset_names(dataset, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_splits(DataConfig(dataset=dataset), seed=0)


def test_unreadable_file_is_one_line(hf_cache):
    path = hf_cache / "broken.parquet"
    path.write_bytes(b"definitely not parquet")
    with pytest.raises(ConfigError, match=r"^data.dataset: cannot read .*broken.parquet as parquet \(") as err:
        load_splits(DataConfig(dataset=str(path)), seed=0)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- hf:NAME (load_dataset mocked)


def _hub(monkeypatch, splits: dict[str, datasets.Dataset] | Exception):
    calls = []

    def fake_load_dataset(name, config=None, **kwargs):
        calls.append((name, config))
        if isinstance(splits, Exception):
            raise splits
        return datasets.DatasetDict(splits)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    return calls


def _hub_split(n: int, labels: list[int]) -> datasets.Dataset:
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    return datasets.Dataset.from_dict({"sentence": [f"s{i}" for i in range(n)], "label": labels}, features=features)


def test_hub_dataset_uses_its_test_split(monkeypatch):
    calls = _hub(monkeypatch, {"train": _hub_split(20, [0, 1] * 10), "test": _hub_split(6, [1, 0] * 3)})
    splits = load_splits(DataConfig(dataset="hf:acme/reviews:en", text_column="sentence"), seed=0)
    assert calls == [("acme/reviews", "en")]
    assert splits.label_names == ["neg", "pos"]
    assert len(splits.train) == 20 and len(splits.test) == 6
    assert splits.test["id"] == [f"test:{i}" for i in range(6)]


def test_hub_unlabelled_test_split_falls_back_to_validation(monkeypatch):
    _hub(
        monkeypatch,
        {
            "train": _hub_split(20, [0, 1] * 10),
            "test": _hub_split(4, [-1] * 4),
            "validation": _hub_split(8, [0, 1] * 4),
        },
    )
    splits = load_splits(DataConfig(dataset="hf:glue:sst2", text_column="sentence"), seed=0)
    assert splits.test["id"] == [f"validation:{i}" for i in range(8)]


def test_hub_train_only_is_split_by_seed(monkeypatch):
    _hub(monkeypatch, {"train": _hub_split(40, [0, 1] * 20)})
    splits = load_splits(DataConfig(dataset="hf:acme/reviews", text_column="sentence", test_fraction=0.25), seed=0)
    assert len(splits.test) == 10 and all(i.startswith("train:") for i in splits.test["id"])


def test_hub_failure_is_one_line(monkeypatch):
    _hub(monkeypatch, ConnectionError("Couldn't reach 'acme/reviews' on the Hub (LocalEntryNotFoundError)\nmore"))
    with pytest.raises(ConfigError) as err:
        load_splits(DataConfig(dataset="hf:acme/reviews"), seed=0)
    message = str(err.value)
    assert message.startswith("data.dataset=hf:acme/reviews: cannot load it from the Hugging Face Hub (ConnectionError")
    assert "\n" not in message and "local .csv/.jsonl/.parquet file" in message
