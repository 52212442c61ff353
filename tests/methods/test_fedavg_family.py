"""FedAvg, FedIT and FFA-LoRA: exact aggregation numbers, what crosses the wire, client isolation."""

import pytest
import torch
from fedsub_fixtures import tiny_config

from fedsub.core.registry import build_method
from fedsub.core.tensors import max_abs_diff
from fedsub.core.types import ClientUpdate, Payload, ServerState
from fedsub.engines.simulation import Simulation


def update(client_id, n, **tensors):
    return ClientUpdate(client_id, Payload(tensors), n)


@pytest.mark.parametrize("name", ["fedavg_full", "fedit", "ffa_lora"])
def test_aggregate_is_the_example_weighted_mean(name):
    method = build_method(name, {"diagnostics": False})  # diagnostics: test_diagnostics.py
    state = ServerState(0, {"x.lora_A": torch.zeros(2, 3), "x.lora_B": torch.zeros(3, 2), "head": torch.zeros(2)})
    a = update(
        0, 1, **{"x.lora_B": torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), "head": torch.tensor([1.0, 0.0])}
    )
    b = update(
        1, 3, **{"x.lora_B": torch.tensor([[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]), "head": torch.tensor([0.0, 4.0])}
    )
    new, _ = method.aggregate_train(state, [a, b])
    assert torch.equal(new.tensors["x.lora_B"], torch.tensor([[4.0, 5.0], [6.0, 7.0], [8.0, 9.0]]))
    assert torch.equal(new.tensors["head"], torch.tensor([0.25, 3.0]))
    assert torch.equal(new.tensors["x.lora_A"], torch.zeros(2, 3))  # not sent -> kept
    assert new.round == 1


def test_fedit_averages_factors_separately_which_is_biased():
    """avg(B) avg(A) != avg(BA): the hand case the FedIT bias comes from."""
    method = build_method("fedit")
    A1, A2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    B1, B2 = torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0], [1.0]])
    state = ServerState(0, {"A": torch.zeros(1, 2), "B": torch.zeros(2, 1)})
    new, _ = method.aggregate_train(state, [update(0, 1, A=A1, B=B1), update(1, 1, A=A2, B=B2)])
    assert torch.equal(new.tensors["A"], torch.tensor([[0.5, 0.5]]))
    assert torch.equal(new.tensors["B"], torch.tensor([[0.5], [0.5]]))
    product_of_means = new.tensors["B"] @ new.tensors["A"]
    mean_of_products = (B1 @ A1 + B2 @ A2) / 2
    assert torch.equal(product_of_means, torch.full((2, 2), 0.25))
    assert torch.equal(mean_of_products, torch.tensor([[0.5, 0.0], [0.0, 0.5]]))


def test_ffa_lora_average_of_b_equals_average_of_products():
    A = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0]])  # shared, frozen
    B1, B2 = torch.tensor([[1.0, 0.0], [2.0, 1.0]]), torch.tensor([[0.0, 3.0], [1.0, -1.0]])
    method = build_method(
        "ffa_lora", {"diagnostics": False}
    )  # a hand state: no FrozenFactors (diagnostics: test_diagnostics.py)
    new, _ = method.aggregate_train(ServerState(0, {"B": torch.zeros(2, 2)}), [update(0, 2, B=B1), update(1, 1, B=B2)])
    assert torch.allclose(new.tensors["B"] @ A, (2 * B1 @ A + B2 @ A) / 3, atol=1e-6)


def simulation(tiny_data, tmp_path, name, **overrides):
    cfg = tiny_config(methods=[name], **overrides)
    return Simulation(cfg, cfg.methods[0], tiny_data, tmp_path / name)


def test_ffa_lora_a_never_changes_and_never_leaves_the_client(tiny_data, tmp_path):
    sim = simulation(tiny_data, tmp_path, "ffa_lora")
    params = sim.workspace.parameters_by_name()
    a_names = [n for n in params if ".lora_A." in n]
    assert a_names, "LoRA A matrices exist"
    a_before = {n: params[n].detach().clone() for n in a_names}
    records = sim.run()
    for n in a_names:
        assert torch.equal(params[n], a_before[n])
    down = sim.method.configure_train(sim.state, 0)
    upload = sim.method.client_train(sim.workspace, down, sim.client_context(2, 0)).payload
    for payload in (down, upload):
        assert not [n for n in payload.tensors if ".lora_A." in n]
        assert [n for n in payload.tensors if ".lora_B." in n]
    assert records[0]["bytes_up"] == 3 * upload.nbytes()


@pytest.mark.parametrize("name", ["fedavg_full", "fedit", "ffa_lora"])
def test_bytes_up_and_down_are_the_tensor_bytes_sent(tiny_data, tmp_path, name):
    sim = simulation(tiny_data, tmp_path, name)
    trainable = sim.workspace.read(sim.workspace.trainable_names())
    per_client = sum(t.numel() * t.element_size() for t in trainable.values())
    record = sim.run_round(0)
    assert record["bytes_up"] == record["bytes_down"] == 3 * per_client


@pytest.mark.parametrize("name", ["fedavg_full", "fedit", "ffa_lora"])
def test_client_b_alone_equals_client_a_then_b(tiny_data, tmp_path, name):
    sim = simulation(tiny_data, tmp_path, name)
    payload = sim.method.configure_train(sim.state, 1)
    alone = sim.method.client_train(sim.workspace, payload, sim.client_context(0, 1))

    other = simulation(tiny_data, tmp_path, name)
    other.method.client_train(other.workspace, other.method.configure_train(other.state, 0), other.client_context(0, 0))
    after_a = other.method.client_train(other.workspace, payload, other.client_context(0, 1))
    assert max_abs_diff(alone.payload.tensors, after_a.payload.tensors) == 0.0
    assert alone.metrics == after_a.metrics


def test_training_changes_only_trainable_tensors(tiny_data, tmp_path):
    sim = simulation(tiny_data, tmp_path, "fedavg_full")
    trainable = set(sim.workspace.trainable_names())
    assert any("classifier" in n for n in trainable) and any("query" in n for n in trainable)
    assert not any("embeddings" in n or "LayerNorm" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in sim.workspace.model.named_parameters()}
    sim.run_round(0)
    for n, p in sim.workspace.model.named_parameters():
        assert torch.equal(p, before[n]) == (n not in trainable), n
