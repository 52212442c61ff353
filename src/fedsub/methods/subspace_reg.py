"""subspace_reg: Subspace-Constrained Federated LoRA (Senarath, Muralitharan, Asif 2026, arXiv 2606.22724).

Client: task loss + (1/L) Σ_l [μ/2 ‖s B A − ΔW_g‖² + α/2 ‖B − B_g‖² + λ/2 (‖A‖² + ‖B‖²)], with
(B_g, A_g) the global factors the client received this round, ΔW_g = s B_g A_g (fedsub.lora.maths.
subspace_penalty). The reference is the payload itself: no extra bytes cross the wire.
Server: ΔW̄ = Σ p_k s B_k A_k, optional clip, rank-r SVD, B_g = U_r (orthonormal columns: the shared
reference subspace), A_g = S_r V_rᵀ / s, norm-restoring rescale applied to A only so B_g stays
orthonormal (the authors' code scales both factors by the same √ratio, which gives the same product
but a B_g that is no longer orthonormal); the head is FedAvg'ed.
The server is svd_redistribute's with the orthonormal_b split (fedsub.lora.refactor).
Defaults from the authors' runs: μ = 0.05, α = 0.01, λ = 1e-5, rank 8, lora_alpha 16.
"""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import Field

from fedsub.core.fedavg import send_global, train_and_upload, trainable_state
from fedsub.core.method import LoraFactors, Metrics, Source
from fedsub.core.registry import register
from fedsub.core.types import ClientContext, ClientUpdate, Payload, ServerState
from fedsub.core.validation import UpdateSpec, spec_of
from fedsub.core.workspace import Workspace
from fedsub.diagnostics.rounds import held_factors, lora_round_diagnostics
from fedsub.lora.adapters import add_lora, lora_scale
from fedsub.lora.aggregate import aggregate_lora
from fedsub.lora.maths import subspace_penalty
from fedsub.lora.names import lora_layers
from fedsub.lora.refactor import SvdOptions, svd_rule


class SubspaceRegOptions(SvdOptions):
    mu: float = Field(0.05, ge=0, description="weight of μ/2 ‖s B A − ΔW_g‖² (stay near the global update)")
    alpha: float = Field(
        0.01, ge=0, description="weight of α/2 ‖B − B_g‖² (stay near the global basis); not lora_alpha"
    )
    lambda_reg: float = Field(1e-5, ge=0, description="weight of λ/2 (‖A‖² + ‖B‖²) (plain L2 on the factors)")


def penalty(workspace: Workspace, payload: Payload, options: SubspaceRegOptions):
    """The regulariser as a closure over the live LoRA parameters and the round-start factors."""
    params = workspace.parameters_by_name()
    layers = list(lora_layers(payload.tensors).values())
    live = [(params[k.b], params[k.a]) for k in layers]
    device = workspace.device
    refs = [(payload.tensors[k.b].to(device).float(), payload.tensors[k.a].to(device).float()) for k in layers]
    scale, o = lora_scale(options), options

    def extra_loss(_model) -> torch.Tensor:
        factors = [(b.float(), a.float()) for b, a in live]
        return subspace_penalty(factors, refs, scale, o.mu, o.alpha, o.lambda_reg)

    return extra_loss


@register("subspace_reg")
class SubspaceReg:
    Options = SubspaceRegOptions
    warmup = None
    client_state = frozenset()
    diagnostics = LoraFactors(a=Source.UPLOADED, b=Source.UPLOADED)
    global_model_note = None
    personalize = None  # a client evaluates the global model

    def __init__(self, options: SubspaceRegOptions):
        self.options = options

    def prepare_model(self, workspace: Workspace) -> None:
        add_lora(workspace, self.options)

    def init(self, workspace: Workspace) -> ServerState:
        return trainable_state(workspace)

    def configure_train(self, state: ServerState, client_id: int) -> Payload:
        return send_global(state)

    def client_train(self, workspace: Workspace, payload: Payload, client: ClientContext) -> ClientUpdate:
        extra_loss = penalty(workspace, payload, self.options)  # its references are the payload itself
        return train_and_upload(workspace, payload, client, upload=payload.tensors.keys(), extra_loss=extra_loss)

    def update_spec(self, state: ServerState, client_id: int, payload: Payload) -> UpdateSpec:
        return spec_of(payload.tensors)

    def aggregate_train(self, state: ServerState, updates: Sequence[ClientUpdate]) -> tuple[ServerState, Metrics]:
        layers = lora_layers(state.tensors)
        new = aggregate_lora(state, updates, layers, svd_rule(self.options, "orthonormal_b"))
        if not self.options.diagnostics:
            return new, {}
        return new, lora_round_diagnostics(
            self.options, self.diagnostics, layers, updates, held_factors(layers, [new.tensors])
        )

    def load_global(self, workspace: Workspace, state: ServerState) -> None:
        workspace.write(state.tensors)
