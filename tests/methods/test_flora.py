"""FLoRA: the stacked product is the exact weighted sum, the merge, fresh adapters, honest bytes."""

import torch
from fedsub_fixtures import tiny_config

from fedsub.core.registry import build_method
from fedsub.core.types import ClientUpdate, Payload, ServerState
from fedsub.engines.simulation import Simulation
from fedsub.lora.maths import merge_update, stack_factors
from fedsub.lora.names import lora_layers

A, B, W = "q.lora_A.default.weight", "q.lora_B.default.weight", "q.base_layer.weight"
# Two clients of ranks 2 and 1 on a 3 x 2 weight; p = (1/4, 3/4), s = lora_alpha / rank = 4 / 2 = 2.
B1, A1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([[1.0, 2.0], [0.0, 1.0]])
B2, A2 = torch.tensor([[2.0], [0.0], [1.0]]), torch.tensor([[1.0, -1.0]])
SUM = torch.tensor([[3.5, -2.0], [0.0, 0.5], [2.0, 0.0]], dtype=torch.float64)  # Σ p_k s B_k A_k by hand


def test_stacked_product_is_the_weighted_sum_of_client_products():
    b_stack, a_stack = stack_factors([(B1, A1), (B2, A2)], [0.25, 0.75])
    assert b_stack.shape == (3, 3) and a_stack.shape == (3, 2)  # ranks 2 + 1
    assert torch.equal(2.0 * b_stack @ a_stack, SUM)
    assert torch.equal(merge_update(torch.ones(3, 2), b_stack, a_stack, 2.0), torch.ones(3, 2) + SUM.float())


def test_aggregate_merges_into_the_base_weight_and_averages_the_head():
    method = build_method("flora", {"rank": 2, "lora_alpha": 4.0})
    state = ServerState(0, {W: torch.ones(3, 2), "head": torch.zeros(2)})
    ups = [
        ClientUpdate(0, Payload({A: A1, B: B1, "head": torch.tensor([4.0, 0.0])}), 1),
        ClientUpdate(1, Payload({A: A2, B: B2, "head": torch.tensor([0.0, 4.0])}), 3),
    ]
    new, metrics = method.aggregate_train(state, ups)
    assert torch.equal(new.tensors[W], torch.tensor([[4.5, -1.0], [1.0, 1.5], [3.0, 1.0]]))
    assert torch.equal(new.tensors["head"], torch.tensor([1.0, 3.0]))
    assert set(new.tensors) == {W, "head"}  # no adapters kept: next round starts fresh
    assert metrics["diag_rank_max"] == 2.0  # stack width 3, but the 3 x 2 sum has rank 2


def sim(tiny_data, tmp_path, **options):
    cfg = tiny_config(methods=[{"name": "flora", **options}])
    return Simulation(cfg, cfg.methods[0], tiny_data, tmp_path / "flora")


def test_downlink_is_the_head_then_the_merged_weights_and_uplink_the_factors(tiny_data, tmp_path):
    s = sim(tiny_data, tmp_path, client_ranks=[2, 4, 8])
    params = s.workspace.parameters_by_name()
    layers = lora_layers(params)
    head = sum(params[n].numel() * 4 for n in s.workspace.trainable_names() if "lora_" not in n)
    bases = sum(params[k.base].numel() * 4 for k in layers.values())
    factors = sum((params[k.b].shape[0] + params[k.a].shape[1]) * 4 for k in layers.values())  # per rank unit
    first, second = s.run_round(0), s.run_round(1)
    assert first["bytes_down"] == 3 * head
    assert second["bytes_down"] == 3 * (head + bases)
    assert first["bytes_up"] == second["bytes_up"] == 3 * head + (2 + 4 + 8) * factors


def test_global_model_is_w0_plus_the_merged_updates_with_silent_adapters(tiny_data, tmp_path):
    s = sim(tiny_data, tmp_path)
    w0 = dict(s.method.pretrained)
    s.run_round(0)
    s.method.load_global(s.workspace, s.state)
    params = s.workspace.parameters_by_name()
    for k in s.method.layers.values():
        assert not torch.equal(params[k.base], w0[k.base])
        assert torch.equal(params[k.base], s.state.tensors[k.base])
        assert not params[k.b].any()
    # Round 0 trains on W0 even after the workspace held merged weights (the client's own copy).
    payload = s.method.configure_train(
        ServerState(0, {n: t for n, t in s.state.tensors.items() if "base_layer" not in n}), 0
    )
    s.method.client_train(s.workspace, payload, s.client_context(0, 0))
    assert all(torch.equal(params[k.base], w0[k.base]) for k in s.method.layers.values())
