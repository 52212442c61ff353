"""fedit: FedAvg of LoRA A and B separately (Zhang et al. 2024, "Towards building the federated GPT").

Biased by construction: avg(B) avg(A) != avg(BA); that is the gap later methods close.
"""

from __future__ import annotations

from fedsub.core.registry import register
from fedsub.core.workspace import Workspace
from fedsub.lora.adapters import LoraOptions, add_lora
from fedsub.methods.base import FedAvgMethod


@register("fedit")
class FedIT(FedAvgMethod):
    Options = LoraOptions

    def prepare_model(self, workspace: Workspace) -> None:
        add_lora(workspace, self.options)
