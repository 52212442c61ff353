"""fedftg: GaLore-AdamW on the lower MLP up-projections, FedAvg of the dense trained weights.

FedFTG (arXiv 2410.23111; docs/methods.md "FedFTG"): each client fine-tunes the MLP up-projection
(intermediate dense) weights of the lower half of the transformer blocks with GaLore-AdamW
(GaLore, arXiv 2403.03507) using its own per-client ``svd`` projectors, refreshed every
``update_proj_gap`` of its steps; the task head is trained densely (plain AdamW); everything else
is frozen. The server averages the dense weights (FedAvg), so there is no rank inflation.

The client's optimizer state (projectors, moments, step counts) stays on the client between its
rounds (``client.state``), as in the paper; ``reset_each_round`` starts every round from scratch.

Bytes: down and up are the dense trained weights and the head (the paper's protocol).

Metrics: the diag_* update diagnostics of the GaLore-managed matrices (fedsub/diagnostics/maths.py,
``dense_diagnostics``), truncation energy at ``rank``.
"""

from __future__ import annotations

from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from fedsub.core.fedavg import fedavg, send_global, trainable_state
from fedsub.core.method import DenseUpdates, Metrics
from fedsub.core.registry import register
from fedsub.core.types import ClientContext, ClientUpdate, Payload, ServerState
from fedsub.core.validation import UpdateSpec, spec_of
from fedsub.core.workspace import Workspace
from fedsub.diagnostics.rounds import dense_round_diagnostics
from fedsub.models import adaptable  # Linear or dense Conv2d (GaLore reshapes kernels to matrices)
from fedsub.optim.galore_model import (
    export_state,
    freeze_all_but,
    galore_optimizer,
    head_parameter_names,
    import_state,
    layer_index,
    linear_weight_names,
)


class FedFTGOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int = Field(8, gt=0, description="GaLore rank r of every managed matrix")
    scale: float = Field(1.0, gt=0, description="GaLore scale (alpha) of the back-projected step")
    proj_type: Literal["svd", "rsvd", "random"] = Field("svd", description="per-client projector source")
    update_proj_gap: int = Field(
        50, gt=0, description="client steps between projector refreshes (counted across rounds)"
    )
    modules: list[str] = Field(
        default_factory=lambda: ["intermediate.dense", "up_proj", "c_fc", "fc1"],
        description="module-name suffixes of the MLP up-projection (any that the model has); independent of "
        "model.target_modules",
    )
    layers: list[int] | None = Field(None, description="block indices to train; None = the lower half (at least one)")
    reset_each_round: bool = Field(False, description="start each round with a fresh optimizer instead of the kept one")
    seed: int | None = Field(None, description="seed of random / rsvd projectors; None = the run seed")
    head_lr: float | None = Field(None, gt=0, description="lr of the densely trained head; None = the run's train.lr")
    diagnostics: bool = Field(
        True, description="update diagnostics every round (diag_* metrics, see fedsub/diagnostics)"
    )


def lower_half(indices: list[int]) -> set[int]:
    """The lower half of L blocks: 0 .. max(1, L // 2) - 1 (6 blocks -> 0, 1, 2; 1 block -> 0)."""
    count = max(indices) + 1
    return set(range(max(1, count // 2)))


def ftg_modules(workspace: Workspace, options: FedFTGOptions) -> list[str]:
    """The linear modules FedFTG trains: suffix match on ``modules``, inside the chosen blocks."""
    heads = tuple(workspace.head_modules)

    linears = [n for n, m in workspace.model.named_modules() if adaptable(m) and n.split(".", 1)[0] not in heads]
    blocks = [i for i in map(layer_index, linears) if i is not None]
    if not blocks:
        raise ValueError("fedftg: the model has no numbered transformer blocks to pick layers from")
    wanted = set(options.layers) if options.layers is not None else lower_half(blocks)
    chosen = [
        n for n in linears
        if any(n == s or n.endswith("." + s) for s in options.modules) and layer_index(n) in wanted
    ]  # fmt: skip
    if not chosen:
        raise ValueError(f"fedftg: no linear layer matches modules={options.modules} in layers {sorted(wanted)}")
    return chosen


@register("fedftg")
class FedFTG:
    """FedFTG (arXiv 2410.23111): GaLore clients, FedAvg of the dense weights."""

    Options = FedFTGOptions
    warmup = None
    global_model_note = None
    personalize = None  # a client evaluates the global model
    client_state: frozenset[str]  # set from the options in __init__
    diagnostics: DenseUpdates

    def __init__(self, options: FedFTGOptions):
        self.options = options
        self.client_state = (
            frozenset() if options.reset_each_round else frozenset({"optimizer"})
        )  # its GaLore-AdamW state
        self.diagnostics = DenseUpdates(rank=options.rank)
        self.galore_names: list[str] = []

    def prepare_model(self, workspace: Workspace) -> None:
        self.galore_names = linear_weight_names(workspace.model, ftg_modules(workspace, self.options))
        freeze_all_but(workspace, self.galore_names + head_parameter_names(workspace))

    def init(self, workspace: Workspace) -> ServerState:
        return trainable_state(workspace)

    def configure_train(self, state: ServerState, client_id: int) -> Payload:
        return send_global(state)

    def client_train(self, workspace: Workspace, payload: Payload, client: ClientContext) -> ClientUpdate:
        workspace.write(payload.tensors)
        o = self.options
        optimizer, _ = galore_optimizer(
            workspace, self.galore_names, client.train, rank=o.rank, scale=o.scale,
            proj_type=o.proj_type, update_proj_gap=o.update_proj_gap, seed=o.seed, head_lr=o.head_lr,
        )  # fmt: skip
        if "optimizer" in client.state and not o.reset_each_round:
            import_state(optimizer, client.state["optimizer"])
        metrics = workspace.train_local(client, optimizer)
        if not o.reset_each_round:
            client.state["optimizer"] = export_state(optimizer)
        upload = workspace.read(payload.tensors.keys())
        return ClientUpdate(client.client_id, Payload(upload), len(client.indices), metrics)

    def update_spec(self, state: ServerState, client_id: int, payload: Payload) -> UpdateSpec:
        return spec_of(payload.tensors)

    def aggregate_train(self, state: ServerState, updates: Sequence[ClientUpdate]) -> tuple[ServerState, Metrics]:
        """FedAvg; diag_* of the round's dense updates of the GaLore-managed matrices (the head left out)."""
        return fedavg(state, updates), dense_round_diagnostics(
            self.options, self.diagnostics, state, updates, self.galore_names
        )

    def load_global(self, workspace: Workspace, state: ServerState) -> None:
        workspace.write(state.tensors)
