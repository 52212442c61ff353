"""Federated evaluation (issue 18 points 2-3): the rows each client evaluates on, the aggregate the
server logs, the evaluate phase of the method contract (FedSA-LoRA with its own B), both engines."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fedsub_fixtures import stop_at, strip_timing, write_csv_experiment

from fedsub.app.run import run_experiment
from fedsub.config import FederatedEvalConfig, load_config
from fedsub.core.types import ClientUpdate, Payload
from fedsub.data.client_eval import client_eval_rows, hold_out, largest_remainder, split_test_by_partition
from fedsub.engines.fed_eval import aggregate, screen
from fedsub.errors import ConfigError
from fedsub.reporting.report import read_metrics as records
from fedsub.tasks.base import EncodedSubset


class Accuracy:  # the two members of a task the aggregate reads
    metric, metric_keys = "accuracy", ("accuracy", "test_loss")


def test_largest_remainder_exact_numbers():
    assert largest_remainder(10, np.array([1, 1, 1])).tolist() == [4, 3, 3]
    assert largest_remainder(5, np.array([0, 2, 1])).tolist() == [0, 3, 2]  # 0, 3.33, 1.67
    assert largest_remainder(4, np.array([0, 0])).tolist() == [0, 0]  # nobody holds the class


def test_the_test_set_follows_each_clients_train_label_mix():
    train_labels = np.array([0, 0, 0, 1, 1, 0, 1, 1])
    parts = [np.array([0, 1, 2]), np.array([3, 4]), np.array([5, 6, 7])]  # class 0: 3, 0, 1; class 1: 0, 2, 2
    test_labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    rows = split_test_by_partition(parts, train_labels, test_labels, seed=0)
    per_class = [[int(np.sum(test_labels[r] == c)) for c in (0, 1)] for r in rows]
    assert per_class == [[3, 0], [0, 3], [1, 3]]  # 4 class-0 rows as 3:0:1, 6 class-1 rows as 0:3:3
    together = np.sort(np.concatenate(rows))
    assert together.tolist() == list(range(10))  # every test row once
    again = split_test_by_partition(parts, train_labels, test_labels, seed=0)  # a pure function of the seed
    assert [r.tolist() for r in rows] == [r.tolist() for r in again]
    other = split_test_by_partition(parts, train_labels, test_labels, seed=1)
    assert [[int(np.sum(test_labels[r] == c)) for c in (0, 1)] for r in other] == per_class


def test_holdout_takes_a_share_of_each_clients_rows_and_never_all():
    parts = [np.arange(10), np.array([20, 21]), np.array([30])]
    train, held = hold_out(parts, 0.2, seed=0)
    assert [len(h) for h in held] == [2, 1, 0] and [len(t) for t in train] == [8, 1, 1]
    for part, kept, out in zip(parts, train, held):
        assert np.intersect1d(kept, out).size == 0 and sorted([*kept, *out]) == sorted(part)
    assert train[0].tolist() == [r for r in range(10) if r not in held[0]]  # the partition's order is kept
    cfg = FederatedEvalConfig(enabled=True, data="holdout", holdout_fraction=0.2)
    same, rows, source = client_eval_rows(parts, np.zeros(31), np.zeros(1), cfg, seed=0)
    assert source == "train" and [r.tolist() for r in rows] == [h.tolist() for h in held]


def test_the_aggregate_is_example_weighted_with_the_worst_client_and_the_10th_percentile():
    results = [
        {"client": 0, "num_examples": 1, "accuracy": 1.0, "test_loss": 0.2},
        {"client": 1, "num_examples": 3, "accuracy": 0.5, "test_loss": 0.6},
    ]
    fed = aggregate(results, Accuracy)
    assert fed["fed_accuracy"] == pytest.approx(0.625, abs=1e-15)  # (1 x 1.0 + 3 x 0.5) / 4
    assert fed["fed_test_loss"] == pytest.approx(0.5, abs=1e-15)
    assert fed["fed_accuracy_worst"] == 0.5 and fed["fed_accuracy_p10"] == pytest.approx(0.55, abs=1e-15)
    assert aggregate([], Accuracy)["fed_accuracy"] is None


def test_an_evaluation_reply_is_screened():
    good = ClientUpdate(0, Payload({}), 4, {"accuracy": 0.5, "test_loss": 1.0})
    assert screen(good, 4, Accuracy.metric_keys) is None
    assert screen(ClientUpdate(0, Payload({}), 10**6, good.metrics), 4, ("accuracy",)) == (
        "num_examples 1000000 != the client's 4 evaluation rows"
    )
    nan = ClientUpdate(0, Payload({}), 4, {"accuracy": float("nan"), "test_loss": 1.0})
    assert screen(nan, 4, Accuracy.metric_keys) == "metric 'accuracy' is nan, not a finite number"
    assert screen(ClientUpdate(0, Payload({}), 4, {"test_loss": 1.0}), 4, Accuracy.metric_keys).startswith(
        "metric 'accuracy' is None"
    )


def test_a_subset_is_the_rows_it_names():
    class Rows:
        labels = torch.tensor([5, 6, 7, 8])
        prompts, references = [[1], [2], [3], [4]], ["a", "b", "c", "d"]

        def __len__(self):
            return 4

        def batch(self, index, device):
            return {"labels": self.labels[index]}

    subset = EncodedSubset(Rows(), torch.tensor([3, 1]))
    assert len(subset) == 2 and subset.labels.tolist() == [8, 6]
    assert subset.batch(torch.tensor([1]), "cpu")["labels"].tolist() == [6]
    assert subset.prompts == [[4], [2]] and subset.references == ["d", "b"]


@pytest.fixture(scope="module")
def both_engines(tmp_path_factory):
    """fedit and fedsa_lora, every client evaluating, on the simulator and Flower's in-process grid."""
    tmp = tmp_path_factory.mktemp("fed_eval")
    config = write_csv_experiment(tmp, ["fedit", "fedsa_lora"], federated_eval={"enabled": True, "clients": "all"})
    for engine in ("simulation", "flower"):
        run_experiment(load_config(config, [f"engine={engine}"]), tmp / engine, quiet=True)
    return tmp


def test_both_engines_log_the_same_federated_evaluation(both_engines):
    for method in ("fedit", "fedsa_lora"):
        simulated = records(both_engines / "simulation" / method / "metrics.jsonl")
        flower = records(both_engines / "flower" / method / "metrics.jsonl")
        assert [strip_timing(r) for r in simulated] == [strip_timing(r) for r in flower]
        for record in simulated:
            assert [r["client"] for r in record["fed_eval"]] == [0, 1, 2] and record["fed_eval_dropped"] == []


def test_a_global_model_scored_on_the_whole_split_test_set_gives_the_central_accuracy(both_engines):
    """Every client evaluating on test_partition covers the test set once, so for a method without a
    personal part the example-weighted accuracy is the central one."""
    for record in records(both_engines / "simulation" / "fedit" / "metrics.jsonl"):
        assert sum(r["num_examples"] for r in record["fed_eval"]) == 9  # the tiny test set's rows
        assert record["fed_accuracy"] == pytest.approx(record["accuracy"], abs=1e-12)
        assert record["fed_test_loss"] == pytest.approx(record["test_loss"], rel=1e-6)


def test_fedsa_lora_clients_evaluate_with_their_own_b(both_engines):
    """The personalised model differs from the server's (B = 0) on at least one client, and each
    client's own score is what its kept B gives when written beside the global A and head."""
    from fedsub.engines.setup import prepare_data
    from fedsub.engines.simulation import Simulation

    run = both_engines / "simulation"
    cfg = load_config(run / "config.yaml", ["federation.rounds=1"])
    spec = next(s for s in cfg.methods if s.name == "fedsa_lora")
    sim = Simulation(cfg, spec, prepare_data(cfg, both_engines / "scratch"), both_engines / "scratch-run")
    record = sim.run()[0]
    assert record["fed_accuracy"] != record["accuracy"] or record["fed_test_loss"] != record["test_loss"]
    assert len(sim.client_states) == 2  # the round's two sampled clients kept a B; the third evaluates B = 0
    for client in record["fed_eval"]:
        sim.method.load_global(sim.workspace, sim.state)
        sim.method.personalize(sim.workspace, sim.client_states.get(client["client"], {}))  # zero B if unsampled
        rows = sim.clients.data.client_eval_data(client["client"])
        own = sim.clients.data.task.evaluate(sim.workspace.model, rows, 128, "cpu")
        assert own["test_loss"] == client["test_loss"] and own["accuracy"] == client["accuracy"]
    assert records(run / "fedsa_lora" / "metrics.jsonl")[0]["fed_eval"] == record["fed_eval"]


def test_holdout_rows_leave_training_and_the_resume_is_exact(tmp_path, monkeypatch):
    fe = {"enabled": True, "data": "holdout", "holdout_fraction": 0.25}
    config = write_csv_experiment(
        tmp_path, ["fedit"], federated_eval=fe, federation={"num_clients": 3, "clients_per_round": 2, "rounds": 3}
    )
    run_experiment(load_config(config), tmp_path / "ref", quiet=True)
    summary = json.loads((tmp_path / "ref" / "partition.json").read_text())["summary"]
    undo = stop_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_config(config), tmp_path / "cut", quiet=True)
    undo()
    run_experiment(load_config(config), tmp_path / "cut", quiet=True, resume=True)
    strip = lambda p: [strip_timing(r) for r in records(p / "fedit" / "metrics.jsonl")]  # noqa: E731
    assert strip(tmp_path / "cut") == strip(tmp_path / "ref")
    reference = records(tmp_path / "ref" / "fedit" / "metrics.jsonl")
    held = {}
    for record in reference:
        assert {r["client"] for r in record["fed_eval"]} == set(record["clients"])  # the round's sampled clients
        held |= {r["client"]: r["num_examples"] for r in record["fed_eval"]}
    # the report (and training) counts the rows left after the holdout: 27 train rows in all
    assert summary["num_examples"] + sum(held.values()) == 27 and len(held) == 3
    assert all(h == max(1, round(0.25 * (n + h))) for n, h in zip(summary["sizes"], (held[k] for k in range(3))))


def test_bad_federated_eval_settings_name_the_field(tmp_path):
    config = write_csv_experiment(tmp_path, ["fedit"])
    for override, field in (
        ("federated_eval.holdout_fraction=1.5", "federated_eval.holdout_fraction"),
        ("federated_eval.clients=some", "federated_eval.clients"),
        ("federated_eval.data=val", "federated_eval.data"),
    ):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            load_config(config, [override])


def test_summaries_and_tables_carry_the_federated_aggregates(both_engines):
    from fedsub.app.cli import main
    from fedsub.app.run import round_line

    run = both_engines / "simulation"
    last = records(run / "fedsa_lora" / "metrics.jsonl")[-1]
    summary = json.loads((run / "fedsa_lora" / "summary.json").read_text())
    assert summary["final_fed_accuracy"] == last["fed_accuracy"]
    assert summary["final_fed_accuracy_worst"] == last["fed_accuracy_worst"]
    assert "| fed acc | worst client |" in (run / "results.md").read_text()
    assert f"fed {last['fed_accuracy']:.3f} worst {last['fed_accuracy_worst']:.3f}" in round_line(last, 2)
    assert main(["report", str(run), "--out", str(both_engines / "report")]) == 0
    table = (both_engines / "report" / "results.md").read_text()
    assert "| fed acc | worst client |" in table and f"{summary['final_fed_accuracy']:.4f}" in table
    assert "final_fed_accuracy" in (both_engines / "report" / "results.csv").read_text().splitlines()[0]
