"""Text classification data from the Hugging Face Hub (`hf:NAME[:CONFIG]`) or a local file.

Both go through `datasets.load_dataset`, so the local-file path (which works offline and is what
the tests exercise) is the same code that reads Hub data.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from fedsub.config import DataConfig
from fedsub.data.source import Source
from fedsub.errors import ConfigError

FILE_BUILDERS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_local_file(cfg: DataConfig) -> tuple[Source, None]:
    """A .csv/.jsonl/.json/.parquet file: one split, ids `row:<line index>`."""
    path = Path(cfg.dataset).expanduser()
    if not path.is_file():
        raise ConfigError(f"data.dataset: file {path} not found; give an existing .csv/.jsonl/.json/.parquet path")
    builder = FILE_BUILDERS[path.suffix.lower()]
    if builder == "csv":
        check_csv_rows(path)
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # the builders raise many types; the user needs only the reason
        raise ConfigError(
            f"data.dataset: cannot read {path} as {builder} ({_first_line(_root_cause(err))}); fix or replace the file"
        ) from None
    (source,) = make_sources(cfg, {"row": table})
    return source, None


def check_csv_rows(path: Path) -> None:
    """Every row has the header's field count: a file cut mid-row (a copy that stopped, a truncated
    download) would otherwise lose its last row's label silently (the reader fills it with null)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            for row in reader:
                if row and len(row) != len(header):
                    raise ConfigError(
                        f"data.dataset: {path} line {reader.line_num} has {len(row)} fields, its header {len(header)}; "
                        f"the file is truncated or malformed: fix or replace it"
                    )
    except (UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"data.dataset: cannot read {path} as csv ({type(err).__name__}: {err}); fix or replace it")


def _root_cause(err: BaseException) -> BaseException:
    """The innermost exception: datasets wraps a parser's precise error in a generic DatasetGenerationError."""
    while err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__):
        err = err.__cause__ or err.__context__
    return err


def load_hub(cfg: DataConfig) -> tuple[Source, Source | None]:
    """`hf:NAME` or `hf:NAME:CONFIG`: its train split, and its test (else validation) split when
    that has labels (GLUE-style test splits have none); otherwise the caller splits train."""
    _, name, config = (cfg.dataset.split(":", 2) + [None])[:3]
    try:
        loaded = datasets.load_dataset(name, config or None)
    except Exception as err:  # offline: ConnectionError after ~20 s of retries (set HF_DATASETS_OFFLINE=1)
        raise ConfigError(
            f"data.dataset={cfg.dataset}: cannot load it from the Hugging Face Hub ({_first_line(err)}); "
            "check the name and network, or use a local .csv/.jsonl/.parquet file"
        ) from None
    splits = {"train": loaded} if isinstance(loaded, datasets.Dataset) else dict(loaded)
    if "train" not in splits:
        raise ConfigError(f"data.dataset={cfg.dataset}: no 'train' split (has {', '.join(splits)})")
    chosen = {"train": splits["train"]}
    for held_out in ("test", "validation"):
        if held_out in splits:
            chosen[held_out] = splits[held_out]
    sources = make_sources(cfg, chosen)
    test = next((s for s in sources[1:] if (s.labels >= 0).any()), None)
    return sources[0], test


def make_sources(cfg: DataConfig, splits: dict[str, datasets.Dataset]) -> list[Source]:
    """One `Source` per split with labels encoded jointly (same names and codes in every split)."""
    for table in splits.values():
        _require_columns(cfg, table)
    raw = [_column_values(table, cfg.label_column) for table in splits.values()]
    feature = next(iter(splits.values())).features[cfg.label_column]
    codes, names = encode_labels(raw, feature, cfg.label_column)
    for table, c in zip(splits.values(), codes):
        c[_is_null(table, cfg.text_column)] = -1  # rows without text are dropped like unlabelled ones
    return [
        Source(columns=_standard_columns(cfg, table, tag), labels=c, names=names, input_column="text")
        for (tag, table), c in zip(splits.items(), codes)
    ]


def _is_null(table: datasets.Dataset, column: str) -> np.ndarray:
    data = table.select_columns([column]).with_format("arrow")[:].column(0)
    return data.is_null().to_numpy(zero_copy_only=False)


def _require_columns(cfg: DataConfig, table: datasets.Dataset) -> None:
    for field, column in (("text_column", cfg.text_column), ("label_column", cfg.label_column)):
        if column not in table.column_names:
            raise ConfigError(
                f"data.{field}: column {column!r} not in {cfg.dataset}; columns are: {', '.join(table.column_names)}"
            )
    feature = table.features[cfg.text_column]
    if not isinstance(feature, datasets.Value):
        raise ConfigError(
            f"data.text_column: column {cfg.text_column!r} holds {type(feature).__name__}, not text; "
            "name a column of strings"
        )


def _standard_columns(cfg: DataConfig, table: datasets.Dataset, tag: str) -> datasets.Dataset:
    """Rename the text column to "text", drop the label column (codes are kept apart), add "id"."""
    ids = _ids(table, tag, exclude={cfg.text_column, cfg.label_column}, where=cfg.dataset)
    drop = {cfg.label_column, "label", "id"} | ({"text"} if cfg.text_column != "text" else set())
    table = table.remove_columns([c for c in table.column_names if c in drop and c != cfg.text_column])
    if table.features[cfg.text_column].dtype != "string":  # large_string (pandas), numbers (CSV)
        table = table.cast_column(cfg.text_column, datasets.Value("string"))
    table = table.rename_column(cfg.text_column, "text") if cfg.text_column != "text" else table
    return table.add_column("id", ids)


def _ids(table: datasets.Dataset, tag: str, exclude: set[str], where: str) -> list[str]:
    """The file's own "id" column as strings when it has one (must be unique), else `tag:<row>`."""
    if "id" not in table.column_names or "id" in exclude:
        return [f"{tag}:{i}" for i in range(len(table))]
    ids = [str(v) for v in _column_values(table, "id")]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"data.dataset: column 'id' of {where} has duplicate values; make them unique or rename it")
    return ids


def _column_values(table: datasets.Dataset, column: str) -> list[Any]:
    return table.select_columns([column]).with_format("arrow")[:].column(0).to_pylist()


def encode_labels(raw: list[list[Any]], feature: Any, column: str = "label") -> tuple[list[np.ndarray], list[str]]:
    """Class codes for each split (-1 = missing label) and the class names.

    A `ClassLabel` keeps its names; strings get codes in sorted-name order; integers (or integral
    floats, as CSV/JSON readers produce) in numeric order, named by their value.
    """
    if isinstance(feature, datasets.ClassLabel):
        codes = [np.array([-1 if v is None or v < 0 else v for v in values], np.int64) for values in raw]
        return codes, list(feature.names)
    keys: dict[Any, str | int] = {}
    for values in raw:  # in file order, so an error names the first bad value
        for v in values:
            if _missing(v):
                continue
            key = _label_key(v, column)  # first: a dict or list label is refused here, not unhashable below
            keys.setdefault(v, key)
    names_by_key = {key: str(key) for key in keys.values()}
    ordered = sorted(names_by_key, key=lambda k: (isinstance(k, str), k))
    code_of = {key: i for i, key in enumerate(ordered)}
    codes = [np.array([-1 if _missing(v) else code_of[keys[v]] for v in values], np.int64) for values in raw]
    return codes, [names_by_key[k] for k in ordered]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _label_key(value: Any, column: str) -> str | int:
    """A string label stays a string; bools, ints and integral floats become ints."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, np.integer)) or (isinstance(value, float) and value.is_integer()):
        return int(value)
    raise ConfigError(
        f"data.label_column: column {column!r} holds {value!r}; labels must be class names or integer ids"
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
