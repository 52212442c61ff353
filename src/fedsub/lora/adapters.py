"""PEFT glue: the LoRA options every LoRA method takes, wrapping a workspace model with LoRA, freezing A,
and the server's copy of factors frozen at their shared init."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field

from fedsub.core.types import Tensors, server_extra
from fedsub.core.workspace import Workspace
from fedsub.errors import ConfigError
from fedsub.lora.names import LORA_A, is_lora


class LoraOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int = Field(8, gt=0, description="LoRA rank r")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scale s = lora_alpha / r")
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    diagnostics: bool = Field(
        True, description="subspace diagnostics every round (diag_* metrics, see fedsub/diagnostics)"
    )


def add_lora(workspace: Workspace, options: LoraOptions) -> None:
    """Wrap the workspace model with PEFT LoRA on its target modules; the head is trained densely.

    The LoRA A init comes from torch's global RNG, which model loading seeded with the run seed just
    before (fedsub.models), so every process that builds the workspace draws the same A.
    """
    from peft import LoraConfig, get_peft_model  # late: peft takes seconds to import; only LoRA methods need it

    modules = dict(workspace.model.named_modules())
    convs = [t for t in workspace.target_modules if isinstance(modules.get(t), torch.nn.Conv2d)]
    if convs:  # the server maths (stacking, SVD, diagnostics) take factors as matrices
        raise ConfigError(
            f"field model.target_modules: LoRA methods adapt linear layers, not the Conv2d {convs[0]!r}; target "
            f"linear / pointwise layers or use fedgalore, fedftg or fedavg_full"
        )
    config = LoraConfig(
        r=options.rank,
        lora_alpha=options.lora_alpha,
        lora_dropout=options.lora_dropout,
        target_modules=workspace.target_modules,
        modules_to_save=workspace.head_modules,
    )
    workspace.model = get_peft_model(workspace.model, config)


def freeze_lora_a(workspace: Workspace) -> None:
    """Freeze every LoRA A: not trained, so (what is trained is what is sent) never uploaded."""
    for name, param in workspace.model.named_parameters():
        if LORA_A in name:
            param.requires_grad_(False)


def lora_scale(options: LoraOptions) -> float:
    return options.lora_alpha / options.rank


@server_extra("lora.frozen")
@dataclass
class FrozenFactors:
    """The server's copy of the LoRA factors its clients keep frozen at their shared seeded init
    (FFA-LoRA's A): never sent, kept for the diagnostics (`ServerState.extra`)."""

    tensors: Tensors


def frozen_factors(workspace: Workspace) -> FrozenFactors:
    params = workspace.model.named_parameters()
    return FrozenFactors(workspace.read([n for n, p in params if not p.requires_grad and is_lora(n)]))
