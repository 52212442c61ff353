"""fedavg_full: full fine-tuning of the target modules (and head), FedAvg of the weights.

The upper reference every LoRA method is compared to (docs/methods.md, Baselines). Metrics: the diag_*
update diagnostics of the target modules' weight matrices (fedsub/diagnostics/maths.py,
``dense_diagnostics``; no truncation energy: there is no rank).
"""

from __future__ import annotations

from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field

from fedsub.core.fedavg import fedavg, send_global, train_and_upload, trainable_state
from fedsub.core.method import DenseUpdates, Metrics
from fedsub.core.registry import register
from fedsub.core.types import ClientContext, ClientUpdate, Payload, ServerState
from fedsub.core.validation import UpdateSpec, spec_of
from fedsub.core.workspace import Workspace
from fedsub.diagnostics.rounds import dense_round_diagnostics


class FedAvgFullOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    diagnostics: bool = Field(
        True, description="update diagnostics every round (diag_* metrics, see fedsub/diagnostics)"
    )


@register("fedavg_full")
class FedAvgFull:
    Options = FedAvgFullOptions
    warmup = None
    client_state = frozenset()
    diagnostics = DenseUpdates(rank=None)
    global_model_note = None
    personalize = None  # a client evaluates the global model

    def __init__(self, options: FedAvgFullOptions):
        self.options = options
        self.matrix_names: list[
            str
        ] = []  # the diagnostics' matrices: target weights (2-D or conv kernels), no biases, no head

    def prepare_model(self, workspace: Workspace) -> None:
        targets, trained = (
            tuple(workspace.target_modules),
            tuple(workspace.target_modules) + tuple(workspace.head_modules),
        )
        self.matrix_names = []
        for name, param in workspace.model.named_parameters():
            module = name.rsplit(".", 1)[0]
            param.requires_grad_(module in trained)
            if module in targets and param.ndim >= 2:
                self.matrix_names.append(name)

    def init(self, workspace: Workspace) -> ServerState:
        return trainable_state(workspace)

    def configure_train(self, state: ServerState, client_id: int) -> Payload:
        return send_global(state)

    def client_train(self, workspace: Workspace, payload: Payload, client: ClientContext) -> ClientUpdate:
        return train_and_upload(workspace, payload, client)

    def update_spec(self, state: ServerState, client_id: int, payload: Payload) -> UpdateSpec:
        return spec_of(payload.tensors)

    def aggregate_train(self, state: ServerState, updates: Sequence[ClientUpdate]) -> tuple[ServerState, Metrics]:
        return fedavg(state, updates), dense_round_diagnostics(
            self.options, self.diagnostics, state, updates, self.matrix_names
        )

    def load_global(self, workspace: Workspace, state: ServerState) -> None:
        workspace.write(state.tensors)
