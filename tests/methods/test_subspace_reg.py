"""Subspace-Reg: the regulariser's value and gradient by hand, the orthonormal-B server, wiring, presets."""

import math
from pathlib import Path

import pytest
import torch
from fedsub_fixtures import tiny_config

from fedsub.config import load_config
from fedsub.core.registry import build_method
from fedsub.core.tensors import max_abs_diff
from fedsub.core.types import ClientUpdate, Payload, ServerState
from fedsub.engines.simulation import Simulation
from fedsub.lora.maths import subspace_penalty
from fedsub.lora.names import lora_layers
from fedsub.methods.subspace_reg import penalty

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_penalty_value_and_gradient_on_a_hand_case():
    # Layer 1: s(BA − B_gA_g) = [[2, -2], [4, 0]] (‖·‖² = 24), ‖B − B_g‖² = 4, ‖A‖² + ‖B‖² = 6.
    b = torch.tensor([[1.0], [2.0]], requires_grad=True)
    a = torch.tensor([[1.0, 0.0]], requires_grad=True)
    refs = [(torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0, 1.0]])), (torch.zeros(2, 1), torch.zeros(1, 2))]
    zero_b, zero_a = torch.zeros(2, 1, requires_grad=True), torch.zeros(1, 2, requires_grad=True)
    value = subspace_penalty([(b, a), (zero_b, zero_a)], refs, scale=2.0, mu=0.5, alpha=0.25, lam=0.125)
    assert value.item() == (0.25 * 24 + 0.125 * 4 + 0.0625 * 6) / 2  # 6.875 over L = 2 layers
    value.backward()
    # dB = [μ s (sBA − ΔW_g) Aᵀ + α (B − B_g) + λ B] / L,  dA = [μ s Bᵀ (sBA − ΔW_g) + λ A] / L
    assert torch.equal(b.grad, torch.tensor([[1.0625], [2.375]]))
    assert torch.equal(a.grad, torch.tensor([[5.0625, -1.0]]))


def test_penalty_equals_the_dense_formula_on_random_factors():
    gen = torch.Generator().manual_seed(0)
    b, a, b_g, a_g = (
        torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in [(5, 2), (2, 4), (5, 2), (2, 4)]
    )
    dense = 0.5 * 0.3 * (1.5 * b @ a - 1.5 * b_g @ a_g).square().sum() + 0.5 * 0.2 * (b - b_g).square().sum()
    dense = dense + 0.5 * 0.1 * (a.square().sum() + b.square().sum())
    assert float(subspace_penalty([(b, a)], [(b_g, a_g)], 1.5, 0.3, 0.2, 0.1)) == pytest.approx(float(dense), rel=1e-12)


def test_server_basis_is_orthonormal_and_the_norm_restored():
    A, B = "q.lora_A.default.weight", "q.lora_B.default.weight"
    method = build_method("subspace_reg", {"rank": 2, "lora_alpha": 4.0})
    state = ServerState(0, {A: torch.zeros(2, 3), B: torch.zeros(3, 2)})
    b1, a1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    b2, a2 = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    new, metrics = method.aggregate_train(
        state, [ClientUpdate(0, Payload({A: a1, B: b1}), 1), ClientUpdate(1, Payload({A: a2, B: b2}), 1)]
    )
    b, a = new.tensors[B].double(), new.tensors[A].double()
    assert torch.allclose(b.mT @ b, torch.eye(2, dtype=torch.float64), atol=1e-6)  # B_g = U_r
    restored = math.sqrt(14 / 13) * torch.diag(torch.tensor([3.0, 2.0, 0.0], dtype=torch.float64))
    assert torch.allclose(2.0 * b @ a, restored, atol=1e-5)  # ΔW̄ = diag(3, 2, 1) truncated, norm √14 kept
    # Client 1 spans (e1, e2) = span(B_g): overlap 1; client 2's B has rank 1 along e3: overlap 0.
    assert metrics["diag_basis_overlap"] == pytest.approx(0.5, abs=1e-6)


def simulation(tiny_data, tmp_path, name, **options):
    cfg = tiny_config(methods=[{"name": name, **options}])
    return Simulation(cfg, cfg.methods[0], tiny_data, tmp_path / name)


def test_client_penalty_starts_at_the_l2_term(tiny_data, tmp_path):
    s = simulation(tiny_data, tmp_path, "subspace_reg", lambda_reg=0.5)
    s.run_round(0)
    payload = s.method.configure_train(s.state, 0)
    s.workspace.write(payload.tensors)
    layers = lora_layers(payload.tensors).values()
    l2 = sum(payload.tensors[k.a].square().sum() + payload.tensors[k.b].square().sum() for k in layers) / len(layers)
    assert penalty(s.workspace, payload, s.method.options)(s.workspace.model).item() == pytest.approx(
        0.25 * float(l2), rel=1e-5
    )


def test_zero_weights_train_exactly_like_svd_redistribution(tiny_data, tmp_path):
    reg = simulation(tiny_data, tmp_path, "subspace_reg", mu=0.0, alpha=0.0, lambda_reg=0.0)
    plain = simulation(tiny_data, tmp_path, "svd_redistribute")
    payload = reg.method.configure_train(reg.state, 1)
    with_reg = reg.method.client_train(reg.workspace, payload, reg.client_context(0, 1))
    without = plain.method.client_train(plain.workspace, payload, plain.client_context(0, 1))
    assert max_abs_diff(with_reg.payload.tensors, without.payload.tensors) == 0.0
    reg = simulation(tiny_data, tmp_path, "subspace_reg", mu=0.0, alpha=0.0, lambda_reg=10.0)
    shrunk = reg.method.client_train(reg.workspace, payload, reg.client_context(0, 1))
    assert max_abs_diff(shrunk.payload.tensors, without.payload.tensors) > 0.0


@pytest.mark.parametrize("name", ["subspace_reg.yaml", "subspace_reg_compare.yaml"])
def test_presets_validate_and_name_their_command(name):
    path = CONFIGS / name
    assert path.read_text().splitlines()[0] == f"# fedsub run configs/{name}"
    cfg = load_config(path)
    assert (cfg.federation.num_clients, cfg.federation.clients_per_round, cfg.federation.rounds) == (10, 3, 20)
    assert cfg.partition.scheme == "dirichlet" and cfg.partition.alpha == 0.3 and cfg.model.name == "minilm"
    lora = [m.options for m in cfg.methods if hasattr(m.options, "rank")]
    assert lora and all(o.rank == 8 and o.lora_alpha == 16 for o in lora)
    assert "subspace_reg" in [m.name for m in cfg.methods]
