"""The split/cap/class-selection steps on hand-sized label arrays."""

from __future__ import annotations

import numpy as np
import pytest

from fedsub.core.seeding import derive_rng, derive_seed
from fedsub.data.source import Source, to_dataset
from fedsub.data.splits import cap_per_class, choose_classes, stratified_split
from fedsub.errors import ConfigError


def _source(labels, names, order_by_size=False) -> Source:
    labels = np.asarray(labels, dtype=np.int64)
    return Source(columns={}, labels=labels, names=names, input_column="text", order_by_size=order_by_size)


def test_stratified_split_per_class_counts():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1 + [-1] * 3)
    train, test = stratified_split(labels, 0.2, derive_rng(0, 1))
    assert np.bincount(labels[test], minlength=3).tolist() == [2, 1, 0]  # round(0.2 n); singleton stays in train
    assert np.bincount(labels[train], minlength=3).tolist() == [8, 4, 1]
    assert not set(train) & set(test) and -1 not in labels[np.concatenate([train, test])]
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)


def test_stratified_split_is_seeded():
    labels = np.repeat(np.arange(3), 20)
    a = stratified_split(labels, 0.3, derive_rng(5, 1))[1]
    b = stratified_split(labels, 0.3, derive_rng(5, 1))[1]
    c = stratified_split(labels, 0.3, derive_rng(6, 1))[1]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_cap_per_class_keeps_small_classes_whole():
    labels = np.array([0] * 6 + [1] * 2 + [2] * 4)
    rows = np.arange(len(labels))
    kept = cap_per_class(rows, labels, 3, derive_rng(0))
    assert np.bincount(labels[kept]).tolist() == [3, 2, 3]
    assert cap_per_class(rows, labels, None, derive_rng(0)) is rows


def test_choose_classes_by_size_or_original_order():
    labels = [0, 1, 1, 1, 2, 2, 3, -1]
    remap, names = choose_classes(_source(labels, ["a", "b", "c", "d"], order_by_size=True), None, 2, "x")
    assert names == ["b", "c"] and remap[[0, 1, 2, 3, -1]].tolist() == [-1, 0, 1, -1, -1]
    remap, names = choose_classes(_source([0, 0, 2, 2, 2, 1], ["a", "b", "c"]), None, 2, "x")
    assert names == ["a", "c"] and remap[[0, 1, 2]].tolist() == [0, -1, 1]  # largest 2, original order


def test_choose_classes_counts_the_test_split_too_and_skips_empty_classes():
    train, test = _source([0, 1, 1], ["a", "b", "c", "d"]), _source([0, 0, 3], ["a", "b", "c", "d"])
    remap, names = choose_classes(train, test, None, "x")
    assert names == ["a", "b", "d"] and remap[[0, 1, 2, 3]].tolist() == [0, 1, -1, 2]
    with pytest.raises(ConfigError, match=r"^data.num_classes: 4 requested but x has 3 classes"):
        choose_classes(train, test, 4, "x")


def test_derived_streams_are_independent_and_accept_negative_seeds():
    assert derive_seed(0, 1) != derive_seed(0, 2) != derive_seed(1, 1)
    assert derive_rng(-3, 1).integers(1 << 30) == derive_rng(-3, 1).integers(1 << 30)


@pytest.mark.parametrize("shape", [(5, 4, 3), (5, 4, 3, 2)])
def test_image_arrays_round_trip_through_arrow(shape):
    images = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    ids = np.array([f"im{i}" for i in range(5)], dtype=object)
    source = Source(
        columns={"image": images, "id": ids}, labels=np.zeros(5, np.int64), names=["a"], input_column="image"
    )
    ds = to_dataset(source, np.array([1, 3, 4]), np.array([0, 1, 1]))
    assert ds.column_names == ["image", "label", "id"]
    assert type(ds.features["image"]).__name__ == f"Array{len(shape) - 1}D"
    np.testing.assert_array_equal(ds.with_format("numpy", dtype=np.uint8)[:]["image"], images[[1, 3, 4]])
    assert ds["id"] == ["im1", "im3", "im4"] and ds["label"] == [0, 1, 1]


def test_val_split_is_carved_from_train_and_eval_split_val_never_loads_test(tmp_path):
    """60 rows of 3 classes in a CSV; test 20% (4 per class), then val 25% of the 16 left per class."""
    from fedsub.config import DataConfig
    from fedsub.data.splits import load_splits

    rows = ["text,label"] + [f"row {i},{'abc'[i % 3]}" for i in range(60)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    base = {"dataset": str(tmp_path / "d.csv"), "test_fraction": 0.2}
    plain = load_splits(DataConfig(**base), seed=0)
    held = load_splits(DataConfig(**base, val_fraction=0.25), seed=0)
    tuning = load_splits(DataConfig(**base, val_fraction=0.25, eval_split="val"), seed=0)
    assert len(plain.train) == 48 and len(held.train) == 36 and len(tuning.test) == 12
    assert np.bincount(tuning.test["label"]).tolist() == [4, 4, 4]
    assert held.test["id"] == plain.test["id"]  # the test set does not depend on the val split
    assert held.train["id"] == tuning.train["id"]  # tuning and testing train on the same data
    ids = set(tuning.test["id"])
    assert not ids & set(held.train["id"]) and not ids & set(plain.test["id"]) and ids <= set(plain.train["id"])
    other = load_splits(DataConfig(**base, val_fraction=0.25, eval_split="val"), seed=1)
    assert set(other.test["id"]) != ids  # seeded
    with pytest.raises(ValueError, match="data.val_fraction"):
        DataConfig(**base, eval_split="val")
