"""Fashion-MNIST (Debian dataset-fashion-mnist), sklearn digits, and the IDX reader."""

from __future__ import annotations

import gzip
import struct
from collections import Counter

import numpy as np
import pytest

from fedsub.config import DataConfig
from fedsub.data import images, load_splits
from fedsub.data.images import FASHION_MNIST_CLASSES, read_idx
from fedsub.errors import ConfigError

HAS_FMNIST = (images.FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz").is_file()


def _write_idx(path, array: np.ndarray, code: int = 0x08) -> None:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(">u1" if code == 0x08 else ">i4").tobytes())


def test_read_idx_round_trips(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x-idx3-ubyte.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "x-idx3-ubyte.gz"), array)
    ints = np.array([5, -7, 100000], dtype=np.int32)
    _write_idx(tmp_path / "y-idx1-ubyte.gz", ints, code=0x0C)
    np.testing.assert_array_equal(read_idx(tmp_path / "y-idx1-ubyte.gz"), ints)


def test_read_idx_rejects_other_files(tmp_path):
    path = tmp_path / "bad-idx1-ubyte.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b"PK\x03\x04 not idx")
    with pytest.raises(ConfigError, match="not an IDX file"):
        read_idx(path)


@pytest.mark.skipif(not HAS_FMNIST, reason="needs Debian dataset-fashion-mnist")
def test_fashion_mnist_official_split_with_caps():
    splits = load_splits(DataConfig(dataset="fashion_mnist", max_train_per_class=6, max_test_per_class=2), seed=0)
    assert splits.label_names == FASHION_MNIST_CLASSES and splits.input_column == "image"
    assert splits.train.column_names == ["image", "label", "id"]
    assert Counter(splits.train["label"]) == {c: 6 for c in range(10)}
    assert Counter(splits.test["label"]) == {c: 2 for c in range(10)}
    assert all(i.startswith("fmnist:train:") for i in splits.train["id"])
    assert all(i.startswith("fmnist:test:") for i in splits.test["id"])
    # stored as uint8; datasets' numpy format widens ints unless asked for the dtype
    batch = splits.train.with_format("numpy", dtype=np.uint8)[:]["image"]
    assert batch.shape == (60, 28, 28) and batch.dtype == np.uint8 and batch.max() > 200


@pytest.mark.skipif(not HAS_FMNIST, reason="needs Debian dataset-fashion-mnist")
def test_fashion_mnist_rows_match_the_raw_files():
    splits = load_splits(DataConfig(dataset="fashion_mnist", max_train_per_class=1, max_test_per_class=1), seed=3)
    raw_images = read_idx(images.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    raw_labels = read_idx(images.FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    rows = splits.test.with_format("numpy", dtype=np.uint8)[:]
    for image, label, ident in zip(rows["image"], rows["label"], rows["id"]):
        index = int(str(ident).rsplit(":", 1)[1])
        np.testing.assert_array_equal(image, raw_images[index])
        assert label == raw_labels[index]


def test_fashion_mnist_missing_names_the_apt_command(monkeypatch, tmp_path):
    monkeypatch.setattr(images, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(ConfigError, match="apt-get install --no-install-recommends dataset-fashion-mnist"):
        load_splits(DataConfig(dataset="fashion_mnist"), seed=0)


def test_digits_stratified_split():
    splits = load_splits(DataConfig(dataset="digits", test_fraction=0.25), seed=0)
    assert len(splits.train) + len(splits.test) == 1797
    assert splits.label_names == [str(d) for d in range(10)]
    train, test = Counter(splits.train["label"]), Counter(splits.test["label"])
    for digit in range(10):  # each class split 75/25 up to rounding
        assert abs(test[digit] - 0.25 * (train[digit] + test[digit])) <= 0.5
    pixels = splits.train.with_format("numpy", dtype=np.uint8)[:]["image"]
    assert pixels.shape[1:] == (8, 8) and pixels.max() == 255  # 0..16 rescaled to 0..255
    assert not set(splits.train["id"]) & set(splits.test["id"])


def test_digits_seeds_give_different_splits_and_num_classes_keeps_original_order():
    a = load_splits(DataConfig(dataset="digits", num_classes=3), seed=0)
    b = load_splits(DataConfig(dataset="digits", num_classes=3), seed=1)
    assert a.test["id"] != b.test["id"]
    assert len(a.label_names) == 3 and a.label_names == sorted(a.label_names)
    assert set(a.train["label"]) == {0, 1, 2}
