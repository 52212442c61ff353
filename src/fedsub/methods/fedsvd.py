"""fedsvd: clients train B only; the server re-orthogonalises A by an SVD of the aggregated product.

FedSVD ("Adaptive orthogonalization for private federated learning with LoRA", arXiv 2505.12805):
A is frozen on the clients (as in FFA-LoRA, so avg(B) A = avg(BA) exactly), but unlike FFA-LoRA the
server refreshes it every round: M = B̄ A_prev, rank-r SVD, A ← V_rᵀ (orthonormal rows), B ← U_r S_r.
M has rank ≤ r, so B A = M: the aggregated product is preserved while A follows the data.
Downlink: A, B and the head; uplink: B and the head (half the LoRA bytes).
"""

from __future__ import annotations

from typing import Sequence

from fedsub.core.fedavg import send_global, train_and_upload
from fedsub.core.method import LoraFactors, Metrics, Source
from fedsub.core.registry import register
from fedsub.core.tensors import weighted_sum
from fedsub.core.types import ClientContext, ClientUpdate, Payload, ServerState, Tensors
from fedsub.core.validation import UpdateSpec, spec_of
from fedsub.core.workspace import Workspace
from fedsub.diagnostics.rounds import held_factors, lora_round_diagnostics
from fedsub.lora.adapters import LoraOptions, add_lora, freeze_lora_a
from fedsub.lora.aggregate import aggregate_lora
from fedsub.lora.maths import fedsvd_factors
from fedsub.lora.names import LORA_A, LoraKeys, lora_layers


@register("fedsvd")
class FedSVD:
    Options = LoraOptions
    warmup = None
    client_state = frozenset()
    diagnostics = LoraFactors(a=Source.SHARED, b=Source.UPLOADED)  # A: the server's, as sent this round
    global_model_note = None
    personalize = None  # a client evaluates the global model

    def __init__(self, options: LoraOptions):
        self.options = options

    def prepare_model(self, workspace: Workspace) -> None:
        add_lora(workspace, self.options)
        freeze_lora_a(workspace)  # set by the server each round, never trained or uploaded

    def init(self, workspace: Workspace) -> ServerState:
        names = workspace.trainable_names() + [n for n in workspace.parameters_by_name() if LORA_A in n]
        return ServerState(round=0, tensors=workspace.read(names))

    def configure_train(self, state: ServerState, client_id: int) -> Payload:
        return send_global(state)

    def client_train(self, workspace: Workspace, payload: Payload, client: ClientContext) -> ClientUpdate:
        return train_and_upload(workspace, payload, client)  # B and the head: A is frozen

    def update_spec(self, state: ServerState, client_id: int, payload: Payload) -> UpdateSpec:
        """What was sent, less A (set by the server, never uploaded)."""
        return spec_of({n: t for n, t in payload.tensors.items() if LORA_A not in n})

    def aggregate_train(self, state: ServerState, updates: Sequence[ClientUpdate]) -> tuple[ServerState, Metrics]:
        rank = self.options.rank

        def refactor(keys: LoraKeys, uploads: Sequence[Tensors], weights: Sequence[float], start: Tensors) -> Tensors:
            b_mean = weighted_sum(uploads, weights, [keys.b])[keys.b]
            b, a = fedsvd_factors(b_mean, start[keys.a], rank)
            return {keys.b: b, keys.a: a}

        layers = lora_layers(state.tensors)
        new = aggregate_lora(state, updates, layers, refactor)
        if not self.options.diagnostics:
            return new, {}
        aggregated = held_factors(layers, [new.tensors])
        return new, lora_round_diagnostics(
            self.options, self.diagnostics, layers, updates, aggregated, shared=[state.tensors]
        )

    def load_global(self, workspace: Workspace, state: ServerState) -> None:
        workspace.write(state.tensors)
