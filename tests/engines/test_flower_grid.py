"""engine: flower over the in-process grid gives the simulator's metrics; faults cost their round."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("flwr")

from fedsub.config import load_config  # noqa: E402
from fedsub.engines.simulation import TIMING_KEYS  # noqa: E402
from fedsub.run import run_experiment  # noqa: E402
from fedsub_fixtures import write_csv_experiment  # noqa: E402

# fedgalore with factored downlink and AJIVE: client state (held weights, optimizer) across rounds
METHODS = ["fedit", {"name": "fedgalore", "rank": 4, "sync": "ajive"}]


def read_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def strip_timing(record):
    """Timing fields aside: the engine's and the methods' own (fedgalore's seconds_ajive)."""
    return {k: v for k, v in record.items() if k not in TIMING_KEYS and not k.startswith("seconds_")}


def assert_close(a, b, path=""):
    """Same keys, same values; floats to 1e-6."""
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


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flower_grid")
    config = write_csv_experiment(tmp, METHODS, federation={"num_clients": 3, "clients_per_round": 2, "rounds": 3})
    out = {}
    for engine in ("simulation", "flower"):
        cfg = load_config(config, [f"engine={engine}"])
        run_experiment(cfg, tmp / engine, quiet=True)
        out[engine] = tmp / engine
    return out


@pytest.mark.parametrize("method", ["fedit", "fedgalore"])
def test_flower_grid_matches_simulator(runs, method):
    sim = read_records(runs["simulation"] / method / "metrics.jsonl")
    flo = read_records(runs["flower"] / method / "metrics.jsonl")
    assert len(sim) == len(flo) == 3
    assert all(r["accuracy"] is not None for r in flo)
    for a, b in zip(sim, flo):
        assert_close(strip_timing(a), strip_timing(b), f"{method} round {a['round']}")
    # clients sampled 2 of 3 per round: each round's clients really trained through the grid
    assert [r["clients"] for r in flo] == [r["clients"] for r in sim]


def test_flower_run_directory_has_the_simulator_files(runs):
    for name in ("config.yaml", "partition.json", "summary.json", "results.md", "accuracy.png"):
        assert (runs["flower"] / name).is_file(), name
    for method in ("fedit", "fedgalore"):
        assert (runs["flower"] / method / "final_model.safetensors").is_file()
        sim = json.loads((runs["simulation"] / method / "summary.json").read_text())
        flo = json.loads((runs["flower"] / method / "summary.json").read_text())
        assert flo["final_accuracy"] == pytest.approx(sim["final_accuracy"], abs=1e-6)
        assert flo["bytes_up_per_round"] == sim["bytes_up_per_round"]
