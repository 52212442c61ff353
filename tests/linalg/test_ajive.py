"""Tests for fedsub.linalg.ajive (Feng, Jiang, Hannig & Marron 2018) and sync_second_moments.

mvlearn comparisons need the dev dependency `pip install --no-deps mvlearn==0.5.0` (skipped without).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from fedsub.linalg import AJIVEResult, ajive, sync_second_moments
from fedsub.linalg.ajive_bounds import (
    _gram_equivalent_gaussian,
    _noise_norm_samples,
    _orthonormalize_blocks,
    _orthonormalize_rows,
    _random_direction_bound,
    _random_direction_samples,
    _top_eig_gram,
    _tridiagonal_top_eig,
)
from fedsub.linalg.svd import largest_principal_angle

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The sampling issues thousands of small batched ops. On the shared 2-core CI box, two
    OpenMP threads under load ran this file in 84 s against 11 s with one (each op waits for a
    descheduled worker), so these tests run single-threaded and restore the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _e(n: int, i: int) -> torch.Tensor:
    v = torch.zeros(n, dtype=F64)
    v[i] = 1.0
    return v


def synthetic(n: int, dims: list[int], noise: float, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Blocks with joint rank 2 and individual rank 2 each (scores centred, mutually orthogonal),
    singular values 40, 30 (joint) and 25, 20 (individual), plus N(0, noise^2) entries."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2 + 2 * len(dims), generator=g, dtype=F64)
    scores = torch.linalg.qr(z - z.mean(0)).Q
    blocks = []
    for k, d in enumerate(dims):
        u = torch.cat([scores[:, :2], scores[:, 2 + 2 * k : 4 + 2 * k]], dim=1)
        v = torch.linalg.qr(torch.randn(d, 4, generator=g, dtype=F64)).Q
        signal = (u * torch.tensor([40.0, 30.0, 25.0, 20.0], dtype=F64)) @ v.T
        blocks.append(signal + noise * torch.randn(n, d, generator=g, dtype=F64))
    return blocks, scores[:, :2]


# ----------------------------------------------------------------------------- recovery
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("noise", [0.1, 0.25])
def test_recovers_joint_rank_and_subspace(seed: int, noise: float) -> None:
    # noise 0.25: spectral SNR sigma_min(signal) / ||E|| ~ 20 / 3.9 ~ 5 ("moderate").
    blocks, truth = synthetic(100, [20, 25, 30], noise, seed)
    res = ajive(blocks, seed=seed)
    assert res.signal_ranks == [4, 4, 4]  # scree elbow
    assert res.joint_rank == 2
    assert res.individual_ranks == [2, 2, 2]
    assert math.degrees(largest_principal_angle(res.joint_basis, truth)) < 5.0
    assert res.wedin_bound is not None and res.random_direction_bound is not None


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_recovers_joint_rank_at_high_noise(seed: int) -> None:
    # noise 1.0: ||E|| ~ 15.5 against a weakest signal value of 20; the rank still comes out.
    blocks, truth = synthetic(100, [20, 25, 30], 1.0, seed)
    res = ajive(blocks, seed=seed)
    assert res.joint_rank == 2
    assert math.degrees(largest_principal_angle(res.joint_basis, truth)) < 15.0


def test_parts_add_up_and_joint_is_orthogonal_to_individual() -> None:
    blocks, _ = synthetic(100, [20, 25, 30], 0.25, 0)
    res = ajive(blocks)
    for x, mu, j, i in zip(blocks, res.column_means, res.block_joint, res.block_individual):
        torch.testing.assert_close(mu, x.mean(0), rtol=0, atol=1e-12)
        assert float((res.joint_basis.T @ i).abs().max()) < 1e-10  # I_k lies off span(U_J)
        resid = x - mu - j - i
        assert float(torch.linalg.matrix_norm(resid, ord=2)) < 0.25 * (10 + 6)  # noise only
    torch.testing.assert_close(res.joint_basis.T @ res.joint_basis, torch.eye(2, dtype=F64))


# ----------------------------------------------------------------------------- mvlearn
def _mvlearn_ajive():
    pytest.importorskip("mvlearn", reason="dev dependency: pip install --no-deps mvlearn==0.5.0")
    from mvlearn.decomposition import AJIVE

    return AJIVE


@pytest.mark.parametrize(("seed", "noise"), [(0, 0.3), (1, 1.0), (2, 2.0)])
def test_matches_mvlearn(seed: int, noise: float) -> None:
    mv_ajive = _mvlearn_ajive()
    blocks, _ = synthetic(100, [20, 25, 30], noise, seed)
    ours = ajive(blocks, signal_ranks=[4, 4, 4], seed=seed, n_wedin_samples=500, n_randdir_samples=500)
    ref = mv_ajive(init_signal_ranks=[4, 4, 4], random_state=seed, n_wedin_samples=500, n_randdir_samples=500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit([x.numpy() for x in blocks])
        ref_joint = ref.transform([x.numpy() for x in blocks])
    assert ours.joint_rank == ref.joint_rank_ == 2
    assert largest_principal_angle(ours.joint_basis, torch.from_numpy(ref.joint_scores_)) < 1e-10
    np.testing.assert_allclose(ours.joint_singular_values.numpy(), ref.all_joint_svals_, atol=1e-12)
    np.testing.assert_allclose(ours.signal_thresholds, ref.sv_thresholds_, rtol=1e-12)
    assert ours.individual_ranks == [int(r) for r in ref.individual_ranks_]
    for j, i, rj, ri in zip(ours.block_joint, ours.block_individual, ref_joint, ref.individual_mats_):
        np.testing.assert_allclose(j.numpy(), rj, atol=1e-9)
        np.testing.assert_allclose(i.numpy(), ri, atol=1e-9)
    # Different random numbers (and our exact Bartlett shortcut): the percentiles agree to
    # Monte-Carlo error, measured <= 0.4 % at 1000 draws.
    assert ours.wedin_bound == pytest.approx(ref.wedin_cutoff_, rel=0.02)
    assert ours.random_direction_bound == pytest.approx(ref.rand_cutoff_, rel=0.02)


# ----------------------------------------------------------------------------- hand-worked
def _two_hand_blocks(theta_deg: float) -> list[torch.Tensor]:
    """X1 = [10 e1, 3 e2, 2.5 e4], X2 = [10 e1, 3 f, 2.5 e5], f = cos(theta) e2 + sin(theta) e3."""
    t = math.radians(theta_deg)
    f = math.cos(t) * _e(5, 1) + math.sin(t) * _e(5, 2)
    x1 = torch.stack([10 * _e(5, 0), 3 * _e(5, 1), 2.5 * _e(5, 3)], dim=1)
    x2 = torch.stack([10 * _e(5, 0), 3 * f, 2.5 * _e(5, 4)], dim=1)
    return [x1, x2]


def test_hand_worked_singular_values_thresholds_and_parts() -> None:
    # M = [e1, e2, e1, f]: sigma^2 = 2 (e1), 1 + cos(theta), 1 - cos(theta) (in span(e2, f)), 0.
    res = ajive(_two_hand_blocks(80.0), signal_ranks=2, center=False, joint_rank=2)
    c = math.cos(math.radians(80.0))
    expected = torch.tensor([math.sqrt(2), math.sqrt(1 + c), math.sqrt(1 - c), 0.0], dtype=F64)
    torch.testing.assert_close(res.joint_singular_values, expected, rtol=0, atol=1e-14)
    assert res.signal_thresholds == pytest.approx([2.75, 2.75], abs=1e-14)  # (3 + 2.5) / 2
    # The second candidate bisects e2 and f: ||X1^T u|| = 3 cos(40 deg) = 2.30 < 2.75: dropped.
    assert res.joint_rank == 1
    torch.testing.assert_close(res.joint_basis.abs()[:, 0], _e(5, 0), rtol=0, atol=1e-14)
    x1 = _two_hand_blocks(80.0)[0]
    torch.testing.assert_close(res.block_joint[0], torch.outer(_e(5, 0), x1[0]), rtol=0, atol=1e-13)
    # Residual [0, 3 e2, 2.5 e4] keeps the value 3 > tau = 2.75 only.
    assert res.individual_ranks == [1, 1]
    expected_i1 = torch.zeros(5, 3, dtype=F64)
    expected_i1[1, 1] = 3.0
    torch.testing.assert_close(res.block_individual[0], expected_i1, rtol=0, atol=1e-13)
    assert res.wedin_bound is None and res.random_direction_bound is None


def test_identifiability_check_is_switchable_and_keeps_close_pairs() -> None:
    unchecked = ajive(_two_hand_blocks(80.0), signal_ranks=2, center=False, joint_rank=2, check_identifiability=False)
    assert unchecked.joint_rank == 2
    # theta = 20 deg: 3 cos(10 deg) = 2.95 >= 2.75, the bisector stays joint.
    assert ajive(_two_hand_blocks(20.0), signal_ranks=2, center=False, joint_rank=2).joint_rank == 2


def test_noise_free_shared_direction_is_joint() -> None:
    # Exactly rank-1 blocks sharing e1: the Wedin bound is exactly K = 2 (no noise at all), and
    # sigma_1^2 of M = [e1, e1] is 2 up to rounding: counted as joint thanks to the slack.
    x1 = torch.outer(_e(6, 0), torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    x2 = torch.outer(_e(6, 0), torch.tensor([-4.0, 0.5, 1.0], dtype=F64))
    res = ajive([x1, x2], center=False)
    assert res.signal_ranks == [1, 1]
    assert res.wedin_bound == 2.0
    assert res.joint_rank == 1
    torch.testing.assert_close(res.block_joint[0], x1, rtol=0, atol=1e-14)
    assert res.individual_ranks == [0, 0]


def test_scree_elbow_picks_largest_log_gap() -> None:
    # Singular values 10, 9, 1, 0.9: log gaps 0.105, 2.197, 0.105 -> rank 2. An exactly rank-3
    # block: the gap to the zero floor (~30 nats) wins -> 3.
    x1 = torch.zeros(6, 4, dtype=F64)
    x1[:4, :4] = torch.diag(torch.tensor([10.0, 9.0, 1.0, 0.9], dtype=F64))
    x2 = torch.zeros(6, 4, dtype=F64)
    x2[:3, :3] = torch.diag(torch.tensor([5.0, 4.0, 0.5], dtype=F64))
    res = ajive([x1, x2], center=False, n_wedin_samples=20, n_randdir_samples=20)
    assert res.signal_ranks == [2, 3]


# ----------------------------------------------------------------------------- degenerate input
def test_rejects_fewer_than_two_blocks() -> None:
    with pytest.raises(ValueError, match="at least 2 blocks"):
        ajive([torch.ones(4, 2)])
    with pytest.raises(ValueError, match="at least 2 blocks"):
        ajive([])


def test_rejects_differing_rows_nan_inf_and_bad_types() -> None:
    good = torch.randn(5, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"row counts are \[5, 4\]"):
        ajive([good, torch.randn(4, 3, dtype=F64)])
    bad = good.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="block 1 contains NaN or Inf"):
        ajive([good, bad])
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match="block 0 contains NaN or Inf"):
        ajive([bad, good])
    with pytest.raises(ValueError, match="block 1 must be a 2-D floating tensor"):
        ajive([good, torch.ones(5, 3, dtype=torch.int64)])
    with pytest.raises(ValueError, match="block 0 must be a 2-D floating tensor"):
        ajive([torch.ones(5), good])
    with pytest.raises(ValueError, match="dtype and device"):
        ajive([good, good.float()])
    with pytest.raises(ValueError, match="empty"):
        ajive([good, torch.ones(5, 0, dtype=F64)])


def test_constant_block_has_no_signal_and_forces_joint_rank_zero() -> None:
    blocks, _ = synthetic(50, [10, 12], 0.1, 0)
    const = torch.full((50, 4), 0.1, dtype=F64)  # 0.1 is inexact: centring leaves rounding only
    res = ajive([blocks[0], const, blocks[1]])
    assert res.signal_ranks[1] == 0 and res.joint_rank == 0
    assert res.wedin_bound is None and res.random_direction_bound is None
    assert res.joint_basis.shape == (50, 0)
    torch.testing.assert_close(res.column_means[1], torch.full((4,), 0.1, dtype=F64), rtol=0, atol=1e-15)
    assert res.individual_ranks[1] == 0 and not res.block_individual[1].any()
    assert all(not j.any() for j in res.block_joint)
    assert res.individual_ranks[0] == 4  # with no joint part, all signal is individual


def test_all_zero_blocks() -> None:
    res = ajive([torch.zeros(6, 3), torch.zeros(6, 2)])
    assert res.signal_ranks == [0, 0] and res.joint_rank == 0 and res.individual_ranks == [0, 0]
    assert all(not t.any() for t in res.block_joint + res.block_individual)
    assert res.block_joint[0].dtype == torch.float32


def test_zero_signal_with_fixed_joint_rank_warns() -> None:
    x = torch.randn(6, 3, dtype=F64)
    with pytest.warns(RuntimeWarning, match="no signal"):
        res = ajive([x, torch.zeros(6, 3, dtype=F64)], joint_rank=1)
    assert res.joint_rank == 0


def test_signal_rank_checks() -> None:
    x = torch.randn(8, 3, dtype=F64)
    rank1 = torch.outer(torch.randn(8, dtype=F64), torch.randn(3, dtype=F64))
    with pytest.raises(ValueError, match=r"signal_ranks\[0\]=4 must lie in \[0, min\(n, d_k\)=3\]"):
        ajive([x, x], signal_ranks=4)
    with pytest.raises(ValueError, match="2 entries for 3 blocks"):
        ajive([x, x, x], signal_ranks=[1, 1])
    with pytest.warns(RuntimeWarning, match="numerical rank 1; lowered"):
        res = ajive([x, rank1], signal_ranks=2, center=False, n_wedin_samples=10, n_randdir_samples=10)
    assert res.signal_ranks == [2, 1]


def test_option_checks() -> None:
    x = torch.randn(8, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"joint_rank=5 must lie in \[0, 4\]"):
        ajive([x, x], signal_ranks=2, joint_rank=5)
    with pytest.raises(ValueError, match="sample counts must be positive ints"):
        ajive([x, x], n_wedin_samples=0)
    with pytest.raises(ValueError, match="seed must be an int"):
        ajive([x, x], seed=1.5)
    with pytest.raises(ValueError, match="percentiles"):
        ajive([x, x], randdir_percentile=101.0)


# ----------------------------------------------------------------------------- seeds, dtype, device
def test_seeded_and_streams_independent() -> None:
    blocks, _ = synthetic(60, [10, 12, 8], 0.5, 3)
    a = ajive(blocks, seed=7, n_wedin_samples=200, n_randdir_samples=200)
    b = ajive(blocks, seed=7, n_wedin_samples=200, n_randdir_samples=200)
    c = ajive(blocks, seed=8, n_wedin_samples=200, n_randdir_samples=200)
    d = ajive(blocks, seed=7, n_wedin_samples=50, n_randdir_samples=200)
    assert (a.wedin_bound, a.random_direction_bound) == (b.wedin_bound, b.random_direction_bound)
    assert a.wedin_bound != c.wedin_bound and a.random_direction_bound != c.random_direction_bound
    assert d.random_direction_bound == a.random_direction_bound and d.wedin_bound != a.wedin_bound
    # The random-direction law ignores block order; so does the (cached) bound.
    _random_direction_samples.cache_clear()
    e = ajive(blocks[::-1], seed=7, n_wedin_samples=200, n_randdir_samples=200)
    assert e.random_direction_bound == a.random_direction_bound and e.joint_rank == a.joint_rank
    # Negative seeds are taken modulo 2^64 (fedsub.core.seeding), as a run seed of -1 reaches AJIVE.
    f = ajive(blocks, seed=-1, n_wedin_samples=50, n_randdir_samples=50)
    g = ajive(blocks, seed=2**64 - 1, n_wedin_samples=50, n_randdir_samples=50)
    assert (f.wedin_bound, f.random_direction_bound) == (g.wedin_bound, g.random_direction_bound)


def test_float32_input_gives_float32_output_and_same_answer() -> None:
    blocks, _ = synthetic(100, [20, 25, 30], 0.25, 1)
    r64 = ajive(blocks)
    r32 = ajive([x.float() for x in blocks])
    assert r32.joint_basis.dtype == torch.float32 and r32.block_individual[2].dtype == torch.float32
    assert r32.joint_rank == r64.joint_rank == 2
    assert largest_principal_angle(r32.joint_basis, r64.joint_basis) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    blocks, _ = synthetic(100, [20, 25, 30], 0.25, 2)
    cpu = ajive(blocks)
    gpu = ajive([x.float().cuda() for x in blocks])
    assert gpu.joint_basis.device.type == "cuda" and gpu.joint_basis.dtype == torch.float32
    assert gpu.joint_rank == cpu.joint_rank
    assert largest_principal_angle(gpu.joint_basis.cpu(), cpu.joint_basis) < 1e-4
    assert gpu.wedin_bound == pytest.approx(cpu.wedin_bound, rel=0.05)


# ----------------------------------------------------------------------------- batched kernels
def test_kernels_match_lapack() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, 40, generator=g, dtype=F64)
    q = _orthonormalize_rows(x)
    torch.testing.assert_close(q @ q.mT, torch.eye(6, dtype=F64).expand(50, 6, 6), rtol=0, atol=1e-14)
    torch.testing.assert_close((x @ q.mT) @ q, x, rtol=0, atol=1e-12)  # same row space
    for side, width in [(1, 5), (7, 3), (40, 40), (64, 90), (100, 100)]:
        y = torch.randn(30, side, width, generator=g, dtype=F64)
        ref = torch.linalg.eigvalsh(y @ y.mT)[:, -1]
        torch.testing.assert_close(_top_eig_gram(y, g), ref, rtol=1e-12, atol=0)
    alpha, beta = torch.randn(40, 9, generator=g, dtype=F64), torch.randn(40, 8, generator=g, dtype=F64)
    tri = torch.diag_embed(alpha) + torch.diag_embed(beta, 1) + torch.diag_embed(beta, -1)
    torch.testing.assert_close(
        _tridiagonal_top_eig(alpha, beta), torch.linalg.eigvalsh(tri)[:, -1], rtol=1e-14, atol=1e-14
    )


def _direct_randdir(n: int, ranks: tuple[int, ...], count: int, seed: int, omega=None) -> np.ndarray:
    """Reference (mvlearn's procedure): explicit n x r_k Gaussians, QR, stack (each scaled by
    sqrt(omega_k) if given), sigma_max^2."""
    g = torch.Generator().manual_seed(seed)
    bases = [torch.linalg.qr(torch.randn(count, n, r, generator=g, dtype=F64)).Q for r in ranks]
    bases = bases if omega is None else [q * math.sqrt(o) for q, o in zip(bases, omega)]
    return torch.linalg.matrix_norm(torch.cat(bases, dim=2), ord=2).square().numpy()


def _direct_noise_norms(s_perp: torch.Tensor, n_complement: int, n_cols: int, count: int) -> np.ndarray:
    """Reference: a uniform n_complement x n_cols orthonormal W drawn explicitly."""
    g = torch.Generator().manual_seed(11)
    w = torch.linalg.qr(torch.randn(count, n_complement, n_cols, generator=g, dtype=F64)).Q
    return torch.linalg.matrix_norm(s_perp[:, None] * w[:, : s_perp.numel()], ord=2).numpy()


@pytest.mark.parametrize(("n", "ranks"), [(12, (3, 2)), (9, (4, 4, 3)), (6, (2, 2, 2, 2))])
def test_random_direction_sampler_has_the_direct_law(n: int, ranks: tuple[int, ...]) -> None:
    # (12, (3, 2)): R = 5 < n, the Bartlett factor; the others n <= R, a plain Gaussian.
    _random_direction_samples.cache_clear()
    ours = _random_direction_samples(n, ranks, 3000, 0, torch.float64, "cpu").numpy()
    direct = _direct_randdir(n, ranks, 3000, 1)
    assert stats.ks_2samp(ours, direct).pvalue > 0.01
    assert np.quantile(ours, 0.95) == pytest.approx(np.quantile(direct, 0.95), rel=0.03)


@pytest.mark.parametrize(("n_complement", "n_cols"), [(12, 3), (5, 3), (4, 2)])
def test_wedin_noise_sampler_has_the_direct_law(n_complement: int, n_cols: int) -> None:
    # p = 4 explicit rows; the other n_complement - 4 rows as Bartlett (8 > 3), plain (1 <= 3),
    # or none (0).
    s_perp = torch.tensor([3.0, 2.0, 1.5, 0.5], dtype=F64)
    g = torch.Generator().manual_seed(5)
    ours = _noise_norm_samples(s_perp[None], n_complement, n_cols, 3000, g)[0].numpy()
    direct = _direct_noise_norms(s_perp, n_complement, n_cols, 3000)
    assert stats.ks_2samp(ours, direct).pvalue > 0.01


def test_bartlett_factor_gram_moments() -> None:
    # E[T^T T] = n I for Wishart(n, I); 20000 draws put the mean within ~1 % of n.
    g = torch.Generator().manual_seed(2)
    t = _gram_equivalent_gaussian(20000, 30, 4, g, F64, "cpu")
    assert t.shape == (20000, 4, 4) and not t.tril(-1).any()
    mean = (t.mT @ t).mean(0)
    torch.testing.assert_close(mean, 30 * torch.eye(4, dtype=F64), rtol=0, atol=0.6)
    blocks = _orthonormalize_blocks(torch.randn(3, 9, 7, dtype=F64), (3, 2, 2))
    for rows in (blocks[:, :3], blocks[:, 3:5], blocks[:, 5:]):
        torch.testing.assert_close(rows @ rows.mT, torch.eye(rows.shape[1], dtype=F64).expand(3, -1, -1))


# ----------------------------------------------------------------------------- sync_second_moments
def test_sync_identical_moments_returns_the_identical_moment() -> None:
    v = torch.rand(64, 8, generator=torch.Generator().manual_seed(0))
    out, res = sync_second_moments([v, v.clone(), v.clone()], [1.0, 2.0, 3.0])
    assert torch.equal(out, v) and res is None
    out, res = sync_second_moments([v], [5.0])
    assert torch.equal(out, v) and res is None


def test_sync_hand_worked_projection() -> None:
    # V1 columns 10 e1, 3 e2; V2 columns 3 e3, 10 e1: the joint basis is e1, so V_hat keeps row 0
    # of sum_k p_k V_k and zeroes the rest (center=False: mu_k = 0).
    v1 = torch.tensor([[10.0, 0.0], [0.0, 3.0], [0.0, 0.0], [0.0, 0.0]], dtype=F64)
    v2 = torch.tensor([[0.0, 10.0], [0.0, 0.0], [3.0, 0.0], [0.0, 0.0]], dtype=F64)
    out, res = sync_second_moments([v1, v2], [1.0, 3.0], center=False, signal_ranks=2, joint_rank=1)
    assert isinstance(res, AJIVEResult) and res.joint_rank == 1
    expected = torch.tensor([[2.5, 7.5], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-14)


def test_sync_formula_with_centring_and_clamp() -> None:
    # A shared rank-1 pattern plus skewed client noise; seed 10 makes one entry of the unclamped
    # formula negative (the centred projection can undershoot where the pattern is near 0).
    g = torch.Generator().manual_seed(10)
    shared = torch.rand(30, 1, generator=g, dtype=F64) * torch.rand(1, 4, generator=g, dtype=F64)
    moments = [shared + 0.3 * torch.rand(30, 4, generator=g, dtype=F64) ** 4 for _ in range(3)]
    weights = [2.0, 1.0, 1.0]
    out, res = sync_second_moments(moments, weights, signal_ranks=1)
    assert res is not None and res.joint_rank == 1
    u = res.joint_basis
    raw = sum(p * (u @ u.T @ (v - v.mean(0)) + v.mean(0)) for p, v in zip([0.5, 0.25, 0.25], moments))
    assert bool((raw < 0).any())  # the clamp has work to do here
    torch.testing.assert_close(out, raw.clamp(min=0), rtol=0, atol=1e-12)
    assert bool((out >= 0).all())


def test_sync_joint_rank_zero_is_the_weighted_mean() -> None:
    # Constant moments: centring leaves nothing, joint rank 0 -> 0.25 * 1 + 0.75 * 3 = 2.5.
    out, res = sync_second_moments([torch.ones(5, 2), torch.full((5, 2), 3.0)], [1.0, 3.0])
    assert res is not None and res.joint_rank == 0
    torch.testing.assert_close(out, torch.full((5, 2), 2.5), rtol=0, atol=0)


def test_sync_rejects_bad_input() -> None:
    v = torch.rand(5, 2)
    with pytest.raises(ValueError, match="1 weights for 2 moments"):
        sync_second_moments([v, v + 1], [1.0])
    for bad in ([1.0, -1.0], [0.0, 0.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="weights must be finite"):
            sync_second_moments([v, v + 1], bad)
    with pytest.raises(ValueError, match="one shape"):
        sync_second_moments([v, torch.rand(5, 3)], [1.0, 1.0])
    with pytest.raises(ValueError, match="no moments"):
        sync_second_moments([], [])
    bad_v = v.clone()
    bad_v[0, 0] = float("inf")
    with pytest.raises(ValueError, match="block 1 contains NaN or Inf"):
        sync_second_moments([v, bad_v], [1.0, 1.0])


# ----------------------------------------------------------------------------- block weights
def _two_directions() -> list[torch.Tensor]:
    """Noise-free rank-1 blocks X1 = e1 b^T, X2 = u b^T, u = cos(60 deg) e1 + sin(60 deg) e2 (n = 4)."""
    a = math.radians(60.0)
    u = math.cos(a) * _e(4, 0) + math.sin(a) * _e(4, 1)
    b = torch.tensor([1.0, 2.0, 2.0], dtype=F64)
    return [torch.outer(_e(4, 0), b), torch.outer(u, b)]


@pytest.mark.parametrize(
    ("weights", "omega", "phi_deg"),
    [(None, (1.0, 1.0), 30.0), ([3.0, 1.0], (1.5, 0.5), 9.553), ([1.0, 3.0], (0.5, 1.5), 50.447)],
)
def test_block_weights_tilt_the_joint_direction_to_the_heavy_block(weights, omega, phi_deg) -> None:
    # M_w M_w^T = omega_1 e1 e1^T + omega_2 u u^T (a = 60 deg between them): its top eigenvector
    # lies at phi = atan2(omega_2 sin 2a, omega_1 + omega_2 cos 2a) / 2 from e1, with eigenvalue
    # 1 + sqrt((omega_1 - omega_2)^2 / 4 + omega_1 omega_2 cos^2 a) (omega sums to K = 2).
    # Equal weights: the bisector, 30 deg; weights 3 : 1 pull it to 9.55 deg, 1 : 3 to 50.45 deg.
    res = ajive(
        _two_directions(),
        signal_ranks=1,
        center=False,
        joint_rank=1,
        check_identifiability=False,
        block_weights=weights,
    )
    o1, o2 = omega
    phi = math.atan2(o2 * math.sin(math.radians(120.0)), o1 + o2 * math.cos(math.radians(120.0))) / 2
    assert math.degrees(phi) == pytest.approx(phi_deg, abs=1e-3)
    direction = math.cos(phi) * _e(4, 0) + math.sin(phi) * _e(4, 1)
    u = res.joint_basis
    torch.testing.assert_close(u @ u.T, torch.outer(direction, direction), rtol=0, atol=1e-14)
    top = 1 + math.sqrt((o1 - o2) ** 2 / 4 + o1 * o2 * 0.25)
    assert float(res.joint_singular_values[0]) ** 2 == pytest.approx(top, abs=1e-14)


def test_equal_block_weights_are_the_unweighted_ajive_bit_for_bit() -> None:
    blocks, _ = synthetic(60, [10, 12, 8], 0.5, 3)
    plain = ajive(blocks, n_wedin_samples=200, n_randdir_samples=200)
    assert plain.joint_rank == 2 and plain.wedin_bound is not None
    for weights in ([1.0, 1.0, 1.0], [0.1, 0.1, 0.1], [7, 7, 7]):  # 0.1 * 3 / 0.3 != 1 in floats
        same = ajive(blocks, n_wedin_samples=200, n_randdir_samples=200, block_weights=weights)
        assert (same.joint_rank, same.wedin_bound, same.random_direction_bound) == (
            plain.joint_rank,
            plain.wedin_bound,
            plain.random_direction_bound,
        )
        assert torch.equal(same.joint_basis, plain.joint_basis)
        assert all(torch.equal(a, b) for a, b in zip(same.block_joint, plain.block_joint))
    weighted = ajive(blocks, n_wedin_samples=200, n_randdir_samples=200, block_weights=[3.0, 1.0, 1.0])
    assert weighted.wedin_bound != plain.wedin_bound and weighted.random_direction_bound != plain.random_direction_bound


def test_weighted_wedin_statistic_is_k_minus_sum_omega_w_squared() -> None:
    # Block 2 is exactly rank 1 (its w_2 is ~1e-16), block 1 is rank 1 plus noise: the statistic is
    # 2 - omega_1 w_1^2, so its 5th percentile is 2 - omega_1 q95(w_1^2) (linear interpolation is
    # symmetric), and the draws do not depend on the weights: (2 - bound_w) / (2 - bound) = omega_1.
    g = torch.Generator().manual_seed(4)
    s = torch.randn(30, 1, generator=g, dtype=F64)
    x1 = 3 * s @ torch.randn(1, 6, generator=g, dtype=F64) + 1.5 * torch.randn(30, 6, generator=g, dtype=F64)
    x2 = s @ torch.randn(1, 5, generator=g, dtype=F64)
    kwargs = dict(signal_ranks=1, center=False, n_wedin_samples=300, n_randdir_samples=50)
    plain = ajive([x1, x2], **kwargs)
    weighted = ajive([x1, x2], block_weights=[3.0, 1.0], **kwargs)  # omega = (1.5, 0.5)
    assert 2 - plain.wedin_bound > 0.01  # block 1's noise costs something
    assert (2 - weighted.wedin_bound) / (2 - plain.wedin_bound) == pytest.approx(1.5, rel=1e-9)


@pytest.mark.parametrize(("n", "ranks", "omega"), [(12, (3, 2), (1.6, 0.4)), (9, (4, 3, 3), (0.5, 1.5, 1.0))])
def test_weighted_random_direction_sampler_has_the_direct_law(n: int, ranks: tuple[int, ...], omega) -> None:
    _random_direction_samples.cache_clear()
    ours = _random_direction_samples(n, ranks, 3000, 0, F64, "cpu", omega).numpy()
    direct = _direct_randdir(n, ranks, 3000, 1, omega)
    assert stats.ks_2samp(ours, direct).pvalue > 0.01
    assert np.quantile(ours, 0.95) == pytest.approx(np.quantile(direct, 0.95), rel=0.03)
    assert stats.ks_2samp(ours, _direct_randdir(n, ranks, 3000, 1)).pvalue < 1e-6  # not the unweighted law


def test_weighted_random_direction_bound_keeps_each_weight_with_its_block() -> None:
    # Blocks are sorted by rank for the cache; a weight must travel with its block's rank.
    cpu = torch.device("cpu")
    a = _random_direction_bound(12, [2, 3], 400, 95.0, 0, cpu, (0.4, 1.6))
    b = _random_direction_bound(12, [3, 2], 400, 95.0, 0, cpu, (1.6, 0.4))
    c = _random_direction_bound(12, [3, 2], 400, 95.0, 0, cpu, (0.4, 1.6))
    assert a == b and a != c


def test_block_weights_checks() -> None:
    blocks = _two_directions()
    cases = [
        ([1.0], "block_weights has 1 entries for 2 blocks"),
        ([1.0, 0.0], "block_weights must be positive"),
        ([1.0, -2.0], "block_weights must be positive"),
        ([1.0, math.inf], "block_weights must be positive"),
        ([1.0, math.nan], "block_weights must be positive"),
        (["a", 1.0], "block_weights must be a sequence"),
        (3.0, "block_weights must be a sequence"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            ajive(blocks, signal_ranks=1, joint_rank=1, block_weights=bad)
