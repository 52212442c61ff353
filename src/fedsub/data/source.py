"""A loaded dataset before class filtering, splitting and capping, and how it becomes a `Dataset`.

Loaders return a `Source`: label codes as one int array plus the other columns, either as numpy
arrays (builtins: only the selected rows are ever turned into Arrow) or as a `datasets.Dataset`
(HF and local files: rows are picked with `select`).
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow as pa
from datasets.features.features import Array2DExtensionType, Array3DExtensionType


@dataclass
class Source:
    """Columns of one split; `labels[i]` indexes `names`. `columns` holds the input column
    ("text" or "image"), "id" and any grouping columns, but not "label"."""

    columns: dict[str, np.ndarray] | datasets.Dataset
    labels: np.ndarray
    names: list[str]
    input_column: str
    order_by_size: bool = False  # relabel classes by size (when codes carry no meaning)

    def __len__(self) -> int:
        return len(self.labels)


def to_dataset(source: Source, rows: np.ndarray, labels: np.ndarray) -> datasets.Dataset:
    """Rows `rows` of `source` as a Dataset: input column, "label" (int64, the new codes), "id",
    then the remaining columns."""
    if isinstance(source.columns, datasets.Dataset):
        picked = source.columns.select(rows).with_format("arrow")[:]
        # Rebuilt without the schema metadata: it would carry the old label feature along.
        arrays = {name: picked.column(name) for name in picked.column_names}
    else:
        arrays = {name: _arrow(values[rows]) for name, values in source.columns.items()}
    arrays["label"] = pa.array(labels, pa.int64())
    first = [source.input_column, "label", "id"]
    order = first + [name for name in arrays if name not in first]
    return datasets.Dataset(pa.table({name: arrays[name] for name in order}))


def _arrow(values: np.ndarray) -> pa.Array:
    """numpy -> Arrow; uint8 (N,H,W[,C]) arrays become datasets' Array2D/Array3D columns."""
    if values.dtype == np.uint8 and values.ndim in (3, 4):
        return _image_array(values)
    if values.dtype.kind in "OUS":
        return pa.array(values.astype(str).tolist(), pa.string())
    return pa.array(values)


def _image_array(images: np.ndarray) -> pa.ExtensionArray:
    """Build the nested list storage directly: ~30x faster than `Dataset.from_dict` with an
    Array2D feature (0.1 s vs 3.3 s for 60k 28x28 images, measured)."""
    shape = images.shape[1:]
    kind = Array2DExtensionType if len(shape) == 2 else Array3DExtensionType
    array: pa.Array = pa.array(np.ascontiguousarray(images).reshape(-1))
    count = images.size
    for size in reversed(shape):
        count //= size
        offsets = pa.array(np.arange(0, count * size + 1, size, dtype=np.int32))
        array = pa.ListArray.from_arrays(offsets, array)
    return pa.ExtensionArray.from_storage(kind(shape, "uint8"), array)
