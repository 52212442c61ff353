"""The FedAvg building blocks the methods compose (McMahan et al. 2017): clients train the global
values with AdamW and send back what they trained, the server takes the example-weighted mean.

Each registered method (fedsub.methods) is a small class that calls these and says only what is
trained, what crosses the wire and what the server does with it; no method inherits another.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from pydantic import BaseModel, ConfigDict

from fedsub.core.tensors import weighted_mean
from fedsub.core.types import ClientContext, ClientUpdate, Payload, ServerState, TrainSettings
from fedsub.core.workspace import Workspace


class NoOptions(BaseModel):
    """The options of a method that has none (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")


def adamw(params, train: TrainSettings) -> torch.optim.AdamW:
    return torch.optim.AdamW(list(params), lr=train.lr, weight_decay=train.weight_decay)


def trainable_state(workspace: Workspace, extra=None) -> ServerState:
    """Round 0's server state: the model's trainable tensors as prepared (what is trained is what is sent)."""
    return ServerState(round=0, tensors=workspace.read(workspace.trainable_names()), extra=extra)


def send_global(state: ServerState) -> Payload:
    """Every global tensor, down to every client."""
    return Payload(tensors=dict(state.tensors))


def train_and_upload(
    workspace: Workspace,
    payload: Payload,
    client: ClientContext,
    upload: Iterable[str] | None = None,
    extra_loss: Callable[[torch.nn.Module], torch.Tensor] | None = None,
    after_backward: Callable[[], None] | None = None,
) -> ClientUpdate:
    """A client's FedAvg round: write the payload, AdamW on the trainable tensors, reply with `upload`
    (default: every trainable tensor, what was trained is what is sent)."""
    workspace.write(payload.tensors)
    optimizer = adamw((p for p in workspace.model.parameters() if p.requires_grad), client.train)
    metrics = workspace.train_local(client, optimizer, extra_loss=extra_loss, after_backward=after_backward)
    names = workspace.trainable_names() if upload is None else list(upload)
    return ClientUpdate(client.client_id, Payload(workspace.read(names)), len(client.indices), metrics)


def fedavg(state: ServerState, updates: Sequence[ClientUpdate]) -> ServerState:
    """The next state: the example-weighted mean of every uploaded tensor; what was not sent is kept."""
    mean = weighted_mean([u.payload.tensors for u in updates], [u.num_examples for u in updates])
    return ServerState(state.round + 1, {**state.tensors, **mean}, state.extra)
