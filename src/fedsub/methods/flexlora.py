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

from typing import Callable, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedsub.core.registry import register
from fedsub.core.seeding import derive_rng
from fedsub.core.tensors import normalized_weights
from fedsub.core.types import ClientContext, ClientUpdate, Payload, ServerState
from fedsub.core.workspace import Workspace
from fedsub.methods.base import FedAvgMethod, LoraOptions, adamw, add_lora, lora_scale
from fedsub.methods.diagnostics import server_factor_diagnostics
from fedsub.methods.lora_math import (
    Factors,
    LoraKeys,
    average_non_lora,
    client_pairs,
    flexlora_factors,
    is_lora,
    lora_layers,
    pad_rank,
    slice_rank,
    stack_factors,
)


class RankChoices(BaseModel):
    """A distribution of client ranks: each client draws once, seeded by (seed, client id)."""

    model_config = ConfigDict(extra="forbid")
    choices: list[int] = Field(min_length=1, description="ranks to draw from")
    probs: list[float] | None = Field(None, description="their probabilities (uniform if null)")
    seed: int = 0

    @model_validator(mode="after")
    def _probs_match(self) -> "RankChoices":
        if self.probs is not None and (len(self.probs) != len(self.choices) or abs(sum(self.probs) - 1) > 1e-6):
            raise ValueError("probs: one probability per choice, summing to 1")
        return self


class HeteroRankOptions(LoraOptions):
    client_ranks: list[int] | RankChoices | None = Field(
        None, description="per-client LoRA ranks <= rank: a list (cycled) or {choices, probs, seed}; null = all at rank"
    )

    @model_validator(mode="after")
    def _ranks_fit(self) -> "HeteroRankOptions":
        spec = self.client_ranks
        ranks = spec if isinstance(spec, list) else spec.choices if spec is not None else []
        if any(r <= 0 or r > self.rank for r in ranks):
            raise ValueError(f"client_ranks: every rank must be in 1..rank ({self.rank}), got {ranks}")
        if isinstance(spec, list) and not spec:
            raise ValueError("client_ranks: give at least one rank, or null")
        return self


def client_rank(options: HeteroRankOptions, client_id: int) -> int:
    """Client `client_id`'s LoRA rank: a pure function of the options and the id."""
    spec = options.client_ranks
    if spec is None:
        return options.rank
    if isinstance(spec, list):
        return spec[client_id % len(spec)]
    rng = derive_rng(spec.seed, client_id)
    return int(rng.choice(spec.choices, p=spec.probs))


def write_factors(workspace: Workspace, factors: dict[str, Factors], layers: dict[str, LoraKeys], rank: int) -> None:
    """Write r_k-wide (B, A) per layer into the rank-`rank` LoRA modules, zero-padded."""
    padded = {}
    for prefix, (b, a) in factors.items():
        b_pad, a_pad = pad_rank(b, a, rank)
        padded[layers[prefix].b], padded[layers[prefix].a] = b_pad, a_pad
    workspace.write(padded)


def rank_mask(workspace: Workspace, layers: dict[str, LoraKeys], rank: int) -> Callable[[], None] | None:
    """An `after_backward` hook that zeroes the gradients of the components beyond `rank`."""
    params = workspace.parameters_by_name()
    pairs = [(params[k.b], params[k.a]) for k in layers.values()]
    if all(b.shape[1] <= rank for b, _ in pairs):
        return None

    def mask() -> None:
        for b, a in pairs:
            if b.grad is not None:
                b.grad[:, rank:] = 0
            if a.grad is not None:
                a.grad[rank:] = 0

    return mask


def read_factors(workspace: Workspace, layers: dict[str, LoraKeys], rank: int) -> dict[str, torch.Tensor]:
    """The first `rank` components of every LoRA layer, as named tensors (what a client uploads)."""
    current = workspace.read([n for k in layers.values() for n in (k.b, k.a)])
    out = {}
    for k in layers.values():
        out[k.b], out[k.a] = slice_rank(current[k.b], current[k.a], rank)
    return out


def train_at_rank(workspace: Workspace, client: ClientContext, layers: dict[str, LoraKeys], rank: int) -> dict[str, float]:
    """AdamW on the trainables with the components beyond `rank` held at zero."""
    optimizer = adamw((p for p in workspace.model.parameters() if p.requires_grad), client.train)
    return workspace.train_local(client, optimizer, after_backward=rank_mask(workspace, layers, rank))


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
