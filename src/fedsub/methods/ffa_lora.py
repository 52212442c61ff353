"""ffa_lora: LoRA with A frozen at its shared random init; only B (and the head) is trained and sent.

Sun et al. 2024, "Improving LoRA in privacy-preserving federated learning". With A fixed and shared,
avg(B) A = avg(BA): aggregation is exact and the upload is halved. The server keeps its own copy of
the frozen A (`FrozenFactors`, never sent) for the diagnostics.
"""

from __future__ import annotations

from typing import Sequence

from fedsub.core.fedavg import fedavg, send_global, train_and_upload, trainable_state
from fedsub.core.method import LoraFactors, Metrics, Source
from fedsub.core.registry import register
from fedsub.core.types import ClientContext, ClientUpdate, Payload, ServerState
from fedsub.core.validation import UpdateSpec, spec_of
from fedsub.core.workspace import Workspace
from fedsub.diagnostics.rounds import held_factors, lora_round_diagnostics
from fedsub.lora.adapters import FrozenFactors, LoraOptions, add_lora, freeze_lora_a, frozen_factors
from fedsub.lora.names import lora_layers


@register("ffa_lora")
class FFALoRA:
    Options = LoraOptions
    warmup = None
    client_state = frozenset()
    diagnostics = LoraFactors(a=Source.SHARED, b=Source.UPLOADED)
    global_model_note = None
    personalize = None  # a client evaluates the global model

    def __init__(self, options: LoraOptions):
        self.options = options

    def prepare_model(self, workspace: Workspace) -> None:
        add_lora(workspace, self.options)
        freeze_lora_a(workspace)  # A stays at its shared seeded init

    def init(self, workspace: Workspace) -> ServerState[FrozenFactors]:
        return trainable_state(workspace, frozen_factors(workspace) if self.options.diagnostics else None)

    def configure_train(self, state: ServerState, client_id: int) -> Payload:
        return send_global(state)

    def client_train(self, workspace: Workspace, payload: Payload, client: ClientContext) -> ClientUpdate:
        return train_and_upload(workspace, payload, client)

    def update_spec(self, state: ServerState, client_id: int, payload: Payload) -> UpdateSpec:
        return spec_of(payload.tensors)

    def aggregate_train(
        self, state: ServerState[FrozenFactors], updates: Sequence[ClientUpdate]
    ) -> tuple[ServerState, Metrics]:
        new = fedavg(state, updates)
        if not self.options.diagnostics:
            return new, {}
        frozen = state.extra.tensors
        layers = lora_layers([*new.tensors, *frozen])  # the server's update: s avg(B) A
        aggregated = held_factors(layers, [new.tensors, frozen])
        return new, lora_round_diagnostics(self.options, self.diagnostics, layers, updates, aggregated, shared=[frozen])

    def load_global(self, workspace: Workspace, state: ServerState) -> None:
        workspace.write(state.tensors)
