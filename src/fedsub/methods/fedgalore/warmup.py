"""FedGaLore's warm-up exchange: round 1's projector from a sketch of the first clients' first batches
(docs/methods.md, FedGaLore point 2, "fedsub: round 0's projector comes from a warm-up sketch")."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

import torch

from fedsub.core.method import Metrics
from fedsub.core.seeding import mix_seed
from fedsub.core.tensors import normalized_weights, weighted_sum
from fedsub.core.types import ClientContext, ClientUpdate, Payload, ServerState
from fedsub.core.validation import TensorSpec, UpdateSpec
from fedsub.core.workspace import Workspace
from fedsub.methods.fedgalore.factored import GradientSketch, sketch_projector, sketch_side
from fedsub.methods.fedgalore.keys import Part, key, keys, named, parts
from fedsub.methods.fedgalore.state import FedGaLoreState

if TYPE_CHECKING:
    from fedsub.methods.fedgalore import FedGaLore

WARMUP_STREAM = 0x3A4B  # separates the warm-up sketch's Omega seeds from the training rounds'


class SketchWarmup:
    """Declared as FedGaLore's ``warmup`` when its options ask for one (a sketch source and
    ``warmup_batches`` > 0). It reads the method's layout (managed matrices, head, base weights)."""

    def __init__(self, method: "FedGaLore"):
        self.method = method

    def configure(self, state: ServerState[FedGaLoreState], client_id: int) -> Payload | None:
        """Before the first training round: ask the round's clients for the gradient sketch of their
        first ``warmup_batches`` batches at the base weights, so that round 1 already trains in an
        informed subspace (a random rank-8 P keeps ~r / n of the gradient energy: ~2% on MiniLM).
        Down: the head only (every client holds version 0 of the matrices)."""
        if state.round != 0 or state.extra.proj_sketched:
            return None
        return Payload({n: state.tensors[n] for n in self.method.head_names}, {"warmup": True})

    def client(self, workspace: Workspace, payload: Payload, client: ClientContext) -> ClientUpdate:
        """S_k over the first batches of this round's own batch order (no step); up: S_k only."""
        m = self.method
        workspace.write({**payload.tensors, **m.base})
        params = workspace.parameters_by_name()
        sketch = GradientSketch(
            {n: params[n] for n in m.galore_names}, m.sketch_width(), mix_seed(m.options.seed, WARMUP_STREAM)
        )
        torch.manual_seed(client.seed)
        workspace.model.train()
        batches, total = workspace.client_batches(client), 0.0
        for _ in range(m.options.warmup_batches):
            loss = workspace.task.loss(workspace.model, workspace.train_data.batch(next(batches), workspace.device))
            loss.backward()
            sketch.accumulate()
            workspace.model.zero_grad(set_to_none=True)
            total += loss.item()
        upload = named(Part.SKETCH, {n: t.cpu() for n, t in sketch.sums.items()})
        return ClientUpdate(
            client.client_id, Payload(upload), len(client.indices), {"train_loss": total / m.options.warmup_batches}
        )

    def update_spec(self, state: ServerState, client_id: int, payload: Payload) -> UpdateSpec:
        """S per matrix (the projected side x the sketch width), nothing else."""
        width = self.method.sketch_width()
        return {key(Part.SKETCH, n): TensorSpec(sketch_side(shape, width)) for n, shape in self.method.shapes.items()}

    def aggregate(
        self, state: ServerState[FedGaLoreState], updates: Sequence[ClientUpdate]
    ) -> tuple[ServerState, Metrics]:
        """Round 1's projectors from the summed warm-up sketches (random ones stay if none came back)."""
        if not updates:
            return state, {"warmup_sketched": 0.0}
        m = self.method
        weights = normalized_weights([u.num_examples for u in updates])
        s_bar = parts(
            weighted_sum([u.payload.tensors for u in updates], weights, keys(Part.SKETCH, m.galore_names)),
            Part.SKETCH,
            m.galore_names,
        )
        projectors = {n: sketch_projector(s_bar[n], m.shapes[n], m.options.rank) for n in m.galore_names}
        extra = dataclasses.replace(state.extra, projectors=projectors, proj_sketched=True)
        return ServerState(state.round, state.tensors, extra), {"warmup_sketched": 1.0}
