"""The task contract: what a model learns and how it is scored, the one interface the engines,
the workspace and the methods use (fedsub.tasks.classification, generation, multiple_choice, vision
implement it; `fedsub.tasks.build_task` picks one from the config).

A task encodes a split once (`encode_dataset`); the engines then take batches by example index, so
a client's data is a tensor of indices into the encoded train split.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


class EncodedData(Protocol):
    """A split encoded by a task: its examples, batched by index on a device."""

    def __len__(self) -> int: ...

    def batch(self, index: torch.Tensor, device: torch.device | str) -> Batch: ...


class EncodedSubset:
    """The rows `rows` of an encoded split, as an EncodedData of its own (a client's evaluation set):
    batches, labels, and generation's prompts / references, all restricted to those rows."""

    def __init__(self, data: EncodedData, rows: torch.Tensor):
        self.data, self.rows = data, rows

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, index: torch.Tensor, device: torch.device | str) -> Batch:
        return self.data.batch(self.rows[index], device)

    @property
    def labels(self) -> torch.Tensor:
        return self.data.labels[self.rows]

    @property
    def prompts(self) -> list:
        return [self.data.prompts[int(i)] for i in self.rows]

    @property
    def references(self) -> list:
        return [self.data.references[int(i)] for i in self.rows]


class NoRows:
    """An empty split: what a party without such data holds (a server without a test file)."""

    labels = torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:
        return 0

    def batch(self, index: torch.Tensor, device: torch.device | str) -> Batch:
        raise ValueError("this split has no rows")


class Task(Protocol):
    """`metric` is the headline metric (what tables and plots lead with); `metric_keys` every metric
    `evaluate` returns (a round without evaluation logs them as null)."""

    metric: str
    metric_keys: tuple[str, ...]

    def encode_dataset(self, dataset: Any) -> EncodedData:
        """Encode one split (a datasets.Dataset with the task's columns)."""

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The training loss of one batch (a scalar to backpropagate)."""

    def example_losses(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Each example's own loss, [batch size] (DP-SGD clips each example's gradient of it)."""

    def evaluate(
        self, model: nn.Module, data: EncodedData, batch_size: int, device: torch.device | str
    ) -> dict[str, float]:
        """Every metric of `metric_keys` on `data`, in batches of `batch_size`."""


TASK_MEMBERS = ("metric", "metric_keys", "encode_dataset", "loss", "example_losses", "evaluate")
