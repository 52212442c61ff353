"""Failing clients: dropped with the reason, the rest aggregated with renormalised weights, the round
skipped below min_clients; simulated dropouts and stragglers are seeded."""

import math

import pytest
import torch
from fedsub_fixtures import tiny_config

from fedsub.config import FailureConfig
from fedsub.core.tensors import weighted_mean
from fedsub.core.types import ClientUpdate, Payload
from fedsub.engines.failures import run_client, simulated_fault, skip_reason
from fedsub.engines.simulation import Simulation


def make(tiny_data, path, rounds=1, **failures):
    cfg = tiny_config(federation={"num_clients": 3, "clients_per_round": 3, "rounds": rounds}, failures=failures)
    return Simulation(cfg, cfg.methods[0], tiny_data, path)


def sabotage(sim, client_id, how):
    """Wrap the method's client_train: `how(update)` replaces client `client_id`'s reply; keeps the honest ones."""
    honest, replies = sim.method.client_train, {}

    def client_train(workspace, payload, client):
        update = honest(workspace, payload, client)
        replies[client.client_id] = update
        return how(update) if client.client_id == client_id else update

    sim.method.client_train = client_train
    return replies


def boom(update):
    raise RuntimeError("CUDA out of memory\nsecond line")


def test_a_crashing_client_is_dropped_and_the_rest_aggregated_with_renormalised_weights(tiny_data, tmp_path):
    sim = make(tiny_data, tmp_path)
    replies = sabotage(sim, 1, boom)
    [record] = sim.run()
    assert record["dropped"] == [{"client": 1, "reason": "error: RuntimeError: CUDA out of memory"}]
    assert record["aggregated"] == [0, 2] and record["rejected"] == [] and record["skipped"] is None
    expected = weighted_mean([replies[0].payload.tensors, replies[2].payload.tensors], [6, 6])
    assert all(torch.equal(sim.state.tensors[n], expected[n]) for n in expected)
    losses = [replies[c].metrics["train_loss"] for c in (0, 2)]
    assert record["train_loss"] == pytest.approx(sum(losses) / 2)
    assert 1 not in sim.client_states  # a failed client's state changes are discarded


def test_a_non_finite_loss_drops_the_client(tiny_data, tmp_path):
    sim = make(tiny_data, tmp_path)
    sabotage(
        sim, 2, lambda u: ClientUpdate(u.client_id, u.payload, u.num_examples, {**u.metrics, "train_loss": math.nan})
    )
    [record] = sim.run()
    assert record["dropped"] == [{"client": 2, "reason": "non-finite train_loss nan"}] and record["aggregated"] == [
        0,
        1,
    ]


def test_below_min_clients_the_round_is_skipped_and_the_model_unchanged(tiny_data, tmp_path):
    sim = make(tiny_data, tmp_path, rounds=2, min_clients=3)
    before = {n: t.clone() for n, t in sim.state.tensors.items()}
    sabotage(sim, 0, boom)
    records = sim.run()
    assert [r["skipped"] for r in records] == ["2 usable updates < min_clients 3"] * 2
    assert all(r["aggregated"] == [] and r["accuracy"] is not None for r in records[-1:])
    assert all(torch.equal(sim.state.tensors[n], before[n]) for n in before) and sim.state.round == 0


def test_simulated_dropouts_and_stragglers_are_seeded_and_logged(tiny_data, tmp_path):
    records = make(tiny_data, tmp_path / "a", rounds=4, dropout_prob=0.3, straggler_prob=0.6).run()
    again = make(tiny_data, tmp_path / "b", rounds=4, dropout_prob=0.3, straggler_prob=0.6).run()
    assert [r["dropped"] for r in records] == [r["dropped"] for r in again]
    reasons = {d["reason"] for r in records for d in r["dropped"]}
    assert reasons == {"dropout", "straggler"}
    for r in records:
        lost = {d["client"] for d in r["dropped"]}
        assert r["aggregated"] == ([c for c in r["clients"] if c not in lost] if not r["skipped"] else [])


def test_simulated_fault_rates_match_the_probabilities():
    cfg = FailureConfig(dropout_prob=0.2, straggler_prob=0.5)
    faults = [simulated_fault(cfg, 0, r, c) for r in range(200) for c in range(10)]
    assert faults.count("dropout") / 2000 == pytest.approx(0.2, abs=0.03)
    assert faults.count("straggler") / 2000 == pytest.approx(0.8 * 0.5, abs=0.03)  # only clients that did not drop
    assert simulated_fault(FailureConfig(), 0, 0, 0) is None


def test_run_client_outcomes():
    update = ClientUpdate(0, Payload({"w": torch.ones(2)}), 3, {"train_loss": 0.5})
    cfg = FailureConfig()
    assert run_client(cfg, 0, None, lambda: update).update is update
    dropout = run_client(cfg, 0, "dropout", lambda: pytest.fail("a dropout never trains"))
    assert (dropout.update, dropout.reason, dropout.keep_state) == (None, "dropout", False)
    late = run_client(cfg, 0, "straggler", lambda: update)
    assert (late.update, late.reason, late.keep_state) == (None, "straggler", True)  # it trained, just too late
    slow = run_client(FailureConfig(deadline_s=1e-9), 0, None, lambda: update)
    assert (
        slow.update is None
        and slow.reason.startswith("deadline: trained ")
        and slow.reason.endswith("> deadline_s 1e-09")
    )
    assert skip_reason(FailureConfig(min_clients=2), 1) == "1 usable update < min_clients 2"
    assert skip_reason(FailureConfig(min_clients=2), 2) is None


def failing_client_0(sim, leave_gradients):
    """Client 0 raises, after a backward() (gradients left on the shared model) or before any work."""
    honest = sim.method.client_train

    def client_train(workspace, payload, client):
        if client.client_id != 0:
            return honest(workspace, payload, client)
        if leave_gradients:
            workspace.write(payload.tensors)
            batch = workspace.train_data.batch(client.indices[:4], workspace.device)
            workspace.task.loss(workspace.model, batch).backward()
        raise FloatingPointError("optimizer step failed")

    sim.method.client_train = client_train


def test_a_client_failing_mid_step_leaves_no_gradients_for_the_next(tiny_data, tmp_path):
    """Clients 1 and 2 train exactly as if client 0 had failed before touching the model."""
    messy, clean = make(tiny_data, tmp_path / "a"), make(tiny_data, tmp_path / "b")
    failing_client_0(messy, leave_gradients=True)
    failing_client_0(clean, leave_gradients=False)
    [record], _ = messy.run(), clean.run()
    assert record["dropped"] == [{"client": 0, "reason": "error: FloatingPointError: optimizer step failed"}]
    assert all(torch.equal(messy.state.tensors[n], clean.state.tensors[n]) for n in clean.state.tensors)
