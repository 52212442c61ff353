"""Tests for fedsub.optim.projector (GaLore projectors as pure functions)."""

import torch

from fedsub.optim.projector import (
    add_projected_back_,
    choose_side,
    moment_shape,
    project,
    project_back,
    projector_shape,
    random_projector,
    rsvd_projector,
    svd_projector,
    transport_moments,
)

G_TALL = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, -6.0]])  # 3 x 2 -> right side
P_ROW = torch.tensor([[0.6, 0.8]])  # 1 x 2, orthonormal row


def test_side_and_shapes_follow_the_matrix_shape() -> None:
    assert choose_side((5, 3)) == "right" and choose_side((3, 3)) == "right"
    assert choose_side((3, 5)) == "left"
    assert projector_shape((5, 3), 2) == (2, 3) and moment_shape((5, 3), 2) == (5, 2)
    assert projector_shape((3, 5), 2) == (3, 2) and moment_shape((3, 5), 2) == (2, 5)
    assert projector_shape((5, 3), 9) == (3, 3)  # rank clamped to min(m, n)


def test_project_and_back_right_side_by_hand() -> None:
    low = project(G_TALL, P_ROW, "right")
    torch.testing.assert_close(low, torch.tensor([[2.2], [5.0], [-1.8]]))
    back = project_back(low, P_ROW, "right")
    torch.testing.assert_close(back, torch.tensor([[1.32, 1.76], [3.0, 4.0], [-1.08, -1.44]]))


def test_project_and_back_left_side_is_the_transpose() -> None:
    low = project(G_TALL.T, P_ROW.T, "left")
    torch.testing.assert_close(low, torch.tensor([[2.2, 5.0, -1.8]]))
    torch.testing.assert_close(project_back(low, P_ROW.T, "left"), project_back(low.T, P_ROW, "right").T)


def test_add_projected_back_is_fused_decay_plus_update() -> None:
    w = torch.ones(3, 2)
    low = torch.tensor([[1.0], [2.0], [3.0]])
    add_projected_back_(w, low, P_ROW, "right", alpha=-0.5, beta=0.9)
    torch.testing.assert_close(w, 0.9 * torch.ones(3, 2) - 0.5 * low @ P_ROW)
    wl = torch.ones(2, 3)
    add_projected_back_(wl, low.T, P_ROW.T, "left", alpha=-0.5, beta=0.9)
    torch.testing.assert_close(wl, (0.9 * torch.ones(3, 2) - 0.5 * low @ P_ROW).T)


def test_projection_of_bf16_gradient_returns_state_dtype() -> None:
    low = project(G_TALL.bfloat16(), P_ROW, "right")
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, torch.tensor([[2.2], [5.0], [-1.8]]), atol=0.05, rtol=0)


def test_svd_projector_spans_the_top_singular_vectors() -> None:
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(8, 5, generator=gen)
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    p = svd_projector(g, 2)
    assert p.shape == (2, 5)
    # G P^T P is the best rank-2 approximation of G (Eckart-Young).
    torch.testing.assert_close(g @ p.T @ p, u[:, :2] @ torch.diag(s[:2]) @ vh[:2], atol=1e-5, rtol=0)
    pl = svd_projector(g.T, 2)
    assert pl.shape == (5, 2)
    torch.testing.assert_close(pl @ pl.T @ g.T, (u[:, :2] @ torch.diag(s[:2]) @ vh[:2]).T, atol=1e-5, rtol=0)
    assert svd_projector(g.bfloat16(), 2, dtype=torch.float32).dtype == torch.float32


def test_rsvd_projector_matches_svd_projector_on_low_rank_gradient() -> None:
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(40, 3, generator=gen) @ torch.randn(3, 30, generator=gen)
    p_exact, p_rand = svd_projector(g, 3), rsvd_projector(g, 3, seed=5)
    assert p_rand.shape == (3, 30)
    torch.testing.assert_close(p_rand.T @ p_rand, p_exact.T @ p_exact, atol=1e-5, rtol=0)


def test_random_projector_is_a_function_of_shape_rank_and_seed() -> None:
    p = random_projector((6, 4), 2, seed=11)
    assert torch.equal(p, random_projector((6, 4), 2, seed=11))
    assert not torch.equal(p, random_projector((6, 4), 2, seed=12))
    torch.testing.assert_close(p @ p.T, torch.eye(2), atol=1e-6, rtol=0)
    p64 = random_projector((6, 4), 2, seed=11, dtype=torch.float64)
    assert torch.equal(p, p64.float())  # one float64 draw, cast
    pl = random_projector((4, 6), 2, seed=11)
    assert pl.shape == (4, 2)
    torch.testing.assert_close(pl.T @ pl, torch.eye(2), atol=1e-6, rtol=0)


def test_transport_first_moment_is_exact_for_gradients_in_the_old_span() -> None:
    gen = torch.Generator().manual_seed(2)
    p_old, p_new = random_projector((7, 5), 3, seed=1), random_projector((7, 5), 3, seed=2)
    g = torch.randn(7, 3, generator=gen) @ p_old  # row space inside span(P_old)
    m_new, _ = transport_moments(project(g, p_old, "right"), torch.zeros(7, 3), p_old, p_new, "right")
    torch.testing.assert_close(m_new, project(g, p_new, "right"), atol=1e-6, rtol=0)
    pl_old, pl_new = p_old.T, p_new.T
    ml_new, _ = transport_moments(project(g.T, pl_old, "left"), torch.zeros(3, 7), pl_old, pl_new, "left")
    torch.testing.assert_close(ml_new, project(g.T, pl_new, "left"), atol=1e-6, rtol=0)


def test_transport_second_moment_permutes_under_a_permuted_basis() -> None:
    p_old = random_projector((6, 4), 3, seed=3)
    perm = [2, 0, 1]
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    _, v_new = transport_moments(torch.zeros(2, 3), v, p_old, p_old[perm], "right")
    torch.testing.assert_close(v_new, v[:, perm])
    _, vl_new = transport_moments(torch.zeros(3, 2), v.T, p_old.T, p_old[perm].T, "left")
    torch.testing.assert_close(vl_new, v.T[perm])


def test_add_projected_back_into_bf16_weight() -> None:
    w = torch.ones(3, 2, dtype=torch.bfloat16)
    low = torch.tensor([[1.0], [2.0], [3.0]])
    add_projected_back_(w, low, P_ROW, "right", alpha=-0.5, beta=0.5)
    assert w.dtype == torch.bfloat16
    expected = 0.5 - 0.5 * low @ P_ROW  # [[0.2, 0.1], [-0.1, -0.3], [-0.4, -0.7]]
    torch.testing.assert_close(w.float(), expected, atol=4e-3, rtol=0)  # bf16: 8 mantissa bits


def test_transport_fills_the_share_of_the_new_basis_outside_the_old_span_with_the_mean_energy() -> None:
    """P_old spans (e1, e2), P_new (e1, e3): Q = [[1, 0], [0, 0]], coverage c = (1, 0). v_old = [2, 4]
    -> diagonal map [2, 0]; the uncovered e3 gets the mean 3: [2, 3] (without the term: 0, a step
    1 / sqrt(eps)-large). Left side: the transpose."""
    eye = torch.eye(3)
    p_old, p_new = eye[[0, 1]], eye[[0, 2]]
    v = torch.tensor([[2.0, 4.0]])
    _, v_new = transport_moments(torch.zeros(1, 2), v, p_old, p_new, "right")
    assert torch.equal(v_new, torch.tensor([[2.0, 3.0]]))
    _, v_bare = transport_moments(torch.zeros(1, 2), v, p_old, p_new, "right", outside=False)
    assert torch.equal(v_bare, torch.tensor([[2.0, 0.0]]))
    _, vl_new = transport_moments(torch.zeros(2, 1), v.T, p_old.T, p_new.T, "left")
    assert torch.equal(vl_new, torch.tensor([[2.0], [3.0]]))
