"""Image classification: uint8 images kept as they are, resized and normalised per batch.

Images stay uint8 (Fashion-MNIST's 60k 28x28 images are 47 MB; as 3x224x224 floats they would be
36 GB): each batch is scaled to [0, 1], resized (bilinear, antialiased when shrinking) to the
model's side, grey images repeated to 3 channels, then normalised by the model's mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedsub.tasks.classification import evaluate_by_scores


@dataclass
class ImageEncoded:
    images: torch.Tensor  # N x H x W or N x H x W x C, uint8
    labels: torch.Tensor  # N
    size: int
    mean: torch.Tensor  # 3 x 1 x 1
    std: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor, device: torch.device | str) -> dict[str, torch.Tensor]:
        # uint8 to the device first, then resize there: the float 3 x size x size copy is up to ~750x the bytes
        pixels = to_pixels(self.images[index].to(device), self.size, self.mean.to(device), self.std.to(device))
        return {"pixel_values": pixels, "labels": self.labels[index].to(device)}


def to_pixels(images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 N x H x W (x C) -> float N x 3 x size x size, normalised."""
    x = images.float().div(255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    return (x - mean) / std


def logits_of(output) -> torch.Tensor:
    """A plain tensor (EfficientNet here) or an HF ModelOutput."""
    return (output if torch.is_tensor(output) else output.logits).float()


class ImageClassificationTask:
    metric = "accuracy"
    metric_keys = ("test_loss", "accuracy", "macro_f1")

    def __init__(self, num_labels: int, size: int, mean, std):
        self.num_labels, self.size = num_labels, size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def encode_dataset(self, dataset) -> ImageEncoded:
        images = np.asarray(dataset.with_format("numpy")["image"], dtype=np.uint8)
        return self.encode(images, dataset["label"])

    def encode(self, images: np.ndarray, labels) -> ImageEncoded:
        return ImageEncoded(
            torch.from_numpy(np.ascontiguousarray(images)),
            torch.as_tensor(list(labels), dtype=torch.long),
            self.size,
            self.mean,
            self.std,
        )

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(self.logits(model, batch), batch["labels"])

    def example_losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(self.logits(model, batch), batch["labels"], reduction="none")

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels = batch["pixel_values"].to(next(model.parameters()).dtype)  # bf16 models take bf16 input
        return logits_of(model(pixel_values=pixels))

    def evaluate(self, model: nn.Module, data: ImageEncoded, batch_size: int, device) -> dict[str, float]:
        return evaluate_by_scores(model, data, batch_size, device, self.logits, self.num_labels)
