"""flora: stack the client LoRA factors, merge the exact sum into the base weights, fresh adapters.

FLoRA (Wang et al. 2024, "FLoRA: federated fine-tuning large language models with heterogeneous
low-rank adaptations", arXiv 2409.05976): B_stack = [B_1 ... B_K], A_stack = [p_1 A_1; ...; p_K A_K],
so B_stack A_stack = Σ p_k B_k A_k exactly, whatever the client ranks (`client_ranks`, as in
flexlora). The server merges W ← W + s B_stack A_stack and every client starts the next round from
the merged W with a new LoRA (A random, B zero).

Bytes, honestly: from round 1 on the downlink carries the merged dense weight of every LoRA target
(d_out x d_in each) plus the head; round 0 carries only the head, because the clients already hold
the pretrained W0 (each client process keeps it from `prepare_model`, as it would from its model
download). The uplink is each client's r_k-wide A and B and the head. (The paper sends the stack
down and lets clients merge; that needs every client to have merged every earlier round, which
partial participation breaks, hence the dense downlink of docs/methods.md.)

Fresh A: drawn by each client from its round seed (fedsub.lora.maths.fresh_lora_a, PEFT's init
distribution), so no bytes are spent on it and a client's round is reproducible in isolation.
"""

from __future__ import annotations

from typing import Sequence

import torch

from fedsub.core.method import LoraFactors, Metrics, Source
from fedsub.core.registry import register
from fedsub.core.seeding import derive_seed
from fedsub.core.tensors import normalized_weights
from fedsub.core.types import ClientContext, ClientUpdate, Payload, ServerState, Tensors
from fedsub.core.validation import TensorSpec, UpdateSpec, spec_of
from fedsub.core.workspace import Workspace
from fedsub.diagnostics.rounds import lora_round_diagnostics
from fedsub.lora.adapters import add_lora, lora_scale
from fedsub.lora.aggregate import aggregate_lora, client_pairs
from fedsub.lora.maths import fresh_lora_a, merge_update, stack_factors
from fedsub.lora.names import LoraKeys, lora_layers, non_lora
from fedsub.lora.ranks import HeteroRankOptions, client_rank, read_factors, train_at_rank, write_factors


def fresh_factors(layers: dict[str, LoraKeys], shapes: dict[str, tuple[int, int]], rank: int, seed: int) -> dict:
    """New (B = 0, A random) pairs of width `rank`, A seeded by (seed, layer index)."""
    out = {}
    for index, prefix in enumerate(layers):
        d_out, d_in = shapes[prefix]
        out[prefix] = (torch.zeros(d_out, rank), fresh_lora_a(rank, d_in, derive_seed(seed, index)))
    return out


@register("flora")
class FLoRA:
    Options = HeteroRankOptions
    warmup = None
    client_state = frozenset()
    diagnostics = LoraFactors(a=Source.UPLOADED, b=Source.UPLOADED)  # this round's fresh adapters
    global_model_note = None
    personalize = None  # a client evaluates the global model

    def __init__(self, options: HeteroRankOptions):
        self.options = options

    def prepare_model(self, workspace: Workspace) -> None:
        add_lora(workspace, self.options)
        self.layers = lora_layers(workspace.trainable_names())
        params = workspace.parameters_by_name()
        self.shapes = {p: tuple(params[k.base].shape) for p, k in self.layers.items()}
        # The client's own copy of W0 (never sent): what round 0 trains on.
        self.pretrained = workspace.read(k.base for k in self.layers.values())

    def init(self, workspace: Workspace) -> ServerState:
        names = non_lora(workspace.trainable_names()) + [k.base for k in self.layers.values()]
        return ServerState(round=0, tensors=workspace.read(names))

    def configure_train(self, state: ServerState, client_id: int) -> Payload:
        bases = {k.base for k in self.layers.values()}
        sent = {n: t for n, t in state.tensors.items() if state.round > 0 or n not in bases}
        return Payload(sent, {"rank": client_rank(self.options, client_id)})

    def update_spec(self, state: ServerState, client_id: int, payload: Payload) -> UpdateSpec:
        """The head as sent, and (B, A) of the client's rank per layer (never the merged bases)."""
        bases = {k.base for k in self.layers.values()}
        spec = spec_of({n: t for n, t in payload.tensors.items() if n not in bases})
        rank = min(int(payload.scalars["rank"]), self.options.rank)
        for prefix, keys in self.layers.items():
            d_out, d_in = self.shapes[prefix]
            spec[keys.b], spec[keys.a] = TensorSpec((d_out, rank)), TensorSpec((rank, d_in))
        return spec

    def client_train(self, workspace: Workspace, payload: Payload, client: ClientContext) -> ClientUpdate:
        rank = int(payload.scalars["rank"])
        bases = {k.base: payload.tensors.get(k.base, self.pretrained[k.base]) for k in self.layers.values()}
        heads = [n for n in payload.tensors if n not in bases]
        workspace.write({**payload.tensors, **bases})
        write_factors(
            workspace, fresh_factors(self.layers, self.shapes, rank, client.seed), self.layers, self.options.rank
        )
        metrics = train_at_rank(workspace, client, self.layers, rank)
        upload = {**workspace.read(heads), **read_factors(workspace, self.layers, rank)}
        return ClientUpdate(client.client_id, Payload(upload), len(client.indices), metrics)

    def aggregate_train(self, state: ServerState, updates: Sequence[ClientUpdate]) -> tuple[ServerState, Metrics]:
        scale = lora_scale(self.options)

        def merge(keys: LoraKeys, uploads: Sequence[Tensors], weights: Sequence[float], start: Tensors) -> Tensors:
            return {
                keys.base: merge_update(start[keys.base], *stack_factors(client_pairs(uploads, keys), weights), scale)
            }

        layers = lora_layers(updates[0].payload.tensors)
        new = aggregate_lora(state, updates, layers, merge)
        if not self.options.diagnostics:
            return new, {}
        return new, lora_round_diagnostics(
            self.options, self.diagnostics, layers, updates, self.merged_stacks(layers, updates)
        )

    def merged_stacks(self, layers: dict[str, LoraKeys], updates: Sequence[ClientUpdate]):
        """The server's update of each layer as factors: the exact stack it merged (B_stack, A_stack)."""
        weights = normalized_weights([u.num_examples for u in updates])
        uploads = [u.payload.tensors for u in updates]
        return {p: stack_factors(client_pairs(uploads, k), weights) for p, k in layers.items()}

    def load_global(self, workspace: Workspace, state: ServerState) -> None:
        """The merged weights and head; the adapters contribute nothing (B = 0)."""
        params = workspace.parameters_by_name()
        workspace.write({**state.tensors, **{k.b: torch.zeros_like(params[k.b]) for k in self.layers.values()}})
