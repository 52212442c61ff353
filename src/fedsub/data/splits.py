"""`load_splits`: one config -> a train set (to partition over clients) and one global evaluation set.

Steps, each on index arrays so only the kept rows are ever materialised: load a `Source` ->
keep the `num_classes` largest classes -> seeded stratified split (when the source has no test
split) -> seeded per-class caps -> seeded stratified validation split carved from train
(`val_fraction`) -> `datasets.Dataset`. With `eval_split: val` the evaluation set is the
validation split and the test rows are never loaded, so tuning cannot see them; the train set is the
same for both, so a setting chosen on val is then run unchanged on test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import datasets
import numpy as np

from fedsub.config import DataConfig
from fedsub.core.seeding import derive_rng
from fedsub.data.files import FILE_BUILDERS, load_hub, load_local_file
from fedsub.data.images import load_digits_source, load_fashion_mnist
from fedsub.data.instructions import load_wordnet_choice, load_wordnet_instructions
from fedsub.data.source import Source, to_dataset
from fedsub.data.wordnet import load_wordnet_supersense
from fedsub.errors import ConfigError

_SPLIT_STREAM, _CAP_STREAM, _VAL_STREAM = 1, 2, 3  # independent random streams (see fedsub/core/seeding.py)


@dataclass
class Splits:
    """Train and evaluation sets with columns input ("text"/"image"), "label" (int64 in 0..C-1),
    "id" (str, stable across runs) and any grouping columns (e.g. "lemma"). `test` is the set the
    run evaluates on: the test split, or the validation split under `data.eval_split: val`."""

    train: datasets.Dataset
    test: datasets.Dataset
    label_names: list[str]
    input_column: str

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


def _builtin(loader: Callable[[], Source | tuple[Source, Source]]) -> Callable[[DataConfig], tuple]:
    def load(_cfg: DataConfig) -> tuple[Source, Source | None]:
        loaded = loader()
        return loaded if isinstance(loaded, tuple) else (loaded, None)

    return load


BUILTINS: dict[str, Callable[[DataConfig], tuple[Source, Source | None]]] = {
    "wordnet_supersense": _builtin(load_wordnet_supersense),
    "fashion_mnist": _builtin(load_fashion_mnist),
    "digits": _builtin(load_digits_source),
    "wordnet_instructions": _builtin(load_wordnet_instructions),  # generation: define / use the word
    "wordnet_choice": _builtin(load_wordnet_choice),  # multiple choice: which definition matches the word
}


def load_splits(cfg: DataConfig, seed: int) -> Splits:
    """Load `cfg.dataset` and return its train/test `Splits`; deterministic given `seed`.

    Raises ConfigError (one line naming the field or file) for anything the user can fix.
    """
    train, test = load_sources(cfg)
    remap, names = choose_classes(train, test, cfg.num_classes, cfg.dataset)
    train_labels = remap[train.labels]
    if test is None:
        train_rows, test_rows = stratified_split(train_labels, cfg.test_fraction, derive_rng(seed, _SPLIT_STREAM))
        test, test_labels = train, train_labels
    else:
        test_labels = remap[test.labels]
        train_rows, test_rows = np.flatnonzero(train_labels >= 0), np.flatnonzero(test_labels >= 0)
    train_rows = cap_per_class(train_rows, train_labels, cfg.max_train_per_class, derive_rng(seed, _CAP_STREAM, 0))
    test_rows = cap_per_class(test_rows, test_labels, cfg.max_test_per_class, derive_rng(seed, _CAP_STREAM, 1))
    if len(test_rows) == 0:
        raise ConfigError(f"data.test_fraction: the test set of {cfg.dataset} is empty; raise it or use more data")
    if cfg.val_fraction > 0:
        kept, held = stratified_split(train_labels[train_rows], cfg.val_fraction, derive_rng(seed, _VAL_STREAM))
        if len(held) == 0:
            raise ConfigError(
                f"data.val_fraction: the validation split of {cfg.dataset} is empty; raise it or use more data"
            )
        train_rows, val_rows = train_rows[kept], train_rows[held]
        if cfg.eval_split == "val":
            test, test_rows, test_labels = train, val_rows, train_labels
    return Splits(
        train=to_dataset(train, train_rows, train_labels[train_rows]),
        test=to_dataset(test, test_rows, test_labels[test_rows]),
        label_names=names,
        input_column=train.input_column,
    )


def load_sources(cfg: DataConfig) -> tuple[Source, Source | None]:
    """Dispatch on `cfg.dataset`: builtin name, `hf:NAME[:CONFIG]` or a local file path."""
    name = cfg.dataset
    if name in BUILTINS:
        return BUILTINS[name](cfg)
    if name.startswith("hf:") and len(name) > 3:
        return load_hub(cfg)
    if Path(name).suffix.lower() in FILE_BUILDERS:
        return load_local_file(cfg)
    raise ConfigError(
        f"data.dataset: unknown dataset {name!r}; use {', '.join(BUILTINS)}, 'hf:NAME[:CONFIG]' "
        f"or a {'/'.join(FILE_BUILDERS)} file path"
    )


def choose_classes(
    train: Source, test: Source | None, num_classes: int | None, dataset: str
) -> tuple[np.ndarray, list[str]]:
    """Old code -> new code (-1 = dropped) and the kept names.

    Keeps the `num_classes` largest classes (by count over all splits, ties by code). New codes
    follow class size for sources whose codes carry no meaning (WordNet lex files), else the
    original order. The map has one extra slot so that index -1 (a missing label) maps to -1.
    """
    counts = np.bincount(train.labels[train.labels >= 0], minlength=len(train.names))
    if test is not None:
        counts = counts + np.bincount(test.labels[test.labels >= 0], minlength=len(train.names))
    by_size = sorted(np.flatnonzero(counts), key=lambda c: (-counts[c], c))
    if len(by_size) < 2:
        raise ConfigError(f"data.label_column: {dataset} has {len(by_size)} class(es) with examples; need at least 2")
    if num_classes is not None and num_classes > len(by_size):
        raise ConfigError(
            f"data.num_classes: {num_classes} requested but {dataset} has {len(by_size)} classes; lower it or unset it"
        )
    kept = by_size[:num_classes] if num_classes else by_size
    kept = kept if train.order_by_size else sorted(kept)
    remap = np.full(len(train.names) + 1, -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    return remap, [train.names[c] for c in kept]


def stratified_split(
    labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train rows, test rows): per class, round(test_fraction * n) random rows go to test,
    leaving at least one in train. Rows with label -1 are dropped."""
    train, test = [], []
    for label in np.unique(labels[labels >= 0]):
        rows = rng.permutation(np.flatnonzero(labels == label))
        n_test = min(int(round(test_fraction * len(rows))), len(rows) - 1)
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def cap_per_class(rows: np.ndarray, labels: np.ndarray, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    """Sorted subset of `rows` with at most `cap` random rows per class (`labels` indexed by row)."""
    if cap is None:
        return rows
    kept = []
    for label in np.unique(labels[rows]):
        members = rows[labels[rows] == label]
        kept.append(members if len(members) <= cap else rng.choice(members, cap, replace=False))
    return np.sort(np.concatenate(kept)) if kept else rows
