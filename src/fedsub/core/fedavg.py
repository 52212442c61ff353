"""The FedAvg building blocks the methods compose (McMahan et al. 2017): clients train the global
values with AdamW and send back what they trained, the server takes the example-weighted mean.

Each registered method (fedsub.methods) is a small class that calls these, and only says what is
trained and what crosses the wire; no method inherits another.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from fedsub.core.types import TrainSettings


class NoOptions(BaseModel):
    """The options of a method that has none (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")


def adamw(params, train: TrainSettings) -> torch.optim.AdamW:
    return torch.optim.AdamW(list(params), lr=train.lr, weight_decay=train.weight_decay)
