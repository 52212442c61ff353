"""engine: flower over the in-process grid gives the simulator's metrics; faults cost their round."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("flwr")

from fedsub_fixtures import assert_close, strip_timing, write_csv_experiment  # noqa: E402

from fedsub.app.run import run_experiment  # noqa: E402
from fedsub.config import load_config  # noqa: E402

# fedgalore with factored downlink and AJIVE: client state (held weights, optimizer) across rounds;
# fedsa_lora: each client's own B in its node's context.state
METHODS = ["fedit", {"name": "fedgalore", "rank": 4, "sync": "ajive"}, {"name": "fedsa_lora", "rank": 4}]


def read_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


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


@pytest.mark.parametrize("method", ["fedit", "fedgalore", "fedsa_lora"])
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


def local_run(tiny_data, tmp_path, faults, min_clients=1):
    from fedsub_fixtures import tiny_config

    from fedsub.engines.flower.engine import FlowerLocal

    cfg = tiny_config(
        engine="flower", flower={"round_timeout": 5, "startup_timeout": 0}, failures={"min_clients": min_clients}
    )
    engine = FlowerLocal(cfg, cfg.methods[0], tiny_data, tmp_path / "fedit")
    return engine.run(faults=faults), engine


def test_failing_and_dead_clients_are_left_out_of_the_round(tiny_data, tmp_path):
    records, _ = local_run(tiny_data, tmp_path, {0: "error", 2: "dead"}, min_clients=1)
    for record in records:
        assert record["clients"] == [0, 1, 2] and record["aggregated"] == [1] and record["accuracy"] is not None
        assert [f["client"] for f in record["dropped"]] == [0, 2] and record["skipped"] is None
        assert "RuntimeError: injected failure on partition 0" in record["dropped"][0]["reason"]
        assert (
            record["dropped"][1]["reason"] == "no reply after 0s (flower.round_timeout=5.0s)"
        )  # the local grid does not sleep
        assert record["bytes_up"] > 0 and record["bytes_down"] == 3 * record["bytes_up"]  # fedit: A, B both ways


def test_a_partition_without_a_node_is_a_failure_of_its_rounds(tiny_data, tmp_path):
    records, _ = local_run(tiny_data, tmp_path, {1: "gone"}, min_clients=2)
    assert [r["aggregated"] for r in records] == [[0, 2], [0, 2]]
    assert records[0]["dropped"] == [{"client": 1, "reason": "no node with partition-id 1 is connected"}]


def test_round_below_min_clients_is_skipped_with_the_reason(tiny_data, tmp_path):
    records, engine = local_run(tiny_data, tmp_path, {0: "error", 2: "dead"}, min_clients=2)
    assert [r["skipped"] for r in records] == ["1 usable update < min_clients 2"] * 2
    assert records[0]["aggregated"] == [] and records[0]["clients"] == [0, 1, 2]
    assert engine.state.round == 0  # nothing aggregated: the global model is the initial one
    written = [json.loads(line) for line in (tmp_path / "fedit" / "metrics.jsonl").read_text().splitlines()]
    assert written == records


def test_flower_superlink_must_be_host_port():
    from fedsub_fixtures import tiny_config

    from fedsub.errors import ConfigError

    with pytest.raises(
        ConfigError, match="field flower.superlink: 'localhost' is not host:port; give the SuperLink's address"
    ):
        tiny_config(engine="flower", flower={"superlink": "localhost", "insecure": True})
    assert (
        tiny_config(engine="flower", flower={"superlink": "127.0.0.1:9091", "insecure": True}).flower.superlink
        == "127.0.0.1:9091"
    )


def test_simulated_dropouts_and_stragglers_match_the_simulator(tiny_data, tmp_path):
    """failures.* means the same on both engines: the same clients drop, for the same reasons."""
    from fedsub_fixtures import tiny_config

    from fedsub.engines.flower.engine import FlowerLocal
    from fedsub.engines.simulation import Simulation

    cfg = tiny_config(engine="flower", flower={"round_timeout": 5, "startup_timeout": 0},
                      federation={"num_clients": 3, "clients_per_round": 3, "rounds": 4},
                      failures={"dropout_prob": 0.25, "straggler_prob": 0.4})  # fmt: skip
    sim = Simulation(cfg, cfg.methods[0], tiny_data, tmp_path / "sim").run()
    flo = FlowerLocal(cfg, cfg.methods[0], tiny_data, tmp_path / "flower").run()
    reasons = sorted({d["reason"] for r in sim for d in r["dropped"]})
    assert reasons == ["dropout", "straggler"]  # seed 0 gives both kinds of fault in 4 rounds
    assert sim[0]["skipped"] == "0 usable updates < min_clients 1"  # round 1: all three straggle
    for a, b in zip(sim, flo):
        assert_close(strip_timing(a), strip_timing(b), f"round {a['round']}")
