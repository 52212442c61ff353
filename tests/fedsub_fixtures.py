"""Small builders shared by the tests."""

from __future__ import annotations

from fedsub.config import validate_config

TEXTS = {
    0: ["a small furry animal kept as a pet", "a large wild cat of the forest", "a bird that sings at dawn",
        "a domestic animal that barks", "a fish living in the deep sea", "an insect with bright wings"],
    1: ["a tool for cutting wood", "a device used to measure time", "a machine that prints pages",
        "an instrument for writing", "a container for holding liquids", "a vehicle with two wheels"],
    2: ["a feeling of great happiness", "the state of being afraid", "a sudden feeling of anger",
        "a mood of quiet sadness", "an emotion of deep love", "the state of being calm"],
}


def tiny_config(**overrides):
    raw = {
        "name": "tiny",
        "model": {"name": "minilm", "tiny": True, "max_length": 16},
        "federation": {"num_clients": 3, "clients_per_round": 3, "rounds": 2},
        "train": {"local_steps": 2, "batch_size": 4, "lr": 1e-2},
        "methods": ["fedit"],
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            raw.setdefault(section, {})[field] = value
        else:
            raw[section] = value
    return validate_config(raw)
