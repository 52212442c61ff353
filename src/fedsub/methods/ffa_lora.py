"""ffa_lora: LoRA with A frozen at its shared random init; only B (and the head) is trained and sent.

Sun et al. 2024, "Improving LoRA in privacy-preserving federated learning". With A fixed and shared,
avg(B) A = avg(BA): aggregation is exact and the upload is halved.
"""

from __future__ import annotations

from fedsub.core.registry import register
from fedsub.core.workspace import Workspace
from fedsub.lora.adapters import LoraOptions, add_lora, freeze_lora_a
from fedsub.methods.base import FedAvgMethod


@register("ffa_lora")
class FFALoRA(FedAvgMethod):
    Options = LoraOptions

    def prepare_model(self, workspace: Workspace) -> None:
        add_lora(workspace, self.options)
        freeze_lora_a(workspace)  # A stays at its shared seeded init
