"""FedSVD: the aggregated product B̄ A_prev is preserved, A is re-orthogonalised, clients send B only."""

import torch
from fedsub_fixtures import tiny_config

from fedsub.core.registry import build_method
from fedsub.core.types import ClientUpdate, Payload, ServerState
from fedsub.engines.simulation import Simulation
from fedsub.lora.maths import fedsvd_factors

A, B = "q.lora_A.default.weight", "q.lora_B.default.weight"
A_PREV = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
B1, B2 = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
# B̄ = (B1 + B2) / 2 = [[1, 0], [0, 2], [0, 1]];  M = B̄ A_prev = [[1, 0, 0], [0, 0, 2], [0, 0, 1]]
M = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def test_fedsvd_factors_preserve_the_product_with_orthonormal_a():
    b, a = fedsvd_factors((B1 + B2) / 2, A_PREV, rank=2)
    assert torch.allclose(b @ a, M, atol=1e-12)
    assert torch.allclose(a @ a.mT, torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(
        b.mT @ b, torch.diag(torch.tensor([5.0, 1.0], dtype=torch.float64)), atol=1e-12
    )  # S² = (√5)², 1²


def test_aggregate_uses_the_uploaded_b_and_the_servers_a():
    method = build_method("fedsvd", {"rank": 2, "lora_alpha": 2.0})
    state = ServerState(0, {A: A_PREV, B: torch.zeros(3, 2), "head": torch.zeros(1)})
    ups = [ClientUpdate(k, Payload({B: b, "head": torch.tensor([float(k)])}), 1) for k, b in enumerate((B1, B2))]
    new, metrics = method.aggregate_train(state, ups)
    assert torch.allclose(new.tensors[B].double() @ new.tensors[A].double(), M, atol=1e-6)
    assert torch.equal(new.tensors["head"], torch.tensor([0.5]))
    assert metrics["diag_rank_max"] == 2.0  # a shared A keeps the aggregate at rank r


def test_clients_send_b_and_head_only_and_a_never_trains(tiny_data, tmp_path):
    cfg = tiny_config(methods=["fedsvd"])
    s = Simulation(cfg, cfg.methods[0], tiny_data, tmp_path / "fedsvd")
    payload = s.method.configure_train(s.state, 0)
    update = s.method.client_train(s.workspace, payload, s.client_context(0, 0))
    a_names = [n for n in payload.tensors if ".lora_A." in n]
    assert a_names and not [n for n in update.payload.tensors if ".lora_A." in n]
    params = s.workspace.parameters_by_name()
    assert all(torch.equal(params[n], payload.tensors[n]) for n in a_names)
    record = s.run_round(0)
    assert record["bytes_down"] - record["bytes_up"] == 3 * sum(payload.tensors[n].numel() * 4 for n in a_names)
    new_a = s.state.tensors[a_names[0]]
    assert torch.allclose(new_a @ new_a.mT, torch.eye(new_a.shape[0]), atol=1e-5)  # orthonormal rows after a round
