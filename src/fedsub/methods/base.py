"""Shared machinery of the FedAvg family: clients train from the global values, the server averages.

Each method module (PEFT's per-method layout) only says what is trained and what crosses the wire.
"""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedsub.core.tensors import weighted_mean
from fedsub.core.types import ClientContext, ClientUpdate, Payload, ServerState, TrainSettings
from fedsub.core.workspace import Workspace
from fedsub.errors import ConfigError


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int = Field(8, gt=0, description="LoRA rank r")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scale s = lora_alpha / r")
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    diagnostics: bool = Field(True, description="subspace diagnostics every round (diag_* metrics, see methods/diagnostics.py)")


def adamw(params, train: TrainSettings) -> torch.optim.AdamW:
    return torch.optim.AdamW(list(params), lr=train.lr, weight_decay=train.weight_decay)


def add_lora(workspace: Workspace, options: LoraOptions, seed: int | None = None) -> None:
    """Wrap the workspace model with PEFT LoRA on its target modules; the head is trained densely.

    The LoRA A init comes from torch's global RNG, seeded here so every client builds the same A.
    """
    from peft import LoraConfig, get_peft_model

    modules = dict(workspace.model.named_modules())
    convs = [t for t in workspace.target_modules if isinstance(modules.get(t), torch.nn.Conv2d)]
    if convs:  # the server maths (stacking, SVD, diagnostics) take factors as matrices
        raise ConfigError(f"field model.target_modules: LoRA methods adapt linear layers, not the Conv2d {convs[0]!r}; target linear / pointwise layers or use fedgalore, fedftg or fedavg_full")
    if seed is not None:
        torch.manual_seed(seed)
    config = LoraConfig(
        r=options.rank,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=workspace.target_modules,
        modules_to_save=workspace.head_modules,
    )
    workspace.model = get_peft_model(workspace.model, config)


def freeze_lora_a(workspace: Workspace) -> None:
    """Freeze every LoRA A: not trained, so (what is trained is what is sent) never uploaded."""
    for name, param in workspace.model.named_parameters():
        if ".lora_A." in name:
            param.requires_grad_(False)


def lora_scale(options: LoraOptions) -> float:
    return options.lora_alpha / options.rank


class FedAvgMethod:
    """FedAvg (McMahan et al. 2017) over the workspace's trainable tensors, AdamW on the clients.

    Subclasses choose what is trainable in `prepare_model`; what is trainable is what is sent.
    """

    Options: type[BaseModel] = NoOptions
    name = "fedavg"

    def __init__(self, options: BaseModel | None = None):
        self.options = options if options is not None else self.Options()

    def prepare_model(self, workspace: Workspace) -> None:
        raise NotImplementedError

    def init(self, workspace: Workspace) -> ServerState:
        return ServerState(round=0, tensors=workspace.read(workspace.trainable_names()), extra=self.init_extra(workspace))

    def init_extra(self, workspace: Workspace) -> dict:
        """Server-side extras; LoRA methods keep their frozen factors (FFA-LoRA's A) for diagnostics."""
        if not getattr(self.options, "diagnostics", False):
            return {}
        params = workspace.model.named_parameters()
        frozen = [n for n, p in params if not p.requires_grad and (".lora_A." in n or ".lora_B." in n)]
        return {"frozen_lora": workspace.read(frozen)} if frozen else {}

    def configure_warmup(self, state: ServerState, client_id: int) -> Payload | None:
        """What a sampled client is sent in a warm-up exchange before this round's training, or
        None for no warm-up (FedAvg-family methods; FedGaLore asks for a first gradient sketch)."""
        return None

    def configure_train(self, state: ServerState, client_id: int) -> Payload:
        return Payload(tensors=dict(state.tensors))

    def client_train(self, workspace: Workspace, payload: Payload, client: ClientContext) -> ClientUpdate:
        workspace.write(payload.tensors)
        optimizer = adamw((p for p in workspace.model.parameters() if p.requires_grad), client.train)
        metrics = workspace.train_local(client, optimizer)
        upload = workspace.read(workspace.trainable_names())  # what was trained is what is sent
        return ClientUpdate(client.client_id, Payload(upload), len(client.indices), metrics)

    def aggregate_train(self, state: ServerState, updates: Sequence[ClientUpdate]) -> tuple[ServerState, dict[str, float]]:
        mean = weighted_mean([u.payload.tensors for u in updates], [u.num_examples for u in updates])
        new = ServerState(state.round + 1, {**state.tensors, **mean}, state.extra)
        return new, self.round_metrics(state, new, updates)

    def round_metrics(self, state: ServerState, new: ServerState, updates: Sequence[ClientUpdate]) -> dict[str, float]:
        """Metrics of one aggregation (a hook): LoRA methods report the subspace diagnostics."""
        if not getattr(self.options, "diagnostics", False):
            return {}
        from fedsub.methods.diagnostics import fedavg_diagnostics  # late: diagnostics imports lora maths

        return fedavg_diagnostics(self.options, state, new, updates)

    def load_global(self, workspace: Workspace, state: ServerState) -> None:
        workspace.write(state.tensors)
