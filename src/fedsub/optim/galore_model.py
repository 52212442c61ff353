"""What FedFTG and FedGaLore share: picking the GaLore-managed weights, freezing, the optimizer.

GaLore (Zhao et al. 2024, arXiv 2403.03507) runs on the dense 2-D target weights; the task head
is trained densely with plain AdamW (a parameter group without ``rank``). FedFTG (arXiv
2410.23111) and FedGaLore (arXiv 2602.01746) differ only in what crosses the wire and how the
server combines it (see their modules).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import torch
from torch import nn

from fedsub.core.types import TrainSettings
from fedsub.core.workspace import Workspace
from fedsub.optim.galore import GaLoreAdamW

# Block index in the usual transformer layouts: BERT "encoder.layer.3.", Llama "layers.3.",
# GPT-2 "h.3.", ViT-likes "blocks.3.".
# EfficientNet (lukemelas names) "_blocks.3.".
_LAYER_INDEX = re.compile(r"(?:^|\.)_?(?:layer|layers|h|blocks)\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The transformer block a module belongs to, or None outside the blocks."""
    match = _LAYER_INDEX.search(name)
    return int(match.group(1)) if match else None


def head_parameter_names(workspace: Workspace) -> list[str]:
    """All parameters of the task-head modules (trained densely by every method)."""
    heads = tuple(workspace.head_modules)
    return [n for n, _ in workspace.model.named_parameters() if n.split(".", 1)[0] in heads]


class MatrixConv2d(nn.Module):
    """A dense Conv2d whose kernel is stored as the matrix GaLore projects: out x (in * kh * kw),
    viewed back as out x in x kh x kw in forward (same outputs as the conv it replaces)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.kernel_shape = tuple(conv.weight.shape)
        self.weight = nn.Parameter(
            conv.weight.detach().reshape(conv.weight.shape[0], -1).clone(), requires_grad=conv.weight.requires_grad
        )
        self.bias = conv.bias
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.weight.view(self.kernel_shape)
        return nn.functional.conv2d(x, kernel, self.bias, self.stride, self.padding, self.dilation, self.groups)


def as_matrix_modules(model: nn.Module, module_names: list[str]) -> None:
    """Replace each named dense nn.Conv2d by a MatrixConv2d (GaLore manages 2-D weights only)."""
    for name in module_names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        module = getattr(parent, child)
        if isinstance(module, nn.Conv2d) and module.groups == 1:
            if any(module.padding) and module.padding_mode != "zeros" or type(module) is not nn.Conv2d:
                raise ValueError(f"{name}: only plain zero-padded Conv2d kernels can be managed as matrices")
            setattr(parent, child, MatrixConv2d(module))


def linear_weight_names(model: nn.Module, module_names: list[str]) -> list[str]:
    """``<module>.weight`` of each named nn.Linear or dense Conv2d (the GaLore-managed 2-D
    matrices); convs are first turned into MatrixConv2d, their kernels reshaped to matrices."""
    as_matrix_modules(model, module_names)
    modules = dict(model.named_modules())
    missing = [m for m in module_names if not isinstance(modules.get(m), (nn.Linear, MatrixConv2d))]
    if missing:
        raise ValueError(f"not linear layers of the model: {missing}")
    return [f"{m}.weight" for m in module_names]


def freeze_all_but(workspace: Workspace, trained: list[str]) -> None:
    """Only ``trained`` parameters get gradients (target weights and head; biases stay frozen)."""
    keep = set(trained)
    for name, param in workspace.model.named_parameters():
        param.requires_grad_(name in keep)


def galore_optimizer(
    workspace: Workspace,
    galore_names: list[str],
    train: TrainSettings,
    head_lr: float | None = None,
    **galore: Any,
) -> tuple[GaLoreAdamW, list[torch.nn.Parameter]]:
    """GaLoreAdamW over the trainable parameters: ``galore_names`` in a group with the GaLore
    options (rank, scale, proj_type, ...) at ``train.lr``, every other trainable tensor (the
    densely trained head) in a plain-AdamW group at ``head_lr`` (default: ``train.head_lr``, the
    run's train.lr, which the LoRA methods' heads train at too; GaLore's own lr is ~10x lower).

    Returns the optimizer and the GaLore parameters in ``galore_names`` order (the order fixes
    the optimizer's parameter indices, hence state_dict ids and derived seeds).
    """
    params = workspace.parameters_by_name()
    managed = [params[n] for n in galore_names]
    others = [p for n, p in params.items() if p.requires_grad and n not in set(galore_names)]
    groups = [{"params": managed, **galore}]
    if others:
        groups.append({"params": others, "rank": None, "lr": head_lr or train.head_lr or train.lr})
    optimizer = GaLoreAdamW(groups, lr=train.lr, weight_decay=train.weight_decay)
    return optimizer, managed


def export_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A detached CPU copy of the optimizer state (what a client keeps between its rounds).

    Deep-copied: torch's load_state_dict may alias same-dtype tensors, and the client's stored
    state must not change when the next round's optimizer steps.
    """
    state = optimizer.state_dict()
    return copy.deepcopy(
        {
            "state": {
                k: {n: v.detach().cpu() if torch.is_tensor(v) else v for n, v in s.items()}
                for k, s in state["state"].items()
            },
            "param_groups": state["param_groups"],
        }
    )


def import_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load a state saved by :func:`export_state` (tensors copied, the saved dict untouched)."""
    optimizer.load_state_dict(copy.deepcopy(saved))
