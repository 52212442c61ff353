"""FlexLoRA: per-client truncated SVDs of the aggregate, heterogeneous ranks on one reused model."""

import pytest
import torch
from fedsub_fixtures import tiny_config
from pydantic import ValidationError

from fedsub.core.registry import build_method
from fedsub.core.types import ClientUpdate, Payload, ServerState
from fedsub.engines.simulation import Simulation
from fedsub.lora.maths import flexlora_factors, stack_factors
from fedsub.lora.names import lora_layers
from fedsub.lora.ranks import client_rank

A, B = "q.lora_A.default.weight", "q.lora_B.default.weight"
# p = (1/2, 1/2), s = 2: ΔW̄ = 2 (B1 A1 + B2 A2) / 2 = diag(3, 2, 1); client 2 has rank 1.
B1, A1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
B2, A2 = torch.tensor([[0.0], [0.0], [1.0]]), torch.tensor([[0.0, 0.0, 1.0]])


def diag(*values):
    return torch.diag(torch.tensor(values, dtype=torch.float64))


def test_each_rank_gets_the_truncated_svd_of_the_aggregate():
    stack = stack_factors([(B1, A1), (B2, A2)], [0.5, 0.5])
    expected = {1: diag(3.0, 0.0, 0.0), 2: diag(3.0, 2.0, 0.0), 3: diag(3.0, 2.0, 1.0)}
    for (b, a), rank in zip(flexlora_factors(*stack, [1, 2, 3], 2.0), [1, 2, 3]):
        assert b.shape == (3, rank) and a.shape == (rank, 3)
        assert torch.allclose(2.0 * b @ a, expected[rank], atol=1e-12)
        assert torch.allclose(a @ a.mT, torch.eye(rank, dtype=torch.float64), atol=1e-12)  # A_k = V[:r_k]
    b, _ = flexlora_factors(*stack, [1], 2.0)[0]
    assert torch.allclose(b.abs(), torch.tensor([[1.5], [0.0], [0.0]], dtype=torch.float64))  # U S / s


def test_truncations_match_a_dense_svd_on_random_clients():
    gen = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(6, r, generator=gen), torch.randn(r, 5, generator=gen)) for r in (2, 3)]
    dense = 0.5 * (0.25 * pairs[0][0] @ pairs[0][1] + 0.75 * pairs[1][0] @ pairs[1][1]).double()
    u, s, vh = torch.linalg.svd(dense)
    for (b, a), r in zip(flexlora_factors(*stack_factors(pairs, [0.25, 0.75]), [1, 2, 4], 0.5), [1, 2, 4]):
        assert torch.allclose(0.5 * b @ a, u[:, :r] @ torch.diag(s[:r]) @ vh[:r], atol=1e-10)


def test_server_keeps_the_max_rank_and_slices_per_client():
    method = build_method("flexlora", {"rank": 3, "lora_alpha": 6.0, "client_ranks": [1, 2, 3]})
    state = ServerState(0, {A: torch.zeros(3, 3), B: torch.zeros(3, 3)})
    ups = [ClientUpdate(0, Payload({A: A1, B: B1}), 1), ClientUpdate(1, Payload({A: A2, B: B2}), 1)]
    new, metrics = method.aggregate_train(state, ups)
    assert torch.allclose(2.0 * new.tensors[B] @ new.tensors[A], diag(3.0, 2.0, 1.0).float(), atol=1e-6)
    assert metrics["diag_rank_max"] == 3.0  # rank-2 and rank-1 clients inflate to 3
    for client, rank in enumerate([1, 2, 3]):
        payload = method.configure_train(new, client)
        assert payload.tensors[B].shape == (3, rank) and payload.scalars["rank"] == rank
        truncated = diag(*([3.0, 2.0, 1.0][:rank] + [0.0] * (3 - rank))).float()
        assert torch.allclose(2.0 * payload.tensors[B] @ payload.tensors[A], truncated, atol=1e-6)


def test_client_ranks_from_a_list_or_a_seeded_distribution():
    options = build_method("flexlora", {"rank": 8, "client_ranks": [2, 4]}).options
    assert [client_rank(options, k) for k in range(5)] == [2, 4, 2, 4, 2]
    options = build_method(
        "flexlora", {"rank": 8, "client_ranks": {"choices": [2, 8], "probs": [0.5, 0.5], "seed": 3}}
    ).options
    drawn = [client_rank(options, k) for k in range(40)]
    assert drawn == [client_rank(options, k) for k in range(40)] and set(drawn) == {2, 8}
    assert client_rank(build_method("flexlora", {"rank": 4}).options, 7) == 4
    for bad in ([9], [], {"choices": [2, 16]}, {"choices": [2, 4], "probs": [1.0]}):
        with pytest.raises(ValidationError):
            build_method("flexlora", {"rank": 8, "client_ranks": bad})


def test_a_low_rank_client_trains_and_sends_only_its_components(tiny_data, tmp_path):
    cfg = tiny_config(methods=[{"name": "flexlora", "client_ranks": [2, 4, 8]}])
    s = Simulation(cfg, cfg.methods[0], tiny_data, tmp_path / "flexlora")
    s.run_round(0)
    payload = s.method.configure_train(s.state, 0)
    update = s.method.client_train(s.workspace, payload, s.client_context(1, 0))
    params = s.workspace.parameters_by_name()
    for k in lora_layers(params).values():
        assert update.payload.tensors[k.b].shape[1] == update.payload.tensors[k.a].shape[0] == 2
        assert not params[k.b][:, 2:].any() and not params[k.a][2:].any()  # padding stayed exactly zero
        assert not torch.equal(update.payload.tensors[k.a], payload.tensors[k.a])  # A did train
    assert update.payload.nbytes() == payload.nbytes()
