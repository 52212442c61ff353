"""Offline image datasets: Fashion-MNIST (Debian `dataset-fashion-mnist`) and sklearn's digits."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from fedsub.data.source import Source
from fedsub.errors import ConfigError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_HINT = "apt-get install --no-install-recommends dataset-fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (LeCun's MNIST format, optionally gzipped): 2 zero bytes, a dtype code,
    the number of dimensions, then each dimension as a big-endian uint32, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise ConfigError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()}); reinstall the dataset")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, _IDX_DTYPES[raw[2]], count=int(np.prod(shape)), offset=4 + 4 * ndim)
    return data.reshape(shape)


def load_fashion_mnist(root: Path | None = None) -> tuple[Source, Source]:
    """The official 60k/10k split as two `Source`s; images stay (N, 28, 28) uint8."""
    root = Path(root or FASHION_MNIST_DIR)
    return _fashion_split(root, "train"), _fashion_split(root, "t10k")


def _fashion_split(root: Path, prefix: str) -> Source:
    paths = [root / f"{prefix}-{kind}-idx{dim}-ubyte.gz" for kind, dim in (("images", 3), ("labels", 1))]
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"data.dataset=fashion_mnist: {path} not found; install it with `{FASHION_MNIST_HINT}`")
    images, labels = read_idx(paths[0]), read_idx(paths[1]).astype(np.int64)
    split = "train" if prefix == "train" else "test"
    ids = np.char.add(f"fmnist:{split}:", np.arange(len(labels)).astype(str)).astype(object)
    return Source(
        columns={"image": images, "id": ids}, labels=labels, names=list(FASHION_MNIST_CLASSES), input_column="image"
    )


def load_digits_source() -> Source:
    """sklearn's bundled 8x8 digits (1797 images), rescaled from 0..16 to 0..255 uint8 so every
    image dataset here shares one pixel range."""
    from sklearn.datasets import load_digits  # late: start-up, sklearn import costs ~0.5 s

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    ids = np.char.add("digits:", np.arange(len(images)).astype(str)).astype(object)
    return Source(
        columns={"image": images, "id": ids},
        labels=bunch.target.astype(np.int64),
        names=[str(d) for d in bunch.target_names],
        input_column="image",
    )
