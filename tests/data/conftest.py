"""Fixtures for the data tests: a small imbalanced labelled table and an isolated HF cache."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

CLASS_SIZES = [200, 120, 80, 50, 30, 20]  # imbalanced on purpose: 500 rows, 6 classes


@pytest.fixture
def table() -> datasets.Dataset:
    """500 rows: label (6 classes, sizes CLASS_SIZES, shuffled), id, and a 25-value "topic"."""
    rng = np.random.default_rng(123)
    labels = rng.permutation(np.repeat(np.arange(len(CLASS_SIZES)), CLASS_SIZES))
    n = len(labels)
    return datasets.Dataset.from_dict(
        {
            "text": [f"example {i}" for i in range(n)],
            "label": labels.astype(np.int64),
            "id": [f"ex:{i}" for i in range(n)],
            "topic": [f"topic{i % 25:02d}" for i in range(n)],
        }
    )


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep `datasets.load_dataset` (local files) out of the user's ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path
