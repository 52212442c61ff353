"""A file that one party holds whole: a Flower node's own training or held-out data, or the server's
own test file (config `data.source: nodes`).

It goes through the same loaders as a global dataset (`fedsub.data.splits.load_sources`: local
CSV / JSONL / JSON / parquet, or `hf:NAME`), with the columns the experiment config names, and its
labels are coded against the declared label space `data.labels`, so every party agrees on what
class 3 is. Every labelled row is kept, in file order (no split, no caps: the party decided what
its file holds). What disagrees with the config is a ConfigError naming `where` (the node and the
path): a missing or unreadable file, a missing column, a label outside `data.labels`, no rows.
"""

from __future__ import annotations

import datasets
import numpy as np

from fedsub.config import DataConfig
from fedsub.data.source import to_dataset
from fedsub.data.splits import load_sources
from fedsub.errors import ConfigError


def load_labelled_file(cfg: DataConfig, path: str, where: str) -> datasets.Dataset:
    """Every labelled row of `path` with columns text, label (coded by cfg.labels) and id."""
    try:
        source, _ = load_sources(cfg.model_copy(update={"dataset": path, "source": "global"}))
    except ConfigError as err:
        raise ConfigError(f"{where}: {str(err).removeprefix('data.dataset: ')}") from None
    if source.input_column != "text":
        raise ConfigError(f"{where}: holds {source.input_column} rows; data.source nodes reads text files")
    code = {name: k for k, name in enumerate(cfg.labels)}
    unknown = sorted({source.names[c] for c in np.unique(source.labels[source.labels >= 0])} - set(code))
    if unknown:
        raise ConfigError(
            f"{where}: label {unknown[0]!r} is not in data.labels ({', '.join(cfg.labels)}); fix the file or declare it"
        )
    rows = np.flatnonzero(source.labels >= 0)
    if len(rows) == 0:
        raise ConfigError(
            f"{where}: no labelled rows with text; give a file with {cfg.text_column} and {cfg.label_column}"
        )
    labels = np.array([code[source.names[c]] for c in source.labels[rows]], dtype=np.int64)
    return to_dataset(source, rows, labels)
