"""Shared machinery of the FedAvg family: clients train from the global values, the server averages.

Each method module (PEFT's per-method layout) only says what is trained and what crosses the wire.
"""

from __future__ import annotations

from typing import Sequence

from pydantic import BaseModel

from fedsub.core.fedavg import NoOptions, adamw  # noqa: F401  (until the methods compose)
from fedsub.core.tensors import weighted_mean
from fedsub.core.types import ClientContext, ClientUpdate, Payload, ServerState
from fedsub.core.workspace import Workspace
from fedsub.lora.adapters import LoraOptions, add_lora, freeze_lora_a, lora_scale  # noqa: F401  (until the methods compose)


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
        from fedsub.diagnostics.rounds import fedavg_diagnostics  # late: diagnostics imports lora maths

        return fedavg_diagnostics(self.options, state, new, updates)

    def load_global(self, workspace: Workspace, state: ServerState) -> None:
        workspace.write(state.tensors)
