"""Subspace diagnostics on constructed clients, and their wiring into the LoRA, dense and FedGaLore rounds."""

import math

import pytest
import torch
from fedsub_fixtures import tiny_config

from fedsub.core.registry import build_method
from fedsub.core.types import ClientUpdate, Payload, ServerState
from fedsub.diagnostics.maths import (
    basis_overlap,
    column_basis,
    dense_diagnostics,
    factored_diagnostics,
    lora_diagnostics,
    numerical_rank,
    update_gram,
)
from fedsub.engines.simulation import Simulation
from fedsub.methods.fedgalore.state import FedGaLoreState

E = torch.eye(3, dtype=torch.float64)


def col(i):
    return E[:, i : i + 1]


def row(i, n=2):
    return torch.eye(n, dtype=torch.float64)[i : i + 1]


def test_identical_clients_give_overlap_cosine_and_ratio_one():
    b = torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
    a = torch.tensor([[1.0, -1.0], [0.5, 2.0]], dtype=torch.float64)
    d = lora_diagnostics([[(b, a)] * 3], [0.2, 0.3, 0.5], [(b, a)], rank=2)
    for key in (
        "diag_basis_overlap",
        "diag_basis_overlap_sqrt",
        "diag_cancellation_ratio",
        "diag_cos_client_global",
        "diag_cos_pairwise",
    ):
        assert d[key] == pytest.approx(1.0, abs=1e-12), key
    assert d["diag_rank_mean"] == d["diag_rank_max"] == 2.0
    assert d["diag_truncation_energy"] == pytest.approx(0.0, abs=1e-12)


def test_orthogonal_clients_give_pairwise_cosine_zero_and_inflate_the_rank():
    # ΔW_1 = e1 e1ᵀ, ΔW_2 = e2 e2ᵀ, weights 3/4, 1/4: ΔW̄ = diag(3/4, 1/4, 0) -> rank 2 from rank-1 clients.
    clients = [[(col(0), row(0)), (col(1), row(1))]]
    aggregated = [
        (
            torch.cat([col(0), col(1)], 1) * torch.tensor([0.75, 0.25], dtype=torch.float64),
            torch.eye(2, dtype=torch.float64),
        )
    ]
    d = lora_diagnostics(clients, [0.75, 0.25], aggregated, rank=1)
    assert d["diag_cos_pairwise"] == 0.0
    norm_mean = math.sqrt(0.75**2 + 0.25**2)
    assert d["diag_cancellation_ratio"] == pytest.approx(norm_mean, abs=1e-12)  # Σ p_k ‖ΔW_k‖ = 1
    assert d["diag_cos_client_global"] == pytest.approx((0.75 + 0.25) / norm_mean / 2, abs=1e-12)
    # The rank-1 reference is e1: client 1 lies in it (overlap 1), client 2 is orthogonal (0).
    assert d["diag_basis_overlap"] == pytest.approx(0.5, abs=1e-12)
    assert d["diag_rank_mean"] == d["diag_rank_max"] == 2.0
    assert d["diag_truncation_energy"] == pytest.approx(0.25**2 / norm_mean**2, abs=1e-12)


def test_opposite_clients_cancel_completely():
    b, a = col(0) + col(2), row(1)
    d = lora_diagnostics([[(b, a), (-b, a)]], [0.5, 0.5], [(b, a)], rank=1)
    assert d["diag_cancellation_ratio"] == pytest.approx(0.0, abs=1e-12)
    assert d["diag_cos_pairwise"] == pytest.approx(-1.0, abs=1e-12)
    assert d["diag_rank_max"] == 0.0  # ΔW̄ = 0


def test_gram_is_the_frobenius_inner_product_over_layers():
    gen = torch.Generator().manual_seed(1)
    pairs = [
        (torch.randn(4, 2, generator=gen, dtype=torch.float64), torch.randn(2, 3, generator=gen, dtype=torch.float64))
        for _ in range(3)
    ]
    dense = torch.stack([(b @ a).flatten() for b, a in pairs])
    assert torch.allclose(update_gram(pairs), dense @ dense.T, atol=1e-12)


def test_overlap_is_the_squared_frobenius_norm_over_the_client_rank():
    q_ref = col(0)
    q_client = column_basis(torch.tensor([[1.0, 1.0], [1.0, -1.0], [0.0, 0.0]]))  # span(e1, e2)
    assert q_client.shape == (3, 2)
    assert basis_overlap(q_ref, q_client) == pytest.approx(0.5, abs=1e-12)  # ‖e1ᵀ Q‖² = 1, over r = 2
    assert basis_overlap(q_ref, column_basis(torch.zeros(3, 2))) is None


def test_numerical_rank_uses_a_relative_tolerance():
    assert numerical_rank(torch.tensor([5.0, 1.0, 1e-9])) == 2
    assert numerical_rank(torch.zeros(3)) == 0


@pytest.mark.parametrize("name", ["fedit", "ffa_lora"])
def test_fedavg_lora_rounds_report_diagnostics_unless_turned_off(tiny_data, tmp_path, name):
    cfg = tiny_config(methods=[name])
    record = Simulation(cfg, cfg.methods[0], tiny_data, tmp_path / name).run_round(0)
    assert 0.0 < record["diag_basis_overlap"] <= 1.0 + 1e-9 and 0.0 < record["diag_cancellation_ratio"] <= 1.0 + 1e-9
    # FFA-LoRA's shared A caps the aggregate at rank r = 8; FedIT's independent A's inflate it.
    assert (record["diag_rank_max"] == 8.0) == (name == "ffa_lora")
    cfg = tiny_config(methods=[{"name": name, "diagnostics": False}])
    record = Simulation(cfg, cfg.methods[0], tiny_data, tmp_path / f"{name}-off").run_round(0)
    assert not [k for k in record if k.startswith("diag_")]


# ---------------------------------------------------------------- dense and FedGaLore updates
J = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
I2 = torch.eye(2, dtype=torch.float64)


def test_dense_diagnostics_by_hand_over_two_matrices():
    # Matrix 1: ΔW_1 = 4 I, ΔW_2 = 8 J (orthogonal), p = (3/4, 1/4): ΔW̄ = [[3, 2], [2, 3]], σ = (5, 1).
    # Matrix 2 (3 x 2): ±2 at entry (3, 1): ΔW̄ = 1 there, rank 1.
    # Gram summed over both: [[32 + 4, -4], [-4, 128 + 4]]; ‖ΔW̄‖² = 26 + 1 = 27.
    corner = torch.zeros(3, 2, dtype=torch.float64)
    corner[2, 0] = 2.0
    clients = [[4 * I2, 8 * J], [corner, -corner]]
    d = dense_diagnostics(clients, [0.75, 0.25], rank=1)
    norms = (6.0, 2 * math.sqrt(33))
    assert d["diag_cancellation_ratio"] == pytest.approx(math.sqrt(27) / (0.75 * norms[0] + 0.25 * norms[1]), abs=1e-12)
    assert d["diag_cos_pairwise"] == pytest.approx(-4 / (norms[0] * norms[1]), abs=1e-12)
    # ⟨ΔW_k, ΔW̄⟩ = (G p)_k = (26, 30)
    expected = (26 / (norms[0] * math.sqrt(27)) + 30 / (norms[1] * math.sqrt(27))) / 2
    assert d["diag_cos_client_global"] == pytest.approx(expected, abs=1e-12)
    assert (d["diag_rank_mean"], d["diag_rank_max"]) == (1.5, 2.0)
    assert d["diag_truncation_energy"] == pytest.approx((1 / 26 + 0) / 2, abs=1e-12)  # σ_2² / Σ σ² = 1 / 26
    assert "diag_truncation_energy" not in dense_diagnostics(clients, [0.75, 0.25])  # no rank, no truncation


def test_fedavg_full_round_diagnostics_are_of_w_k_minus_w_t_without_the_head():
    method = build_method("fedavg_full")
    method.matrix_names = ["w"]
    start = torch.ones(2, 2)
    state = ServerState(0, {"w": start, "h": torch.zeros(2)})
    a = ClientUpdate(0, Payload({"w": start + 4 * torch.eye(2), "h": torch.tensor([1.0, 0.0])}), 3)
    b = ClientUpdate(1, Payload({"w": start + 8 * J.float(), "h": torch.tensor([1.0, 0.0])}), 1)
    _, metrics = method.aggregate_train(state, [a, b])
    # matrix 1 of the hand test alone; the identical head updates would make the cosines positive
    assert metrics["diag_cos_pairwise"] == 0.0
    assert metrics["diag_cancellation_ratio"] == pytest.approx(math.sqrt(26) / (5 * math.sqrt(2)), abs=1e-12)
    assert metrics["diag_cos_client_global"] == pytest.approx((3 + 2) / math.sqrt(13) / 2, abs=1e-12)
    assert metrics["diag_rank_max"] == 2.0 and "diag_truncation_energy" not in metrics
    assert build_method("fedavg_full", {"diagnostics": False}).aggregate_train(state, [a, b])[1] == {}


def orthonormal(rows, cols, gen):
    q, _ = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), generator=gen, dtype=torch.float64))
    return q.mT if rows < cols else q


def test_r_space_diagnostics_equal_the_dense_diagnostics_of_the_updates_r_p():
    gen = torch.Generator().manual_seed(3)
    p_right, p_left = orthonormal(3, 7, gen), orthonormal(6, 3, gen)  # r x n and m x r, r = 3
    common = torch.randn(2, 3, generator=gen, dtype=torch.float64)  # right-side R_k = Z_k C: rank(R̄) = 2 < r
    r_right = [torch.randn(5, 2, generator=gen, dtype=torch.float64) @ common for _ in range(3)]
    r_left = [torch.randn(3, 4, generator=gen, dtype=torch.float64) for _ in range(3)]
    weights = [0.5, 0.3, 0.2]
    factored = factored_diagnostics([r_right, r_left], weights)
    dense = dense_diagnostics([[r @ p_right for r in r_right], [p_left @ r for r in r_left]], weights)
    assert factored.keys() == dense.keys()
    for key in factored:
        assert factored[key] == pytest.approx(dense[key], abs=1e-12), key
    assert (factored["diag_rank_mean"], factored["diag_rank_max"]) == (2.5, 3.0)
    # The shortcut needs P orthonormal: a skewed P changes the dense cosines (the test can tell).
    skewed = p_right + 0.5 * torch.ones_like(p_right)
    assert dense_diagnostics([[r @ skewed for r in r_right]], weights)["diag_cos_pairwise"] != pytest.approx(
        factored_diagnostics([r_right], weights)["diag_cos_pairwise"], abs=1e-6
    )


def test_fedgalore_round_diagnostics_by_hand_leave_the_decay_out():
    # W: 3 x 2, P = [[0, 1]]: ΔW_k = R_k P (+ (c_k - 1) W, left out). R_1 = (1, 2, 3), R_2 = (3, 2, 1),
    # p = (1/4, 3/4): ⟨R_1, R_2⟩ = 10, ‖R_k‖² = 14, R̄ = (2.5, 2, 1.5), ‖R̄‖² = 12.5, ⟨R_k, R̄⟩ = (11, 13).
    method = build_method("fedgalore", {"rank": 1, "sync": "none"})
    method.galore_names, method.head_names, method.shapes = ["w"], ["h"], {"w": torch.Size([3, 2])}
    extra = FedGaLoreState(projectors={"w": torch.tensor([[0.0, 1.0]])})
    state = ServerState(0, {"w": torch.ones(3, 2), "h": torch.zeros(2)}, extra)
    ups = [ClientUpdate(k, Payload({"R::w": torch.tensor(r).reshape(3, 1), "h": torch.zeros(2)}, {"decay": c}), n)
           for k, (r, c, n) in enumerate([([1.0, 2.0, 3.0], 0.5, 1), ([3.0, 2.0, 1.0], 1.0, 3)])]  # fmt: skip
    _, metrics = method.aggregate_train(state, ups)
    assert metrics["diag_cos_pairwise"] == pytest.approx(10 / 14, abs=1e-7)
    assert metrics["diag_cancellation_ratio"] == pytest.approx(math.sqrt(12.5 / 14), abs=1e-7)
    assert metrics["diag_cos_client_global"] == pytest.approx(
        (11 + 13) / (math.sqrt(14) * math.sqrt(12.5)) / 2, abs=1e-7
    )
    assert metrics["diag_rank_max"] == 1.0 and "diag_truncation_energy" not in metrics


@pytest.mark.parametrize("name", ["fedgalore", "fedftg", "fedavg_full"])
def test_subspace_and_dense_rounds_report_diagnostics_unless_turned_off(tiny_data, tmp_path, name):
    cfg = tiny_config(methods=[name])
    sim = Simulation(cfg, cfg.methods[0], tiny_data, tmp_path / name)
    record = sim.run_round(0)
    keys = {"diag_cancellation_ratio", "diag_cos_client_global", "diag_cos_pairwise", "diag_rank_mean", "diag_rank_max"}
    assert {k for k in record if k.startswith("diag_")} == keys | (
        {"diag_truncation_energy"} if name == "fedftg" else set()
    )
    assert 0.0 < record["diag_cancellation_ratio"] <= 1.0 + 1e-9
    # The claim: FedGaLore's aggregate stays within its rank 8 (shared P); FedFTG's per-client
    # projectors and full fine-tuning inflate it (3 clients x 8 = 24 of 32 and full rank 32 here).
    assert (record["diag_rank_max"] <= 8.0) == (name == "fedgalore")
    if name == "fedavg_full":  # the target weights only: no head, no biases
        assert sim.method.matrix_names and all(
            n.endswith(".weight") and "classifier" not in n for n in sim.method.matrix_names
        )
    cfg = tiny_config(methods=[{"name": name, "diagnostics": False}])
    record = Simulation(cfg, cfg.methods[0], tiny_data, tmp_path / f"{name}-off").run_round(0)
    assert not [k for k in record if k.startswith("diag_")]
