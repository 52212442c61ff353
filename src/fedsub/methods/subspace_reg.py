"""subspace_reg: Subspace-Constrained Federated LoRA (Senarath, Muralitharan, Asif 2026, arXiv 2606.22724).

Client: task loss + (1/L) Σ_l [μ/2 ‖s B A − ΔW_g‖² + α/2 ‖B − B_g‖² + λ/2 (‖A‖² + ‖B‖²)], with
(B_g, A_g) the global factors the client received this round, ΔW_g = s B_g A_g (fedsub.lora.maths.
subspace_penalty). The reference is the payload itself: no extra bytes cross the wire.
Server: ΔW̄ = Σ p_k s B_k A_k, optional clip, rank-r SVD, B_g = U_r (orthonormal columns: the shared
reference subspace), A_g = S_r V_rᵀ / s, norm-restoring rescale applied to A only so B_g stays
orthonormal (the authors' code scales both factors by the same √ratio, which gives the same product
but a B_g that is no longer orthonormal); the head is FedAvg'ed.
Defaults from the authors' runs: μ = 0.05, α = 0.01, λ = 1e-5, rank 8, lora_alpha 16.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedsub.core.fedavg import adamw
from fedsub.core.registry import register
from fedsub.core.types import ClientContext, ClientUpdate, Payload
from fedsub.core.workspace import Workspace
from fedsub.lora.adapters import lora_scale
from fedsub.lora.maths import Split, subspace_penalty
from fedsub.lora.names import lora_layers
from fedsub.methods.svd_redistribute import SvdOptions, SvdRedistribute


class SubspaceRegOptions(SvdOptions):
    mu: float = Field(0.05, ge=0, description="weight of μ/2 ‖s B A − ΔW_g‖² (stay near the global update)")
    alpha: float = Field(0.01, ge=0, description="weight of α/2 ‖B − B_g‖² (stay near the global basis); not lora_alpha")
    lambda_reg: float = Field(1e-5, ge=0, description="weight of λ/2 (‖A‖² + ‖B‖²) (plain L2 on the factors)")


@register("subspace_reg")
class SubspaceReg(SvdRedistribute):
    Options = SubspaceRegOptions
    split: Split = "orthonormal_b"

    def client_train(self, workspace: Workspace, payload: Payload, client: ClientContext) -> ClientUpdate:
        workspace.write(payload.tensors)
        penalty = self.penalty(workspace, payload)
        optimizer = adamw((p for p in workspace.model.parameters() if p.requires_grad), client.train)
        metrics = workspace.train_local(client, optimizer, extra_loss=penalty)
        upload = workspace.read(payload.tensors.keys())
        return ClientUpdate(client.client_id, Payload(upload), len(client.indices), metrics)

    def penalty(self, workspace: Workspace, payload: Payload):
        """The regulariser as a closure over the live LoRA parameters and the round-start factors."""
        o = self.options
        params = workspace.parameters_by_name()
        layers = list(lora_layers(payload.tensors).values())
        live = [(params[k.b], params[k.a]) for k in layers]
        device = workspace.device
        refs = [(payload.tensors[k.b].to(device).float(), payload.tensors[k.a].to(device).float()) for k in layers]
        scale = lora_scale(o)

        def extra_loss(_model) -> torch.Tensor:
            factors = [(b.float(), a.float()) for b, a in live]
            return subspace_penalty(factors, refs, scale, o.mu, o.alpha, o.lambda_reg)

        return extra_loss
