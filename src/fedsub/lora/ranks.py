"""Heterogeneous client LoRA ranks on one reused model (FlexLoRA, FLoRA; docs/methods.md).

LoRA is built once at `rank` (the maximum; the scale is s = lora_alpha / rank for every client). A
rank-r_k client writes its factors zero-padded to `rank` and trains with a gradient mask that zeroes
A's rows and B's columns beyond r_k. (Those gradients are already zero by bilinearity, dL/dB[:, j] ∝
A[j] = 0; the mask keeps them zero under any extra loss.) AdamW with zero gradients moves nothing,
so the padding stays exactly zero, and the client uploads its first r_k components only.

Client ranks (`client_ranks`): null = every client at `rank`; a list = client k gets list[k mod len];
`{choices: [...], probs: [...], seed: s}` = client k draws once from `choices` with a generator seeded
by (seed, k), so a client keeps its rank across rounds, as a device keeps its memory budget.
"""

from __future__ import annotations

from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedsub.core.fedavg import adamw
from fedsub.core.seeding import derive_rng
from fedsub.core.types import ClientContext
from fedsub.core.workspace import Workspace
from fedsub.lora.adapters import LoraOptions
from fedsub.lora.maths import Factors, pad_rank, slice_rank
from fedsub.lora.names import LoraKeys


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


def train_at_rank(
    workspace: Workspace, client: ClientContext, layers: dict[str, LoraKeys], rank: int
) -> dict[str, float]:
    """AdamW on the trainables with the components beyond `rank` held at zero."""
    optimizer = adamw((p for p in workspace.model.parameters() if p.requires_grad), client.train)
    return workspace.train_local(client, optimizer, after_backward=rank_mask(workspace, layers, rank))
