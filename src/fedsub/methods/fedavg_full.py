"""fedavg_full: full fine-tuning of the target modules (and head), FedAvg of the weights.

The upper reference every LoRA method is compared to (docs/methods.md, Baselines). Metrics: the diag_*
update diagnostics of the target modules' weight matrices (fedsub/diagnostics/maths.py,
``dense_diagnostics``; no truncation energy: there is no rank).
"""

from __future__ import annotations

from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field

from fedsub.core.registry import register
from fedsub.core.types import ClientUpdate, ServerState
from fedsub.core.workspace import Workspace
from fedsub.methods.base import FedAvgMethod


class FedAvgFullOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    diagnostics: bool = Field(True, description="update diagnostics every round (diag_* metrics, see fedsub/diagnostics)")


@register("fedavg_full")
class FedAvgFull(FedAvgMethod):
    Options = FedAvgFullOptions

    def prepare_model(self, workspace: Workspace) -> None:
        targets, trained = tuple(workspace.target_modules), tuple(workspace.target_modules) + tuple(workspace.head_modules)
        self.matrix_names = []  # the diagnostics' matrices: target weights (2-D or conv kernels), no biases, no head
        for name, param in workspace.model.named_parameters():
            module = name.rsplit(".", 1)[0]
            param.requires_grad_(module in trained)
            if module in targets and param.ndim >= 2:
                self.matrix_names.append(name)

    def round_metrics(self, state: ServerState, new: ServerState, updates: Sequence[ClientUpdate]) -> dict[str, float]:
        from fedsub.diagnostics.rounds import dense_round_diagnostics  # late, as in base

        return dense_round_diagnostics(state, updates, self.matrix_names, None) if self.options.diagnostics else {}
