"""Sequence classification: encode once, batch by index, cross-entropy loss, accuracy and macro-F1."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from torch.nn import functional as F


@dataclass
class Encoded:
    """A tokenised split, padded to its longest example; batches are trimmed to their own longest."""

    input_ids: torch.Tensor  # N x L
    attention_mask: torch.Tensor  # N x L
    labels: torch.Tensor  # N

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor, device: torch.device | str) -> dict[str, torch.Tensor]:
        mask = self.attention_mask[index]
        width = int(mask.sum(1).max())  # padding past the longest example costs compute for nothing
        return {
            "input_ids": self.input_ids[index, :width].to(device),
            "attention_mask": mask[:, :width].to(device),
            "labels": self.labels[index].to(device),
        }


class ClassificationTask:
    """Text classification with an HF sequence-classification model."""

    metric = "accuracy"

    metric_keys = ("test_loss", "accuracy", "macro_f1")

    def __init__(self, tokenizer, max_length: int, num_labels: int, input_column: str = "text"):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.num_labels = num_labels
        self.input_column = input_column

    def encode_dataset(self, dataset) -> Encoded:
        return self.encode(dataset[self.input_column], dataset["label"])

    def encode(self, texts: list[str], labels: list[int]) -> Encoded:
        tokens = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_length, padding="longest", return_tensors="pt"
        )
        return Encoded(tokens["input_ids"], tokens["attention_mask"], torch.as_tensor(labels, dtype=torch.long))

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits.float(), batch["labels"])

    def example_losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return F.cross_entropy(logits.float(), batch["labels"], reduction="none")

    def evaluate(self, model: nn.Module, data: Encoded, batch_size: int, device) -> dict[str, float]:
        def logits(model, batch):
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()

        return evaluate_by_scores(model, data, batch_size, device, logits, self.num_labels)


@torch.no_grad()
def evaluate_by_scores(model: nn.Module, data, step: int, device, scores_of, num_classes: int) -> dict[str, float]:
    """Cross-entropy and classification metrics of `scores_of(model, batch)` (one score per class or
    per choice) over `data` in batches of `step` examples; shared by every task that picks a class."""
    was_training = model.training
    model.eval()
    loss, predictions = 0.0, []
    for start in range(0, len(data), step):
        batch = data.batch(torch.arange(start, min(start + step, len(data))), device)
        scores = scores_of(model, batch)
        loss += F.cross_entropy(scores, batch["labels"], reduction="sum").item()
        predictions.append(scores.argmax(-1).cpu())
    model.train(was_training)
    return classification_metrics(torch.cat(predictions), data.labels, loss / len(data), num_classes)


def classification_metrics(
    predicted: torch.Tensor, labels: torch.Tensor, loss: float, num_labels: int
) -> dict[str, float]:
    y, p = labels.numpy(), predicted.numpy()
    return {
        "test_loss": float(loss),
        "accuracy": float((p == y).mean()),
        "macro_f1": float(f1_score(y, p, labels=np.arange(num_labels), average="macro", zero_division=0)),
    }
