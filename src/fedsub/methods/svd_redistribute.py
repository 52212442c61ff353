"""svd_redistribute: aggregate the exact mean update, re-factor it by a rank-r SVD (symmetric split).

The "SVD redistribution" baseline of Subspace-Reg (Senarath et al. 2026, arXiv 2606.22724):
ΔW̄ = Σ p_k s B_k A_k, optional Frobenius clip of ΔW̄ (per layer), rank-r SVD U S Vᵀ, B = U √S,
A = √S Vᵀ (de-scaled by s), optional norm-restoring rescale of both factors so that the truncated
product keeps ‖ΔW̄‖ (docs/methods.md). Clients train A and B from the global factors; both are sent.
Subspace-Reg shares this server (fedsub.lora.refactor) with its own split and a client regulariser.
"""

from __future__ import annotations

from typing import Sequence

from fedsub.core.fedavg import send_global, train_and_upload, trainable_state
from fedsub.core.method import LoraFactors, Metrics, Source
from fedsub.core.registry import register
from fedsub.core.types import ClientContext, ClientUpdate, Payload, ServerState
from fedsub.core.validation import UpdateSpec, spec_of
from fedsub.core.workspace import Workspace
from fedsub.diagnostics.rounds import held_factors, lora_round_diagnostics
from fedsub.lora.adapters import add_lora
from fedsub.lora.aggregate import aggregate_lora
from fedsub.lora.names import lora_layers
from fedsub.lora.refactor import SvdOptions, svd_rule


@register("svd_redistribute")
class SvdRedistribute:
    """svd_redistribute: the exact mean update ΔW̄ re-factored by a rank-r SVD (symmetric split).

    Clients run the FedAvg loop (AdamW on A, B and the head, all sent both ways)."""

    Options = SvdOptions
    warmup = None
    client_state = frozenset()
    diagnostics = LoraFactors(a=Source.UPLOADED, b=Source.UPLOADED)
    global_model_note = None
    personalize = None  # a client evaluates the global model

    def __init__(self, options: SvdOptions):
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
        layers = lora_layers(state.tensors)
        new = aggregate_lora(state, updates, layers, svd_rule(self.options, "symmetric"))
        if not self.options.diagnostics:
            return new, {}
        return new, lora_round_diagnostics(
            self.options, self.diagnostics, layers, updates, held_factors(layers, [new.tensors])
        )

    def load_global(self, workspace: Workspace, state: ServerState) -> None:
        workspace.write(state.tensors)
