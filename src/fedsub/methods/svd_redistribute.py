"""svd_redistribute: aggregate the exact mean update, re-factor it by a rank-r SVD (symmetric split).

The "SVD redistribution" baseline of Subspace-Reg (Senarath et al. 2026, arXiv 2606.22724):
ΔW̄ = Σ p_k s B_k A_k, optional Frobenius clip of ΔW̄ (per layer), rank-r SVD U S Vᵀ, B = U √S,
A = √S Vᵀ (de-scaled by s), optional norm-restoring rescale of both factors so that the truncated
product keeps ‖ΔW̄‖ (docs/methods.md). Clients train A and B from the global factors; both are sent.
Subspace-Reg subclasses this with its own split and a client regulariser.
"""

from __future__ import annotations

from typing import Sequence

from pydantic import Field

from fedsub.core.registry import register
from fedsub.core.tensors import normalized_weights
from fedsub.core.types import ClientUpdate, ServerState
from fedsub.core.workspace import Workspace
from fedsub.diagnostics.rounds import server_factor_diagnostics
from fedsub.lora.adapters import LoraOptions, add_lora, lora_scale
from fedsub.lora.aggregate import average_non_lora, client_pairs
from fedsub.lora.maths import Split, stack_factors, svd_refactor
from fedsub.lora.names import lora_layers
from fedsub.methods.base import FedAvgMethod


class SvdOptions(LoraOptions):
    max_update_norm: float | None = Field(
        None, gt=0, description="clip ‖ΔW̄‖_F of each layer's aggregated update (effective, scaled) to this; null = off"
    )
    rescale: bool = Field(True, description="rescale the truncated factors so ‖s B A‖ equals the (clipped) ‖ΔW̄‖")


@register("svd_redistribute")
class SvdRedistribute(FedAvgMethod):
    """svd_redistribute: the exact mean update ΔW̄ re-factored by a rank-r SVD (symmetric split).

    Clients run the FedAvg loop (AdamW on A, B and the head, all sent both ways)."""

    Options = SvdOptions
    split: Split = "symmetric"

    def prepare_model(self, workspace: Workspace) -> None:
        add_lora(workspace, self.options)

    def aggregate_train(self, state: ServerState, updates: Sequence[ClientUpdate]) -> tuple[ServerState, dict[str, float]]:
        weights = normalized_weights([u.num_examples for u in updates])
        uploads = [u.payload.tensors for u in updates]
        tensors = {**state.tensors, **average_non_lora(uploads, weights)}
        layers = lora_layers(state.tensors)
        aggregated = {}
        for prefix, keys in layers.items():
            b_stack, a_stack = stack_factors(client_pairs(uploads, keys), weights)
            aggregated[prefix] = (b_stack, a_stack)
            b, a = self.refactor(b_stack, a_stack)
            tensors[keys.b] = b.to(state.tensors[keys.b].dtype)
            tensors[keys.a] = a.to(state.tensors[keys.a].dtype)
        new = ServerState(state.round + 1, tensors, state.extra)
        return new, self.diagnostics(layers, updates, new)

    def refactor(self, b_stack, a_stack):
        o = self.options
        return svd_refactor(b_stack, a_stack, o.rank, lora_scale(o), self.split, o.max_update_norm, o.rescale)

    def diagnostics(self, layers, updates, new: ServerState) -> dict[str, float]:
        return server_factor_diagnostics(self.options, layers, updates, new.tensors)
