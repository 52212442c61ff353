"""flexlora: heterogeneous client ranks, aggregation of the full products, per-client truncated SVD.

FlexLoRA (Bai et al. 2024, "Federated fine-tuning of large language models under heterogeneous tasks
and client resources", arXiv 2402.11505): ΔW̄ = Σ p_k s B_k A_k (computed from the stacked factors,
never dense), U S Vᵀ = svd(ΔW̄); client k with rank r_k receives B_k = U[:, :r_k] S[:r_k] / s,
A_k = V[:r_k] (its rank-r_k truncated SVD). The truncations are nested, so the server keeps one
max-rank pair and slices it per client: the payload carries only the client's r_k components.

Heterogeneous ranks on one reused model: LoRA is built once at `rank` (the maximum; the scale is
s = lora_alpha / rank for every client). A rank-r_k client writes its factors zero-padded to `rank`
and trains with a gradient mask that zeroes A's rows and B's columns beyond r_k. (Those gradients
are already zero by bilinearity, dL/dB[:, j] ∝ A[j] = 0; the mask keeps them zero under any extra
loss.) AdamW with zero gradients moves nothing, so the padding stays exactly zero, and the client
uploads its first r_k components only. The global model is the max-rank truncation of ΔW̄.

Client ranks (`client_ranks`): null = every client at `rank`; a list = client k gets list[k mod len];
`{choices: [...], probs: [...], seed: s}` = client k draws once from `choices` with a generator seeded
by (seed, k), so a client keeps its rank across rounds, as a device keeps its memory budget.
"""

from __future__ import annotations

from typing import Sequence

from fedsub.core.registry import register
from fedsub.core.tensors import normalized_weights
from fedsub.core.types import ClientContext, ClientUpdate, Payload, ServerState
from fedsub.core.workspace import Workspace
from fedsub.diagnostics.rounds import server_factor_diagnostics
from fedsub.lora.adapters import add_lora, lora_scale
from fedsub.lora.aggregate import average_non_lora, client_pairs
from fedsub.lora.maths import flexlora_factors, slice_rank, stack_factors
from fedsub.lora.names import is_lora, lora_layers
from fedsub.lora.ranks import HeteroRankOptions, client_rank, read_factors, train_at_rank, write_factors
from fedsub.methods.base import FedAvgMethod


@register("flexlora")
class FlexLoRA(FedAvgMethod):
    Options = HeteroRankOptions

    def prepare_model(self, workspace: Workspace) -> None:
        add_lora(workspace, self.options)

    def configure_train(self, state: ServerState, client_id: int) -> Payload:
        rank = client_rank(self.options, client_id)
        tensors = dict(state.tensors)
        for k in lora_layers(state.tensors).values():
            tensors[k.b], tensors[k.a] = slice_rank(state.tensors[k.b], state.tensors[k.a], rank)
        return Payload(tensors, {"rank": rank})

    def client_train(self, workspace: Workspace, payload: Payload, client: ClientContext) -> ClientUpdate:
        layers = lora_layers(payload.tensors)
        rank = int(payload.scalars["rank"])
        heads = {n: t for n, t in payload.tensors.items() if not is_lora(n)}
        workspace.write(heads)
        factors = {p: (payload.tensors[k.b], payload.tensors[k.a]) for p, k in layers.items()}
        write_factors(workspace, factors, layers, self.options.rank)
        metrics = train_at_rank(workspace, client, layers, rank)
        upload = {**workspace.read(heads.keys()), **read_factors(workspace, layers, rank)}
        return ClientUpdate(client.client_id, Payload(upload), len(client.indices), metrics)

    def aggregate_train(self, state: ServerState, updates: Sequence[ClientUpdate]) -> tuple[ServerState, dict[str, float]]:
        weights = normalized_weights([u.num_examples for u in updates])
        uploads = [u.payload.tensors for u in updates]
        tensors = {**state.tensors, **average_non_lora(uploads, weights)}
        layers = lora_layers(state.tensors)
        scale = lora_scale(self.options)
        for keys in layers.values():
            b_stack, a_stack = stack_factors(client_pairs(uploads, keys), weights)
            [(b, a)] = flexlora_factors(b_stack, a_stack, [self.options.rank], scale)
            tensors[keys.b] = b.to(state.tensors[keys.b].dtype)
            tensors[keys.a] = a.to(state.tensors[keys.a].dtype)
        new = ServerState(state.round + 1, tensors, state.extra)
        return new, server_factor_diagnostics(self.options, layers, updates, tensors)
