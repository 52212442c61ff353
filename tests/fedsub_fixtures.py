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


def write_csv_experiment(folder, methods, **sections):
    """A tiny experiment on a local CSV (36 definitions, 3 classes, 3 clients): writes data.csv and
    tiny.yaml into `folder`, returns the YAML path. `sections` replace whole config sections."""
    from pathlib import Path

    import yaml

    folder = Path(folder)
    names = ["animal", "artifact", "feeling"]
    rows = ["text,label"] + [f'"{t}",{names[label]}' for label in TEXTS for t in TEXTS[label]]
    rows += [f'"another {t}",{names[label]}' for label in TEXTS for t in TEXTS[label]]
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    config = {
        "name": "tiny",
        "model": {"name": "minilm", "tiny": True, "max_length": 16},
        "data": {"dataset": str(folder / "data.csv"), "test_fraction": 0.25},
        "partition": {"scheme": "dirichlet", "alpha": 1.0, "min_partition_size": 3},
        "federation": {"num_clients": 3, "clients_per_round": 2, "rounds": 2},
        "train": {"local_steps": 2, "batch_size": 4, "lr": 1e-2},
        "methods": methods,
        **sections,
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
