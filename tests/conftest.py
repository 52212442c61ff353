"""Shared fixtures: a tiny random-init transformer on a handful of hand-written examples."""

from __future__ import annotations

import pytest
import torch

from fedsub_fixtures import TEXTS, tiny_config

# The tests' models are tiny: a second intra-op thread buys nothing there, and on a loaded 2-core
# machine OpenMP's spin-waiting made them up to 50x slower (measured).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_data():
    """FederatedData over 18 examples, 3 classes, 3 clients (6 examples each, mixed labels)."""
    from fedsub.engines.simulation import FederatedData
    from fedsub.models import load_tokenizer
    from fedsub.tasks.classification import ClassificationTask

    cfg = tiny_config()
    texts = [t for label in TEXTS for t in TEXTS[label]]
    labels = [label for label in TEXTS for _ in TEXTS[label]]
    task = ClassificationTask(load_tokenizer(cfg.model), cfg.model.max_length, num_labels=3)
    encoded = task.encode(texts, labels)
    parts = [torch.tensor([0, 1, 2, 6, 12, 13]), torch.tensor([3, 7, 8, 9, 14, 15]), torch.tensor([4, 5, 10, 11, 16, 17])]
    return FederatedData(task, encoded, encoded, parts, ["animal", "artifact", "feeling"], {})
