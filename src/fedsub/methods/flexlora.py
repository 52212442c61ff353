"""flexlora: heterogeneous client ranks, aggregation of the full products, per-client truncated SVD.

FlexLoRA (Bai et al. 2024, "Federated fine-tuning of large language models under heterogeneous tasks
and client resources", arXiv 2402.11505): ΔW̄ = Σ p_k s B_k A_k (computed from the stacked factors,
never dense), U S Vᵀ = svd(ΔW̄); client k with rank r_k receives B_k = U[:, :r_k] S[:r_k] / s,
A_k = V[:r_k] (its rank-r_k truncated SVD). The truncations are nested, so the server keeps one
max-rank pair and slices it per client: the payload carries only the client's r_k components.

Heterogeneous ranks on one reused model (`client_ranks`; how a rank-r_k client trains on the
rank-`rank` LoRA modules and sends only its r_k components: fedsub.lora.ranks). The global model is
the max-rank truncation of ΔW̄.
"""

from __future__ import annotations

from typing import Sequence

from fedsub.core.fedavg import trainable_state
from fedsub.core.method import LoraFactors, Metrics, Source
from fedsub.core.registry import register
from fedsub.core.types import ClientContext, ClientUpdate, Payload, ServerState, Tensors
from fedsub.core.validation import UpdateSpec, spec_of
from fedsub.core.workspace import Workspace
from fedsub.diagnostics.rounds import held_factors, lora_round_diagnostics
from fedsub.lora.adapters import add_lora, lora_scale
from fedsub.lora.aggregate import aggregate_lora, client_pairs
from fedsub.lora.maths import flexlora_factors, slice_rank, stack_factors
from fedsub.lora.names import LoraKeys, is_lora, lora_layers
from fedsub.lora.ranks import HeteroRankOptions, client_rank, read_factors, train_at_rank, write_factors


@register("flexlora")
class FlexLoRA:
    Options = HeteroRankOptions
    warmup = None
    client_state = frozenset()
    diagnostics = LoraFactors(a=Source.UPLOADED, b=Source.UPLOADED)
    global_model_note = None
    personalize = None  # a client evaluates the global model

    def __init__(self, options: HeteroRankOptions):
        self.options = options

    def prepare_model(self, workspace: Workspace) -> None:
        add_lora(workspace, self.options)

    def init(self, workspace: Workspace) -> ServerState:
        return trainable_state(workspace)

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

    def update_spec(self, state: ServerState, client_id: int, payload: Payload) -> UpdateSpec:
        return spec_of(payload.tensors)  # the client's r_k components, as sent

    def aggregate_train(self, state: ServerState, updates: Sequence[ClientUpdate]) -> tuple[ServerState, Metrics]:
        rank, scale = self.options.rank, lora_scale(self.options)

        def refactor(keys: LoraKeys, uploads: Sequence[Tensors], weights: Sequence[float], start: Tensors) -> Tensors:
            b_stack, a_stack = stack_factors(client_pairs(uploads, keys), weights)
            [(b, a)] = flexlora_factors(b_stack, a_stack, [rank], scale)
            return {keys.b: b, keys.a: a}

        layers = lora_layers(state.tensors)
        new = aggregate_lora(state, updates, layers, refactor)
        if not self.options.diagnostics:
            return new, {}
        return new, lora_round_diagnostics(
            self.options, self.diagnostics, layers, updates, held_factors(layers, [new.tensors])
        )

    def load_global(self, workspace: Workspace, state: ServerState) -> None:
        workspace.write(state.tensors)
