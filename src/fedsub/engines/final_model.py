"""The global model of a finished method, as every engine saves it: `<method>/final_model.safetensors`.

It holds what the method changed on top of the rebuilt starting model (the seeded base + the
method's `prepare_model`): the server's global tensors, every trainable tensor and every LoRA factor.
`fedsub export` (fedsub.app.export) reads it back; the engines write it, so it lives below both.
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch

from fedsub.core.io import atomic_write_bytes

FINAL_MODEL = "final_model.safetensors"
FORMAT_TAG = "fedsub-final-model/1"


def saved_names(workspace, state) -> list[str]:
    """Global tensors, trainables and LoRA factors (FFA-LoRA's frozen A belongs to the adapter)."""
    params = workspace.parameters_by_name()
    keep = (set(state.tensors) | set(workspace.trainable_names()) | {n for n in params if ".lora_" in n}) & set(params)
    return [n for n in params if n in keep]


def save_final_model(server, method_dir: Path, label_names: list[str]) -> Path:
    """Write the final global model of `server` (what holds the method, workspace, state and spec) atomically."""
    workspace, state, spec = server.workspace, server.state, server.spec
    server.method.load_global(workspace, state)
    tensors = {n: t.contiguous() for n, t in workspace.read(saved_names(workspace, state)).items()}
    metadata = {
        "format": FORMAT_TAG,
        "method": spec.name,
        "key": spec.key,
        "rounds": str(state.round),
        "label_names": json.dumps(label_names),
    }
    return atomic_write_bytes(Path(method_dir) / FINAL_MODEL, safetensors.torch.save(tensors, metadata=metadata))
