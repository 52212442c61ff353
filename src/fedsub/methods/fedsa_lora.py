"""fedsa_lora: clients train LoRA A and B; only A (and the head) is averaged, each client keeps its own B.

FedSA-LoRA (Guo et al., ICLR 2025, "Selective Aggregation for Low-Rank Adaptation in Federated
Learning", arXiv 2410.01463; docs/methods.md "FedSA-LoRA"). The paper finds that trained LoRA A
matrices are alike across clients (general knowledge) while the B matrices differ (client-specific).
So clients train A, B and the head; only A and the head go up and are FedAvg'ed; each client's B
stays in its client state between its rounds, and a client's
first round starts from B = 0 (LoRA's init). Bytes: A and the head, up and down (FedIT's minus B).

The server never holds a B. Its global model (evaluated each round, exported at the end) is the
global A and head with B = 0, so the adapters add nothing there: it measures the pretrained
backbone with the averaged head. Every evaluated record says so (``eval_note``). The method's
measure is federated evaluation (config ``federated_eval``): `personalize` puts each client's own B
beside the global A and head, and each client evaluates that model on its own held-out data.

Diagnostics: refused, not faked. ΔW_k = s B_k A_k needs every client's B; the method declares B
client-held (``LoraFactors(b=Source.CLIENT)``), ``diagnostics: true`` is rejected at validation, and
the diagnostics code raises on a client-held factor rather than use the server's zero B (which
reported every diag_* as 0.0 when this method first inherited FedIT's).
"""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import Field, field_validator

from fedsub.core.fedavg import fedavg, send_global, train_and_upload
from fedsub.core.method import LoraFactors, Metrics, Source
from fedsub.core.registry import register
from fedsub.core.types import ClientContext, ClientUpdate, Payload, ServerState
from fedsub.core.validation import UpdateSpec, spec_of
from fedsub.core.workspace import Workspace
from fedsub.diagnostics.rounds import lora_round_diagnostics
from fedsub.lora.adapters import LoraOptions, add_lora
from fedsub.lora.names import lora_layers

KEPT_B = "lora_b"  # the client-state key of a client's own B (name -> tensor)


class FedSALoraOptions(LoraOptions):
    diagnostics: bool = Field(
        False, description="stays false: the diag_* metrics need every client's B, which never leaves the client"
    )

    @field_validator("diagnostics")
    @classmethod
    def _no_diagnostics(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "fedsa_lora keeps each client's LoRA B on the client, so the server cannot compute the diag_* metrics "
                "(they need ΔW_k = s B_k A_k); leave diagnostics false"
            )
        return value


@register("fedsa_lora")
class FedSALoRA:
    Options = FedSALoraOptions
    warmup = None
    client_state = frozenset({KEPT_B})
    diagnostics = LoraFactors(a=Source.UPLOADED, b=Source.CLIENT)
    global_model_note = (
        "global A and head with B = 0: each client's B stays on the client, so the server's LoRA update is zero"
    )

    def __init__(self, options: FedSALoraOptions):
        self.options = options

    def prepare_model(self, workspace: Workspace) -> None:
        add_lora(workspace, self.options)
        params = workspace.parameters_by_name()
        self.b_names = [k.b for k in lora_layers(workspace.trainable_names()).values()]
        self.zero_b = {
            n: torch.zeros(params[n].shape, dtype=params[n].dtype) for n in self.b_names
        }  # B before a client's first round

    def init(self, workspace: Workspace) -> ServerState:
        kept = set(self.b_names)
        return ServerState(round=0, tensors=workspace.read(n for n in workspace.trainable_names() if n not in kept))

    def configure_train(self, state: ServerState, client_id: int) -> Payload:
        return send_global(state)  # A and the head

    def client_train(self, workspace: Workspace, payload: Payload, client: ClientContext) -> ClientUpdate:
        """The client's own B (zero in its first round) with the global A and head; A, B and the head
        train; A and the head go up, B stays in the client state."""
        workspace.write(client.state.get(KEPT_B, self.zero_b))
        update = train_and_upload(workspace, payload, client, upload=payload.tensors.keys())
        client.state[KEPT_B] = workspace.read(self.b_names)
        return update

    def update_spec(self, state: ServerState, client_id: int, payload: Payload) -> UpdateSpec:
        return spec_of(payload.tensors)  # A and the head, as sent: never a B

    def aggregate_train(self, state: ServerState, updates: Sequence[ClientUpdate]) -> tuple[ServerState, Metrics]:
        new = fedavg(state, updates)
        # {} with diagnostics off (the only valid setting); refuses, naming B, if asked for them
        return new, lora_round_diagnostics(self.options, self.diagnostics, {}, updates, {})

    def load_global(self, workspace: Workspace, state: ServerState) -> None:
        """The global A and head; B = 0, the server has none (see the module docstring)."""
        workspace.write({**state.tensors, **self.zero_b})

    def personalize(self, workspace: Workspace, client_state: dict) -> None:
        """After load_global: the client's own B (zero before its first round), as it trains from."""
        workspace.write(client_state.get(KEPT_B, self.zero_b))
