"""Issue 18 points 1, 4, 5: Flower nodes that read their own files (data.source nodes), the split
command that writes such files, and the same numbers as the simulator when the files are its partitions."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("flwr")

from fedsub_fixtures import strip_timing, write_csv_experiment  # noqa: E402
from flwr.common.config import parse_config_args  # noqa: E402

from fedsub.app.cli import main  # noqa: E402
from fedsub.app.run import run_experiment  # noqa: E402
from fedsub.config import load_config  # noqa: E402
from fedsub.engines.flower.engine import FlowerLocal  # noqa: E402
from fedsub.engines.setup import prepare_data  # noqa: E402
from fedsub.errors import ConfigError  # noqa: E402
from fedsub.reporting.report import read_metrics as records  # noqa: E402


def node_configs(sites):
    """nodes.txt as {partition-id: {data: ..., test: ...}}, parsed as flower-supernode parses --node-config."""
    nodes = {}
    for line in (sites / "nodes.txt").read_text().splitlines():
        pairs = parse_config_args([line])
        nodes[int(pairs.pop("partition-id"))] = pairs
    return nodes


def run_on_sites(sites, out, nodes=None, overrides=()):
    cfg = load_config(sites / "experiment.yaml", list(overrides))
    out.mkdir(parents=True)
    engine = FlowerLocal(cfg, cfg.methods[0], prepare_data(cfg, out), out / cfg.methods[0].key)
    return engine.run(node_configs=nodes or node_configs(sites))


@pytest.mark.parametrize("mode", ["test_partition", "holdout"])
def test_site_files_of_the_simulators_partition_give_the_simulators_metrics(tmp_path, mode):
    config = write_csv_experiment(
        tmp_path, ["fedsa_lora"], federated_eval={"enabled": True, "clients": "all", "data": mode}
    )
    run_experiment(load_config(config), tmp_path / "simulated", quiet=True)
    assert main(["flower", "split", str(config), "--out", str(tmp_path / "sites")]) == 0
    got = run_on_sites(tmp_path / "sites", tmp_path / "nodes")
    expected = records(tmp_path / "simulated" / "fedsa_lora" / "metrics.jsonl")
    assert [strip_timing(r) for r in got] == [strip_timing(r) for r in expected]  # every field, round for round
    # the server's partition report is what the nodes told it: counts and histograms, no rows or ids
    report = json.loads((tmp_path / "nodes" / "partition.json").read_text())
    simulated = json.loads((tmp_path / "simulated" / "partition.json").read_text())
    assert report["summary"] == simulated["summary"] and report["scheme"] == {"source": "nodes"}
    assert all(set(c) == {"num_examples", "eval_examples", "label_counts"} for c in report["clients"].values())


def test_split_writes_each_clients_rows_and_a_nodes_experiment(tmp_path, capsys):
    config = write_csv_experiment(tmp_path, ["fedit"])
    assert main(["flower", "split", str(config), "--nodes", "2", "--out", str(tmp_path / "sites")]) == 0
    assert "wrote 2 sites" in capsys.readouterr().err
    sites = tmp_path / "sites"
    rows = [
        [json.loads(line) for line in (sites / f"site-{k}" / "train.jsonl").read_text().splitlines()] for k in (0, 1)
    ]
    assert sum(len(r) for r in rows) == 27  # the 36-row tiny file less its 25 % test split
    assert {row["label"] for site in rows for row in site} <= {"animal", "artifact", "feeling"}
    cfg = load_config(sites / "experiment.yaml")
    assert (cfg.data.source, cfg.engine, cfg.data.labels) == ("nodes", "flower", ["animal", "artifact", "feeling"])
    assert cfg.federation.num_clients == 2 and list(node_configs(sites)) == [0, 1]
    assert main(["flower", "split", str(config), "--out", str(sites)]) == 2  # never over existing sites
    assert "is not empty" in capsys.readouterr().err


def test_a_node_whose_data_disagrees_is_dropped_with_one_line_and_the_run_goes_on(tmp_path):
    config = write_csv_experiment(
        tmp_path, ["fedit"], federated_eval={"enabled": True, "data": "holdout"},
        federation={"num_clients": 3, "clients_per_round": 3, "rounds": 2},
    )  # fmt: skip
    assert main(["flower", "split", str(config), "--out", str(tmp_path / "sites")]) == 0
    nodes = node_configs(tmp_path / "sites")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a mouse", "label": "vegetable"}\n')
    nodes[1] = {"data": str(bad)}
    nodes[2] = {"data": str(tmp_path / "missing.jsonl")}
    got = run_on_sites(tmp_path / "sites", tmp_path / "nodes", nodes)
    for record in got:
        assert record["aggregated"] == [0] and [r["client"] for r in record["fed_eval"]] == [0]
        reasons = {d["client"]: d["reason"] for d in record["dropped"]}
        assert reasons[1] == (
            f"data: node 1 data={bad}: label 'vegetable' is not in data.labels (animal, artifact, feeling); "
            "fix the file or declare it"
        )
        assert reasons[2].startswith(f"data: node 2 data={tmp_path / 'missing.jsonl'}: file ")
        assert "not found" in reasons[2] and "\n" not in reasons[2]
    report = json.loads((tmp_path / "nodes" / "partition.json").read_text())["clients"]
    assert report["1"] == report["2"] == {"num_examples": 0, "eval_examples": 0}  # nothing usable reported


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["data.labels=null"], "data.labels"),
        (["data.labels=[a, a]"], "data.labels"),
        (["engine=simulation"], "data.source: nodes needs engine: flower"),
        (["data.dataset=null", "federated_eval.enabled=false"], "data.dataset"),
        (["data.num_classes=2"], "data.source: nodes reads each node's file whole"),
    ],
)
def test_a_nodes_config_that_cannot_work_is_refused_naming_the_field(tmp_path, overrides, field):
    config = write_csv_experiment(tmp_path, ["fedit"], federated_eval={"enabled": True})
    assert main(["flower", "split", str(config), "--out", str(tmp_path / "sites")]) == 0
    with pytest.raises(ConfigError, match=field):
        load_config(tmp_path / "sites" / "experiment.yaml", overrides)


def test_a_node_without_its_own_test_file_is_told_what_to_set(tmp_path):
    config = write_csv_experiment(tmp_path, ["fedit"], federated_eval={"enabled": True})
    assert main(["flower", "split", str(config), "--out", str(tmp_path / "sites")]) == 0
    nodes = {k: {"data": v["data"]} for k, v in node_configs(tmp_path / "sites").items()}
    got = run_on_sites(tmp_path / "sites", tmp_path / "nodes", nodes)
    for record in got:
        assert record["skipped"] and [d["client"] for d in record["dropped"]] == record["clients"]
        for dropped in record["dropped"]:
            assert dropped["reason"] == (
                f"data: node {dropped['client']}: federated_eval.data test_partition needs its own held-out file "
                "(node config test=PATH); or set federated_eval.data: holdout"
            )
