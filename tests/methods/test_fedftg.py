"""FedFTG (arXiv 2410.23111): which weights train, FedAvg of dense weights, per-client GaLore state."""

import pytest
import torch
from fedsub_fixtures import tiny_config

from fedsub.core.registry import build_method
from fedsub.core.types import ClientUpdate, Payload, ServerState
from fedsub.engines.simulation import Simulation
from fedsub.methods.fedftg import lower_half
from fedsub.optim.galore_model import layer_index


def simulation(tiny_data, tmp_path, **options):
    cfg = tiny_config(methods=[{"name": "fedftg", **options}])
    return Simulation(cfg, cfg.methods[0], tiny_data, tmp_path / "fedftg")


def test_layer_index_and_lower_half():
    assert layer_index("bert.encoder.layer.3.intermediate.dense") == 3
    assert layer_index("model.layers.11.mlp.up_proj") == 11
    assert layer_index("classifier") is None
    assert lower_half([0, 1, 2, 3, 4, 5]) == {0, 1, 2}
    assert lower_half([0]) == {0}


def test_default_trains_the_lower_half_up_projections_and_the_head_only(tiny_data, tmp_path):
    sim = simulation(tiny_data, tmp_path)  # tiny model: 2 blocks -> block 0
    assert sim.method.galore_names == ["bert.encoder.layer.0.intermediate.dense.weight"]
    assert sorted(sim.workspace.trainable_names()) == sorted(
        sim.method.galore_names + ["classifier.weight", "classifier.bias"]
    )
    chosen = simulation(tiny_data, tmp_path, modules=["query", "value"], layers=[1])
    assert chosen.method.galore_names == [
        "bert.encoder.layer.1.attention.self.query.weight",
        "bert.encoder.layer.1.attention.self.value.weight",
    ]
    with pytest.raises(ValueError, match="no linear layer matches"):
        simulation(tiny_data, tmp_path, modules=["nope"])


def test_aggregate_is_fedavg_of_the_dense_weights_with_diagnostics_of_the_managed_matrices():
    method = build_method("fedftg", {"rank": 1})
    method.galore_names = ["w"]
    state = ServerState(0, {"w": torch.zeros(2, 2), "h": torch.zeros(1)})
    a = ClientUpdate(0, Payload({"w": torch.tensor([[4.0, 0.0], [0.0, 4.0]]), "h": torch.tensor([1.0])}), 3)
    b = ClientUpdate(1, Payload({"w": torch.tensor([[0.0, 8.0], [8.0, 0.0]]), "h": torch.tensor([5.0])}), 1)
    new, metrics = method.aggregate_train(state, [a, b])
    assert torch.equal(new.tensors["w"], torch.tensor([[3.0, 2.0], [2.0, 3.0]]))
    assert torch.equal(new.tensors["h"], torch.tensor([2.0]))
    # ΔW = 4 I and 8 J, p = (3/4, 1/4): orthogonal, ΔW̄ = [[3, 2], [2, 3]] with σ = (5, 1); the head is left out.
    assert metrics["diag_cos_pairwise"] == 0.0 and metrics["diag_rank_max"] == 2.0
    assert metrics["diag_cancellation_ratio"] == pytest.approx(26**0.5 / (0.75 * 32**0.5 + 0.25 * 128**0.5), abs=1e-12)
    assert metrics["diag_truncation_energy"] == pytest.approx(1 / 26, abs=1e-12)  # beyond rank 1


def test_frozen_weights_never_change_and_only_trained_weights_cross_the_wire(tiny_data, tmp_path):
    sim = simulation(tiny_data, tmp_path)
    params = sim.workspace.parameters_by_name()
    frozen = {n: p.detach().clone() for n, p in params.items() if not p.requires_grad}
    record = sim.run_round(0)
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    trained = sim.workspace.read(sim.workspace.trainable_names())
    per_client = sum(t.numel() * t.element_size() for t in trained.values())
    assert record["bytes_up"] == record["bytes_down"] == 3 * per_client


def galore_state(sim, client_id):
    saved = sim.client_states[client_id]["optimizer"]["state"]
    return saved[0]  # the GaLore-managed up-projection is the optimizer's first parameter


def test_client_optimizer_state_is_kept_across_rounds_with_per_client_projectors(tiny_data, tmp_path):
    sim = simulation(tiny_data, tmp_path, update_proj_gap=100)
    sim.run_round(0)
    steps = sim.settings.local_steps
    first = [galore_state(sim, k) for k in range(3)]
    assert all(s["step"].item() == steps for s in first)
    # svd of each client's own gradient: different projectors on non-IID clients
    assert not torch.allclose(first[0]["projector"], first[1]["projector"], atol=1e-3)
    projector = first[0]["projector"].clone()
    sim.run_round(1)
    again = galore_state(sim, 0)
    assert again["step"].item() == 2 * steps  # continued, not restarted
    assert torch.equal(again["projector"], projector)  # gap 100: not refreshed in round 1


def test_reset_each_round_keeps_no_state_and_changes_the_trajectory(tiny_data, tmp_path):
    kept, fresh = simulation(tiny_data, tmp_path / "k"), simulation(tiny_data, tmp_path / "f", reset_each_round=True)
    for r in range(2):
        kept.run_round(r)
        fresh.run_round(r)
    assert all("optimizer" not in s for s in fresh.client_states.values())
    name = kept.method.galore_names[0]
    assert not torch.allclose(kept.state.tensors[name], fresh.state.tensors[name])
