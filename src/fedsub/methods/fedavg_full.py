"""fedavg_full: full fine-tuning of the target modules (and head), FedAvg of the weights.

The upper reference every LoRA method is compared to (METHODS.md, Baselines).
"""

from __future__ import annotations

from fedsub.core.registry import register
from fedsub.core.workspace import Workspace
from fedsub.methods.base import FedAvgMethod, NoOptions


@register("fedavg_full")
class FedAvgFull(FedAvgMethod):
    Options = NoOptions

    def prepare_model(self, workspace: Workspace) -> None:
        trained = tuple(workspace.target_modules) + tuple(workspace.head_modules)
        for name, param in workspace.model.named_parameters():
            module = name.rsplit(".", 1)[0]
            param.requires_grad_(module in trained)
