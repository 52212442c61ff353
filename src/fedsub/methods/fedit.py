"""fedit: FedAvg of LoRA A and B separately (Zhang et al. 2024, "Towards building the federated GPT").

Biased by construction: avg(B) avg(A) != avg(BA); that is the gap later methods close.
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
from fedsub.lora.adapters import LoraOptions, add_lora
from fedsub.lora.names import lora_layers


@register("fedit")
class FedIT:
    Options = LoraOptions
    warmup = None
    client_state = frozenset()
    diagnostics = LoraFactors(a=Source.UPLOADED, b=Source.UPLOADED)
    global_model_note = None
    personalize = None  # a client evaluates the global model

    def __init__(self, options: LoraOptions):
        self.options = options

    def prepare_model(self, workspace: Workspace) -> None:
        add_lora(workspace, self.options)

    def init(self, workspace: Workspace) -> ServerState:
        return trainable_state(workspace)

    def configure_train(self, state: ServerState, client_id: int) -> Payload:
        return send_global(state)

    def client_train(self, workspace: Workspace, payload: Payload, client: ClientContext) -> ClientUpdate:
        return train_and_upload(workspace, payload, client)

    def update_spec(self, state: ServerState, client_id: int, payload: Payload) -> UpdateSpec:
        return spec_of(payload.tensors)

    def aggregate_train(self, state: ServerState, updates: Sequence[ClientUpdate]) -> tuple[ServerState, Metrics]:
        new = fedavg(state, updates)
        if not self.options.diagnostics:
            return new, {}
        layers = lora_layers(new.tensors)  # the server's update: s avg(B) avg(A)
        return new, lora_round_diagnostics(
            self.options, self.diagnostics, layers, updates, held_factors(layers, [new.tensors])
        )

    def load_global(self, workspace: Workspace, state: ServerState) -> None:
        workspace.write(state.tensors)
