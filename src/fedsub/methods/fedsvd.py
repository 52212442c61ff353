"""fedsvd: clients train B only; the server re-orthogonalises A by an SVD of the aggregated product.

FedSVD ("Adaptive orthogonalization for private federated learning with LoRA", arXiv 2505.12805):
A is frozen on the clients (as in FFA-LoRA, so avg(B) A = avg(BA) exactly), but unlike FFA-LoRA the
server refreshes it every round: M = B̄ A_prev, rank-r SVD, A ← V_rᵀ (orthonormal rows), B ← U_r S_r.
M has rank ≤ r, so B A = M: the aggregated product is preserved while A follows the data.
Downlink: A, B and the head; uplink: B and the head (half the LoRA bytes).
"""

from __future__ import annotations

from typing import Sequence

from fedsub.core.registry import register
from fedsub.core.tensors import normalized_weights, weighted_sum
from fedsub.core.types import ClientUpdate, Payload, ServerState
from fedsub.core.validation import UpdateSpec, spec_of
from fedsub.core.workspace import Workspace
from fedsub.diagnostics.rounds import server_factor_diagnostics
from fedsub.lora.adapters import LoraOptions, add_lora, freeze_lora_a
from fedsub.lora.aggregate import average_non_lora
from fedsub.lora.maths import fedsvd_factors
from fedsub.lora.names import LORA_A, lora_layers
from fedsub.methods.base import FedAvgMethod


@register("fedsvd")
class FedSVD(FedAvgMethod):
    Options = LoraOptions

    def prepare_model(self, workspace: Workspace) -> None:
        add_lora(workspace, self.options)
        freeze_lora_a(workspace)  # set by the server each round, never trained or uploaded

    def init(self, workspace: Workspace) -> ServerState:
        names = workspace.trainable_names() + [n for n in workspace.parameters_by_name() if LORA_A in n]
        return ServerState(round=0, tensors=workspace.read(names))

    def update_spec(self, state: ServerState, client_id: int, payload: Payload) -> UpdateSpec:
        """What was sent, less A (set by the server, never uploaded)."""
        return spec_of({n: t for n, t in payload.tensors.items() if LORA_A not in n})

    def aggregate_train(self, state: ServerState, updates: Sequence[ClientUpdate]) -> tuple[ServerState, dict[str, float]]:
        weights = normalized_weights([u.num_examples for u in updates])
        uploads = [u.payload.tensors for u in updates]
        tensors = {**state.tensors, **average_non_lora(uploads, weights)}
        layers = lora_layers(state.tensors)
        for keys in layers.values():
            b_mean = weighted_sum(uploads, weights, [keys.b])[keys.b]
            b, a = fedsvd_factors(b_mean, state.tensors[keys.a], self.options.rank)
            tensors[keys.b] = b.to(state.tensors[keys.b].dtype)
            tensors[keys.a] = a.to(state.tensors[keys.a].dtype)
        new = ServerState(state.round + 1, tensors, state.extra)
        return new, server_factor_diagnostics(self.options, layers, updates, tensors, known=(state.tensors,))
