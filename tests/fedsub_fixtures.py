"""Small builders shared by the tests."""

from __future__ import annotations

from fedsub.config import validate_config

TEXTS = {
    0: [
        "a small furry animal kept as a pet",
        "a large wild cat of the forest",
        "a bird that sings at dawn",
        "a domestic animal that barks",
        "a fish living in the deep sea",
        "an insect with bright wings",
    ],
    1: [
        "a tool for cutting wood",
        "a device used to measure time",
        "a machine that prints pages",
        "an instrument for writing",
        "a container for holding liquids",
        "a vehicle with two wheels",
    ],
    2: [
        "a feeling of great happiness",
        "the state of being afraid",
        "a sudden feeling of anger",
        "a mood of quiet sadness",
        "an emotion of deep love",
        "the state of being calm",
    ],
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


def stop_at(monkeypatch, round_index):
    """Make Simulation.run_round raise KeyboardInterrupt when it reaches `round_index` (0-based);
    returns the undo."""
    from fedsub.engines.simulation import Simulation

    original = Simulation.run_round

    def run_round(self, index, on_client=None):
        if index == round_index:
            raise KeyboardInterrupt
        return original(self, index, on_client)

    monkeypatch.setattr(Simulation, "run_round", run_round)
    return lambda: monkeypatch.setattr(Simulation, "run_round", original)


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


# ---- tiny versions of the other tasks (the method matrix runs every method on each)
INSTRUCTIONS = [
    ("Define the word 'cat'.", "a small furry animal kept as a pet"),
    ("Define the word 'saw'.", "a tool for cutting wood"),
    ("Define the word 'joy'.", "a feeling of great happiness"),
    ("Use the word 'cat' in a sentence.", "the cat slept on the mat"),
    ("Use the word 'saw' in a sentence.", "he cut the board with a saw"),
    ("Use the word 'joy' in a sentence.", "she jumped for joy"),
]
CHOICES = [
    (
        "Which definition matches the word 'cat'?",
        ["a tool for cutting wood", "a small furry animal", "a feeling of joy", "a large body of water"],
        1,
    ),
    (
        "Which definition matches the word 'saw'?",
        ["a tool for cutting wood", "a small furry animal", "a feeling of joy", "a large body of water"],
        0,
    ),
    (
        "Which definition matches the word 'joy'?",
        ["a tool for cutting wood", "a small furry animal", "a feeling of joy", "a large body of water"],
        2,
    ),
]
TASK_SECTIONS = {
    "classification": {},
    "generation": {
        "task": {"kind": "generation", "max_new_tokens": 4, "eval_generate": 6},
        "model": {"name": "smollm2", "tiny": True, "max_length": 40, "target_modules": ["q_proj", "v_proj", "up_proj"]},
        # small eval batches: a batch's logits are batch x length x 49152 (SmolLM2's vocabulary)
        "train": {"local_steps": 2, "batch_size": 4, "lr": 1e-2, "eval_batch_size": 8},
    },
    "multiple_choice": {
        "task": {"kind": "multiple_choice"},
        "model": {"name": "smollm2", "tiny": True, "max_length": 24, "target_modules": ["q_proj", "v_proj", "up_proj"]},
        "train": {"local_steps": 2, "batch_size": 4, "lr": 1e-2, "eval_batch_size": 8},
    },
    "image_classification": {
        "task": {"kind": "image_classification"},
        "model": {
            "name": "efficientnet_lite0",
            "tiny": True,
            "target_modules": ["_expand_conv", "_project_conv", "_conv_head"],
        },
    },
}
# FedFTG trains MLP up-projections; the tiny EfficientNet's lower half has only a project conv.
TASK_METHOD_OPTIONS = {("image_classification", "fedftg"): {"modules": ["_project_conv"]}}


def task_config(kind: str, method: str):
    """tiny_config for one task and one method (with the options that task needs)."""
    spec = {"name": method, **TASK_METHOD_OPTIONS.get((kind, method), {})}
    return tiny_config(methods=[spec], **TASK_SECTIONS[kind])


def tiny_images():
    """18 sklearn digits (0, 1, 2; 6 each) as uint8, and their labels."""
    import numpy as np
    from sklearn.datasets import load_digits

    bunch = load_digits()
    rows = np.concatenate([np.flatnonzero(bunch.target == d)[:6] for d in range(3)])
    return np.rint(bunch.images[rows] * (255 / 16)).astype(np.uint8), bunch.target[rows].tolist()


# ---- comparing two runs' metrics.jsonl (engines, resume)
def strip_timing(record):
    """Timing fields aside: the engine's and the methods' own (fedgalore's seconds_ajive)."""
    from fedsub.engines.rounds import TIMING_KEYS

    return {k: v for k, v in record.items() if k not in TIMING_KEYS and not k.startswith("seconds_")}


def untimed_records(path):
    """A metrics.jsonl's records without their timing fields."""
    import json

    return [strip_timing(json.loads(line)) for line in path.read_text().splitlines()]


def one_line_error(capsys) -> str:
    """stderr of a CLI call that failed: one `fedsub: error: ...` line, returned."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fedsub: error: "), err
    return err


def assert_close(a, b, path=""):
    """Same keys, same values; floats to 1e-6."""
    import pytest

    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert b == pytest.approx(a, abs=1e-6, rel=1e-6), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
