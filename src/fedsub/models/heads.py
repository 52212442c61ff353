"""Which modules of a loaded model are its task head (trained densely by every method) and which
are adapted (LoRA factors, GaLore projections, dense fine-tuning)."""

from __future__ import annotations

from torch import nn

from fedsub.errors import ConfigError

HEAD_CANDIDATES = (
    "classifier",
    "score",
    "_fc",
)  # BERT-likes / causal-LM-likes sequence-classification heads / EfficientNet


def head_module_names(model: nn.Module, configured: list[str] | None, required: bool = True) -> list[str]:
    """Top-level task-head modules (trained densely by every method).

    Not required for a causal LM: its head is the pretrained LM head, in SmolLM2 tied to the
    49152 x 576 input embedding (28M parameters, 113 MB in float32); training it densely would send
    ~100x LoRA's bytes each way per client and round, and instruction tuning needs no new vocabulary.
    """
    children = dict(model.named_children())
    if configured is None and not required:
        return []
    names = configured if configured is not None else [n for n in HEAD_CANDIDATES if n in children]
    missing = [n for n in names if n not in children]
    if missing or not names:
        raise ConfigError(
            f"field model.head_modules: no head module {missing or list(HEAD_CANDIDATES)} in {sorted(children)}"
        )
    return names


def adaptable(module: nn.Module) -> bool:
    """nn.Linear, or a dense (groups=1) nn.Conv2d: depthwise kernels (C x 1 x k x k) have no matrix
    worth a low-rank factor (a 3x3 depthwise kernel is a C x 9 matrix)."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def target_linear_names(model: nn.Module, suffixes: list[str], exclude: list[str]) -> list[str]:
    """Full names of linear (and dense conv) modules whose name ends with one of `suffixes`, outside the head."""
    names = [
        name
        for name, module in model.named_modules()
        if adaptable(module)
        and any(name == s or name.endswith("." + s) for s in suffixes)
        and not any(name == h or name.startswith(h + ".") for h in exclude)
    ]
    if not names:
        raise ConfigError(f"field model.target_modules: {suffixes} matches no linear layer of the model")
    return names
