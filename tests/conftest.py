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
    from fedsub.engines.setup import FederatedData
    from fedsub.models import plan_model
    from fedsub.tasks.classification import ClassificationTask

    cfg = tiny_config()
    plan = plan_model(cfg)
    texts = [t for label in TEXTS for t in TEXTS[label]]
    labels = [label for label in TEXTS for _ in TEXTS[label]]
    task = ClassificationTask(plan.tokenizer(), cfg.model.max_length, num_labels=3)
    encoded = task.encode(texts, labels)
    parts = [
        torch.tensor([0, 1, 2, 6, 12, 13]),
        torch.tensor([3, 7, 8, 9, 14, 15]),
        torch.tensor([4, 5, 10, 11, 16, 17]),
    ]
    return FederatedData(task, encoded, encoded, parts, ["animal", "artifact", "feeling"], {}, plan)


PARTS = [[0, 1, 2, 6, 12, 13], [3, 7, 8, 9, 14, 15], [4, 5, 10, 11, 16, 17]]


@pytest.fixture(scope="session")
def task_data(tiny_data):
    """FederatedData per task kind, built once: kind -> data (3 clients each)."""
    from fedsub_fixtures import CHOICES, INSTRUCTIONS, task_config, tiny_images

    from fedsub.engines.setup import FederatedData
    from fedsub.models import plan_model
    from fedsub.tasks import build_task

    cache = {"classification": tiny_data}

    def build(kind: str):
        if kind in cache:
            return cache[kind]
        cfg = task_config(kind, "fedit")
        plan = plan_model(cfg)
        if kind == "generation":
            task = build_task(cfg, plan, "instruction", 3)
            data = task.encode([i for i, _ in INSTRUCTIONS] * 3, [r for _, r in INSTRUCTIONS] * 3)
            parts = [torch.tensor(p) for p in PARTS]
        elif kind == "multiple_choice":
            task = build_task(cfg, plan, "text", 4)
            rows = CHOICES * 6
            data = task.encode([c for c, _, _ in rows], [e for _, e, _ in rows], [a for _, _, a in rows])
            parts = [torch.tensor(p) for p in PARTS]
        else:
            task = build_task(cfg, plan, "image", 3)
            images, labels = tiny_images()
            data = task.encode(images, labels)
            parts = [torch.tensor(p) for p in PARTS]
        cache[kind] = FederatedData(task, data, data, parts, [str(i) for i in range(task_labels(kind))], {}, plan)
        return cache[kind]

    return build


def task_labels(kind: str) -> int:
    return 4 if kind == "multiple_choice" else 3
