"""Hugging Face models by folder or hub id: the auto classes, tokenizers, tiny random copies for tests."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from fedsub.errors import ConfigError


def transformers():
    """The transformers module, its warnings and progress bars quieted.

    Imported here on first use, not at the top (about 1 s on top of torch, measured on this 2-core
    machine): `fedsub report`, `fedsub methods` and config validation load no model and never pay it."""
    import transformers as module  # late: start-up time, see the docstring

    # PEFT 0.21 calls a transformers 5 method deprecated in favour of another; nothing for users to fix.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    module.logging.set_verbosity_error()
    module.utils.logging.disable_progress_bar()
    return module


def load_tokenizer(path: str):
    try:
        return transformers().AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"field model.name: cannot load a tokenizer from {path!r} ({first_line(err)})") from None


def load_auto_model(
    auto_class: str, path: str, tiny: bool, seed: int, dtype: torch.dtype, shrink, what: str, **config_kwargs
) -> nn.Module:
    """transformers' `auto_class` (by name) from `path`, or (tiny) a random-init copy of its
    architecture shrunk by `shrink`.

    Seeded: a fresh head's init (and a tiny model's weights) are part of the run's seed, so every
    engine and client builds the same model. A folder that does not load is a one-line ConfigError."""
    module = transformers()
    auto = getattr(module, auto_class)
    torch.manual_seed(seed)
    try:
        if tiny:
            config = module.AutoConfig.from_pretrained(path, **config_kwargs)
            shrink(config)
            return auto.from_config(config).to(dtype)
        return auto.from_pretrained(path, dtype=dtype, **config_kwargs)
    except (OSError, ValueError) as err:
        raise ConfigError(f"field model.name: cannot load {path!r}{what} ({first_line(err)})") from None


def shrink_config(config) -> None:
    """Tiny test architecture: 2 layers, width 32, so a round takes milliseconds."""
    for key, value in dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64).items():
        if hasattr(config, key):
            setattr(config, key, value)


def first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
