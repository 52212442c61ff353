"""The golden cases (issue 16, point 5): tiny runs whose metrics.jsonl, timing aside, must stay
identical to the last digit while the code is reorganised. See README.md in this folder.

Each case is a raw experiment config (what a user writes in YAML). `run_case` runs it through
the CLI entry point (`fedsub run CONFIG --out DIR`, `fedsub.app.cli.main`) and returns every method's
records in the config's method order, with the machine-dependent fields stripped. The recorder
(record.py) writes them to <case>.jsonl beside the config it ran (<case>.yaml); test_golden.py
reruns each case and compares.

Dataset paths are written relative to the repository root and made absolute only for the run.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]  # the repository root
DATA = "tests/golden/data"

# ---------------------------------------------------------------- tiny experiments
# Text classification: a tiny random MiniLM on 36 definitions (3 classes, a quarter held out),
# 3 clients, 2 sampled per round: clients miss rounds, so catch-up and client-state paths run.
CLASSIFICATION = {
    "seed": 0,
    "model": {"name": "minilm", "tiny": True, "max_length": 16},
    "data": {"dataset": f"{DATA}/definitions.csv", "test_fraction": 0.25},
    "partition": {"scheme": "dirichlet", "alpha": 1.0, "min_partition_size": 3},
    "federation": {"num_clients": 3, "clients_per_round": 2, "rounds": 2},
    "train": {"local_steps": 2, "batch_size": 4, "lr": 1.0e-2},
}
SMOLLM = {"name": "smollm2", "tiny": True, "target_modules": ["q_proj", "v_proj", "up_proj"]}
# the other tasks, as in tests/fedsub_fixtures.TASK_SECTIONS but from files through the data loaders
TASKS = {
    "generation": {
        "task": {"kind": "generation", "max_new_tokens": 4, "eval_generate": 6},
        "model": {**SMOLLM, "max_length": 40},
        "data": {
            "dataset": f"{DATA}/instructions.jsonl",
            "text_column": "instruction",
            "label_column": "category",
            "test_fraction": 0.25,
        },
        "partition": {"scheme": "iid", "min_partition_size": 2},
        # small eval batches: a batch's logits are batch x length x 49152 (SmolLM2's vocabulary)
        "train": {"local_steps": 2, "batch_size": 4, "lr": 1.0e-2, "eval_batch_size": 8},
    },
    "multiple_choice": {
        "task": {"kind": "multiple_choice", "choices_column": "endings"},
        "model": {**SMOLLM, "max_length": 24},
        "data": {"dataset": f"{DATA}/choices.jsonl", "text_column": "ctx", "test_fraction": 0.25},
        "partition": {"scheme": "dirichlet", "alpha": 1.0, "by": "topic", "min_partition_size": 2},
        "train": {"local_steps": 2, "batch_size": 4, "lr": 1.0e-2, "eval_batch_size": 8},
    },
    "image_classification": {
        "task": {"kind": "image_classification"},
        "model": {
            "name": "efficientnet_lite0",
            "tiny": True,
            "target_modules": ["_expand_conv", "_project_conv", "_conv_head"],
        },
        "data": {"dataset": "digits", "num_classes": 3, "max_train_per_class": 8, "max_test_per_class": 4},
        "partition": {"scheme": "dirichlet", "alpha": 1.0, "min_partition_size": 2},
    },
}


def classification(name: str, methods: list, rounds: int = 2, **sections) -> dict[str, Any]:
    raw = {"name": name, **copy.deepcopy(CLASSIFICATION), "methods": methods}
    raw["federation"]["rounds"] = rounds
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


def task(kind: str, methods: list, rounds: int = 2) -> dict[str, Any]:
    raw = {"name": kind, **copy.deepcopy(CLASSIFICATION), **copy.deepcopy(TASKS[kind]), "methods": methods}
    raw["federation"]["rounds"] = rounds
    return raw


def demo() -> dict[str, Any]:
    """configs/demo.yaml (real all-MiniLM-L6-v2 weights, WordNet supersenses, 3 methods) cut to
    fit a test suite. Uncut, a method-round took 33-55 s on the loaded 2-core machine it was
    recorded on (40 MiniLM steps of 16 x 48 tokens, 400 test examples; 2 rounds: 3.4 min). Cut
    to ~58 s in all (load ~4 on 2 cores):
    - federation.rounds 8 -> 2 (round 2 already runs every path a later round does);
    - federation.clients_per_round 8 -> 3 (still 8 clients and the demo's partition; now sampled);
    - train.local_steps 5 -> 2 (still more than one optimizer step per client);
    - data.max_test_per_class 50 -> 10 (evaluation cost; 80 test examples, every class).
    max_train_per_class stays 250: it costs little (encoding, partition), the steps do."""
    raw = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    raw["federation"].update(rounds=2, clients_per_round=3)
    raw["train"]["local_steps"] = 2
    raw["data"]["max_test_per_class"] = 10
    return raw


# name -> raw config. One run per registered method (test_golden checks the registry has no
# other), fedgalore's options that change its code paths, one run per task kind, the Flower
# in-process grid, failures, and the demo.
CASES: dict[str, Any] = {
    "fedavg_full": classification(
        "fedavg_full",
        [{"name": "fedavg_full", "lr": 1.0e-3}],
        # also the train options the other cases leave at their defaults
        train={"local_steps": None, "local_epochs": 1.0, "weight_decay": 0.01, "max_grad_norm": 1.0},
    ),
    "fedftg": classification("fedftg", [{"name": "fedftg", "rank": 4}]),
    # the default: hybrid projectors (round 1 from the warm-up sketch, the refresh at round 3 from
    # the round-2 sketch), AJIVE-synchronised moments, factored downlink (clients catch up on
    # missed rounds' deltas)
    "fedgalore_ajive": classification(
        "fedgalore_ajive",
        [{"name": "fedgalore", "rank": 4, "proj_source": "hybrid", "proj_refresh_rounds": 2, "sync": "ajive"}],
        rounds=3,
    ),
    # FedGaLore-minus: each client keeps its optimizer state; hybrid with svd_rounds 1, so the
    # refresh at round 3 switches to a random projector and the kept moments are transported
    "fedgalore_sync_none": classification(
        "fedgalore_sync_none",
        [
            {
                "name": "fedgalore",
                "rank": 4,
                "proj_source": "hybrid",
                "svd_rounds": 1,
                "proj_refresh_rounds": 2,
                "sync": "none",
                "moments_on_refresh": "transport",
            }
        ],
        rounds=3,
    ),
    # random projectors refreshed every round, moments averaged, dense downlink
    "fedgalore_random_mean": classification(
        "fedgalore_random_mean",
        [
            {
                "name": "fedgalore",
                "rank": 4,
                "proj_source": "random",
                "proj_refresh_rounds": 1,
                "sync": "mean",
                "downlink": "dense",
            }
        ],
    ),
    "fedit": classification("fedit", [{"name": "fedit", "rank": 4, "lora_alpha": 8}]),
    # clients hold state (their own B): 2 of 3 sampled, so a client's B waits for it across rounds
    "fedsa_lora": classification("fedsa_lora", [{"name": "fedsa_lora", "rank": 4}], rounds=3),
    "fedsvd": classification("fedsvd", [{"name": "fedsvd", "rank": 4}]),
    "ffa_lora": classification("ffa_lora", [{"name": "ffa_lora", "rank": 4}]),
    "flexlora": classification("flexlora", [{"name": "flexlora", "rank": 4, "client_ranks": [2, 4, 3]}]),
    "flora": classification("flora", [{"name": "flora", "rank": 4, "client_ranks": [2, 4, 3]}]),
    "subspace_reg": classification("subspace_reg", [{"name": "subspace_reg", "rank": 4}]),
    "svd_redistribute": classification(
        "svd_redistribute", [{"name": "svd_redistribute", "rank": 4, "max_update_norm": 0.5}]
    ),
    # the task kinds (classification: every case above); fedgalore too where its code differs
    # (causal LMs have no new head; conv kernels as matrices)
    "task_generation": task("generation", ["fedit", {"name": "fedgalore", "rank": 4}]),
    "task_multiple_choice": task("multiple_choice", ["fedit"]),
    "task_image_classification": task("image_classification", ["fedit", {"name": "fedgalore", "rank": 4}]),
    # engine: flower without a superlink runs Flower's in-process grid
    "flower_grid_fedit": classification("flower_grid_fedit", [{"name": "fedit", "rank": 4}], rounds=3),
    # simulated dropouts and stragglers, norm-rejected updates, rounds skipped for want of a quorum,
    # evaluation every 2nd round (records with null metrics)
    "failures": classification(
        "failures",
        [{"name": "fedit", "rank": 4}],
        rounds=4,
        federation={"num_clients": 4, "clients_per_round": 4, "eval_every": 2},
        failures={"dropout_prob": 0.25, "straggler_prob": 0.25, "min_clients": 2},
        validation={"max_norm": 0.27},
    ),
    "demo": demo(),
}
CASES["flower_grid_fedit"]["engine"] = "flower"
SLOW = {"demo"}  # real weights: marked slow in test_golden.py


# ---------------------------------------------------------------- running and stripping
def is_machine_dependent(key: str) -> bool:
    """Timing and memory: seconds_train/_aggregate/_eval/_round/_warmup, a method's own seconds_*
    (fedgalore's seconds_ajive), peak_rss_mb and any other peak or *_mb memory figure."""
    return key.startswith(("seconds_", "peak_")) or key.endswith(("_mb", "_seconds")) or key in ("rss", "rss_mb")


def strip(value: Any) -> Any:
    """A record without its machine-dependent fields (also in nested dicts and lists)."""
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if not is_machine_dependent(k)}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def runnable(raw: dict[str, Any]) -> dict[str, Any]:
    """The config with its repository-relative dataset path made absolute."""
    raw = copy.deepcopy(raw)
    dataset = raw.get("data", {}).get("dataset", "")
    if dataset.startswith("tests/"):
        raw["data"]["dataset"] = str(ROOT / dataset)
    return raw


def method_keys(raw: dict[str, Any]) -> list[str]:
    return [m if isinstance(m, str) else m.get("label") or m["name"] for m in raw["methods"]]


def run_case(name: str, workdir: Path | None = None) -> list[dict[str, Any]]:
    """Run case `name` through `fedsub run` and return its stripped records, method by method."""
    import torch

    from fedsub.app.cli import main  # the public entry point; if the CLI moves, only this import changes

    # One intra-op thread, as tests/conftest.py sets for the whole suite: a float sum's order (so
    # its last digits) depends on how many threads split it, so recorder and test must agree.
    torch.set_num_threads(1)
    raw = CASES[name]
    with tempfile.TemporaryDirectory(prefix=f"golden-{name}-", dir=workdir) as tmp:
        config, out = Path(tmp) / f"{name}.yaml", Path(tmp) / "run"
        config.write_text(yaml.safe_dump(runnable(raw), sort_keys=False))
        rc = main(["run", str(config), "--out", str(out), "--quiet"])
        if rc != 0:
            raise RuntimeError(f"golden case {name}: `fedsub run` exited {rc} (its error is on stderr)")
        records = []
        for key in method_keys(raw):
            records += [strip(json.loads(line)) for line in (out / key / "metrics.jsonl").read_text().splitlines()]
    return records


# ---------------------------------------------------------------- files
def records_path(name: str) -> Path:
    return HERE / f"{name}.jsonl"


def config_path(name: str) -> Path:
    return HERE / f"{name}.yaml"


HEADER = "# golden case {name}: the config tests/golden/record.py ran; {name}.jsonl holds its records\n"


def config_text(name: str) -> str:
    return HEADER.format(name=name) + yaml.safe_dump(CASES[name], sort_keys=False)


def write_case(name: str, records: list[dict[str, Any]]) -> None:
    # json.dumps writes a float as repr(), which reads back as the same double: exact
    records_path(name).write_text("".join(json.dumps(r) + "\n" for r in records))
    config_path(name).write_text(config_text(name))


def read_case(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in records_path(name).read_text().splitlines()]


# ---------------------------------------------------------------- comparing
# Floats agree to these tolerances, everything else exactly. float32 kernels take other paths on
# other CPUs: the cases recorded on one machine differed on an AMD EPYC by at most 1.9e-5 relative
# (a pairwise cosine near 0.03) and 1.9e-6 absolute, in the last digits of losses and diag_*; a
# behaviour change moves accuracies by 1/n and losses by far more.
REL_TOL, ABS_TOL = 1e-4, 1e-6


def same(a: Any, b: Any) -> bool:
    """Equal (floats: to REL_TOL / ABS_TOL) and of the same JSON type (1 is not 1.0; NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def differences(name: str, golden: list[dict], now: list[dict], limit: int = 20) -> list[str]:
    """Readable lines, one per difference: case, method, round, key, golden vs now."""
    lines = []
    if len(golden) != len(now):
        lines.append(f"{name}: {len(golden)} golden records, {len(now)} now")
    for g, n in zip(golden, now):
        where = f"{name}: {g.get('method')} round {g.get('round')}"
        for key in sorted(g.keys() - n.keys()):
            lines.append(f"{where}: key {key!r} missing now (golden {g[key]!r})")
        for key in sorted(n.keys() - g.keys()):
            lines.append(f"{where}: key {key!r} is new (now {n[key]!r})")
        for key in g:
            if key not in n:
                continue
            if not same(g[key], n[key]):
                lines.append(f"{where}: {key}: golden {g[key]!r} now {n[key]!r}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
    return lines
