"""A real loopback deployment: a SuperLink and 2 warm SuperNodes (`fedsub flower node`) on 127.0.0.1.

Two runs of 2 rounds of fedit on the same nodes: both give the simulator's metrics.jsonl (timing
aside); the second run reuses each node's model (its worker logs one build for both runs); a worker
killed between the runs is restarted by its node, rebuilds, and the run is unchanged. A third run
with Flower's SecAgg+ gives the same rounds to quantisation error."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import psutil
import pytest

pytest.importorskip("flwr")

from fedsub_fixtures import strip_timing, write_csv_experiment  # noqa: E402

from fedsub.app.run import run_experiment  # noqa: E402
from fedsub.config import load_config  # noqa: E402
from fedsub.engines.flower.deploy import CONNECTION, flwr_json, write_connection  # noqa: E402
from fedsub.engines.flower.loopback import Loopback  # noqa: E402


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "fedit" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_warm_nodes_serve_two_runs_like_the_simulator(tmp_path):
    config = write_csv_experiment(
        tmp_path, ["fedit"], federation={"num_clients": 2, "clients_per_round": 2, "rounds": 2}
    )
    run_experiment(load_config(config, ["engine=simulation"]), tmp_path / "simulated", quiet=True)
    expected = [strip_timing(r) for r in records(tmp_path / "simulated")]
    with Loopback(tmp_path / "flower", nodes=2) as link:
        overrides = [
            "engine=flower",
            f"flower.superlink={link.address}",
            "flower.insecure=true",
            "flower.round_timeout=180",
            "flower.startup_timeout=120",
            "flower.run_timeout=480",
        ]
        cfg = load_config(config, overrides)
        node_logs = [link.workdir / f"supernode{k}.log" for k in range(2)]
        try:
            summaries = run_experiment(cfg, tmp_path / "run1", quiet=True)
            # node 0's worker dies between the runs (as if OOM-killed): its node restarts it
            workers = [
                child
                for child in psutil.Process(link.processes[1].pid).children(recursive=True)
                if "worker" in child.cmdline()
            ]
            assert len(workers) == 1
            workers[0].send_signal(signal.SIGKILL)
            run_experiment(cfg, tmp_path / "run2", quiet=True)
            # a third run through Flower's SecAgg+ (privacy.secagg): another config, so each node builds again
            secure = load_config(config, [*overrides, "privacy.secagg.mode=secaggplus"])
            run_experiment(secure, tmp_path / "run3", quiet=True)
        except Exception as err:
            raise AssertionError(f"{err}\n{link.logs()}") from err
        runs = flwr_json(["ls", CONNECTION], write_connection(tmp_path / "cli-home", cfg))["runs"]
        logs = [path.read_text() for path in node_logs]
    assert [r["status"] for r in runs] == ["finished:completed"] * 3
    for run in ("run1", "run2"):
        got = records(tmp_path / run)
        assert [strip_timing(r) for r in got] == expected  # the simulator's numbers, every field
        for record in got:
            assert record["aggregated"] == [0, 1] and record["dropped"] == [] and record["skipped"] is None
            assert record["bytes_up"] == record["bytes_down"] > 0  # fedit: A and B both ways
    assert summaries[0]["rounds"] == 2 and summaries[0]["final_accuracy"] == records(tmp_path / "run1")[-1]["accuracy"]
    # a warm node builds its model once for both runs; node 0's restarted worker had to build again
    builds = [len(re.findall(r"built the runtime of fedit", log)) for log in logs]
    assert builds == [3, 2], builds
    for got, want in zip(records(tmp_path / "run3"), records(tmp_path / "run1")):  # the mean to quantisation error
        assert got["aggregated"] == [0, 1] and got["skipped"] is None and got["secagg_clipped"] == []
        assert got["train_loss"] == pytest.approx(want["train_loss"], abs=1e-4)
        assert got["accuracy"] == pytest.approx(want["accuracy"], abs=0.05)
        assert got["bytes_up"] > 1.9 * want["bytes_up"]  # masked 64-bit integers, not float32
    assert "worker exited with code -9; restart 1 of 5" in logs[0]
    for name in (
        "config.yaml",
        "partition.json",
        "summary.json",
        "fedit/final_model.safetensors",
        "fedit/summary.json",
    ):
        assert (tmp_path / "run1" / name).is_file(), name
    assert not link.processes  # closed: every SuperLink / SuperNode process group is gone


@pytest.mark.slow
def test_three_warm_nodes_each_on_its_own_file(tmp_path):
    """`fedsub flower split` sites on 3 warm nodes (insecure loopback), federated evaluation on: each
    node reads only its own file (the server's report has each file's own row count), and the run
    gives the simulator's metrics.jsonl."""
    from flwr.common.config import parse_config_args

    from fedsub.app.cli import main

    config = write_csv_experiment(
        tmp_path, ["fedit"], federated_eval={"enabled": True, "clients": "all"},
        federation={"num_clients": 3, "clients_per_round": 3, "rounds": 2},
    )  # fmt: skip
    run_experiment(load_config(config), tmp_path / "simulated", quiet=True)
    assert main(["flower", "split", str(config), "--out", str(tmp_path / "sites")]) == 0
    lines = (tmp_path / "sites" / "nodes.txt").read_text().splitlines()
    extras = {k: line.split(" ", 1)[1] for k, line in enumerate(lines)}  # data="..." test="..."
    rows = [len(Path(parse_config_args([line])["data"]).read_text().splitlines()) for line in lines]
    assert len(set(rows)) == 3  # counts that only its own file has
    with Loopback(tmp_path / "flower", nodes=3, node_configs=extras) as link:
        overrides = [f"flower.superlink={link.address}", "flower.insecure=true", "flower.round_timeout=180",
                     "flower.startup_timeout=120", "flower.run_timeout=480"]  # fmt: skip
        try:
            run_experiment(load_config(tmp_path / "sites" / "experiment.yaml", overrides), tmp_path / "run", quiet=True)
        except Exception as err:
            raise AssertionError(f"{err}\n{link.logs()}") from err
    report = json.loads((tmp_path / "run" / "partition.json").read_text())["clients"]
    assert [report[str(k)]["num_examples"] for k in range(3)] == rows
    simulated = [strip_timing(r) for r in records(tmp_path / "simulated")]
    assert [strip_timing(r) for r in records(tmp_path / "run")] == simulated
