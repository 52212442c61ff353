"""Tests for fedsub.linalg.svd: seeded sketches, randomized SVD, principal angles."""

import math

import pytest
import torch

from fedsub.linalg.svd import (
    largest_principal_angle,
    orthonormalize,
    principal_angles,
    randomized_svd,
    seeded_gaussian,
)


def _low_rank_plus_noise(m: int, n: int, rank: int, noise: float, seed: int) -> torch.Tensor:
    """U diag(10..1) V^T + noise * Gaussian, float64 (a stand-in for a GaLore gradient)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(m, rank, generator=gen, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(n, rank, generator=gen, dtype=torch.float64)).Q
    s = torch.linspace(10.0, 1.0, rank, dtype=torch.float64)
    return u @ torch.diag(s) @ v.T + noise * torch.randn(m, n, generator=gen, dtype=torch.float64)


def test_seeded_gaussian_depends_only_on_seed_and_shape() -> None:
    a = seeded_gaussian((7, 3), 123)
    assert torch.equal(a, seeded_gaussian((7, 3), 123))
    assert not torch.equal(a, seeded_gaussian((7, 3), 124))
    # Every dtype is a cast of the same float64 draw.
    assert torch.equal(a, seeded_gaussian((7, 3), 123, dtype=torch.float64).float())


def test_orthonormalize_fixes_column_signs() -> None:
    q = orthonormalize(torch.tensor([[-2.0, 0.0], [0.0, 3.0]]))
    assert torch.equal(q, torch.tensor([[-1.0, 0.0], [0.0, 1.0]]))
    r = orthonormalize(torch.randn(9, 4, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(r.T @ r, torch.eye(4), atol=1e-6, rtol=0)


def test_randomized_svd_is_exact_on_a_low_rank_matrix() -> None:
    a = _low_rank_plus_noise(60, 40, 5, noise=0.0, seed=1)
    u, s, vh = randomized_svd(a, 5, oversampling=5, power_iters=1, seed=3)
    assert u.shape == (60, 5) and s.shape == (5,) and vh.shape == (5, 40)
    torch.testing.assert_close(u @ torch.diag(s) @ vh, a, atol=1e-10, rtol=0)
    torch.testing.assert_close(s, torch.linspace(10.0, 1.0, 5, dtype=torch.float64))


def test_randomized_svd_is_deterministic_given_the_seed() -> None:
    a = _low_rank_plus_noise(50, 30, 4, noise=0.1, seed=2).float()
    first = randomized_svd(a, 4, seed=9)
    second = randomized_svd(a, 4, seed=9)
    assert all(torch.equal(x, y) for x, y in zip(first, second))


def test_rsvd_subspace_is_close_to_svd_on_low_rank_plus_noise() -> None:
    a = _low_rank_plus_noise(300, 200, 10, noise=0.01, seed=4).float()
    vh_exact = torch.linalg.svd(a, full_matrices=False).Vh[:10]
    _, _, vh = randomized_svd(a, 10, oversampling=10, power_iters=2, seed=0)
    _, _, vh_crude = randomized_svd(a, 10, oversampling=0, power_iters=0, seed=0)
    angle = largest_principal_angle(vh.T, vh_exact.T)
    # sigma_10 = 1.05 against a noise floor sigma_11 = 0.30: two power iterations shrink the error
    # by (0.30 / 1.05)^4 (measured 4e-4 rad); a bare sketch gets the 10th direction wrong (0.66).
    assert angle < 1e-3
    assert largest_principal_angle(vh_crude.T, vh_exact.T) > 0.3


def test_principal_angles_of_two_planes_in_r3() -> None:
    for t in (0.3, 1.2, 1e-9):  # 1e-9: arccos alone would return 0
        a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
        b = torch.tensor([[1.0, 0.0], [0.0, math.cos(t)], [0.0, math.sin(t)]], dtype=torch.float64)
        angles = principal_angles(a, b)
        torch.testing.assert_close(angles, torch.tensor([0.0, t], dtype=torch.float64), atol=1e-15, rtol=1e-9)


def test_principal_angles_with_different_dimensions() -> None:
    e = torch.eye(4, dtype=torch.float64)
    assert torch.equal(principal_angles(e[:, :1], e[:, :2]), torch.zeros(1, dtype=torch.float64))
    assert largest_principal_angle(e[:, :1], e[:, 2:]) == pytest.approx(math.pi / 2, abs=1e-12)
