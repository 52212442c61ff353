"""AJIVE's Monte-Carlo bounds (Feng, Jiang, Hannig & Marron 2018, Sec. 3.2): Wedin and random-direction.

Batched, seeded samplers split out of ajive.py: draws that matter only through their Gram matrix use a
smaller Bartlett factor, small eigenproblems use batched Lanczos and Sturm bisection (no Python loop
over samples).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fedsub.core.seeding import derive_seed64, torch_generator

if TYPE_CHECKING:
    from fedsub.linalg.ajive import _BlockSVD

# Lanczos steps for lambda_max: exact (to rounding) when the Gram side is at most this.
_LANCZOS_STEPS = 64
# The bounds are percentiles of 1000 draws (Monte-Carlo error ~1e-2 relative); float32 rounding
# (~1e-7) is invisible there and halves the sampling time on CPU (measured 0.6 s vs 1.5 s, K=10).
_SAMPLE_DTYPE = torch.float32
# Elements per sampling chunk: bounds memory at ~64 MiB of float64 whatever n, K and S are.
_CHUNK_ELEMENTS = 1 << 23
_WEDIN_STREAM, _RANDDIR_STREAM = 1, 2


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
    return torch_generator(derive_seed64(seed, stream), device)


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
def _noise_norm_samples(s_perp: Tensor, n_complement: int, n_cols: int, n_samples: int, gen: torch.Generator) -> Tensor:
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
    svds: list[_BlockSVD],
    ranks: list[int],
    xs: list[Tensor],
    n_samples: int,
    pct: float,
    seed: int,
    omega: tuple[float, ...] | None = None,
) -> float:
    """5th percentile of K - sum_k w_k^2, w_k = min(max(||X_k^T Q_U||, ||X_k Q_V||) / sigma_r~, 1).

    Weighted (omega, mean 1): K - sum_k omega_k w_k^2, since a joint u has
    ||M_w^T u||^2 = sum_k omega_k cos^2(theta_k) >= sum_k omega_k (1 - w_k^2)."""
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
    lost = w.square() if omega is None else w.square() * w.new_tensor(omega)[:, None]
    return float(torch.quantile(len(xs) - lost.sum(0), pct / 100.0))


def _random_direction_bound(
    n: int,
    ranks: list[int],
    n_samples: int,
    pct: float,
    seed: int,
    device: torch.device,
    omega: tuple[float, ...] | None = None,
) -> float:
    """95th percentile of sigma_max^2 of [Q_1 ... Q_K], Q_k uniform n x r~_k orthonormal (each
    scaled by sqrt(omega_k) when weighted)."""
    # Sorted ranks: the law ignores block order, so the bound (and the cache) does too; weights
    # are sorted with their ranks (blocks of one rank are exchangeable, so their order is free).
    if omega is None:
        key = (n, tuple(sorted(ranks, reverse=True)), n_samples, seed, _SAMPLE_DTYPE, str(device))
    else:
        pairs = sorted(zip(ranks, omega), key=lambda ro: (-ro[0], ro[1]))
        key = (n, tuple(r for r, _ in pairs), n_samples, seed, _SAMPLE_DTYPE, str(device), tuple(o for _, o in pairs))
    return float(torch.quantile(_random_direction_samples(*key), pct / 100.0))


@functools.lru_cache(maxsize=32)
def _random_direction_samples(
    n: int,
    ranks: tuple[int, ...],
    n_samples: int,
    seed: int,
    dtype: torch.dtype,
    device: str,
    omega: tuple[float, ...] | None = None,
) -> Tensor:
    """Cached: a pure function of its arguments, and the costliest step for large sum(ranks).

    sigma(M) depends on the Gaussians only through their joint Gram matrix, so for n > R = sum r_k
    an R x R Bartlett factor replaces the n x R Gaussian (cost independent of n). ``omega``, one
    weight per entry of the (descending) ``ranks``, scales block k's rows by sqrt(omega_k).
    """
    gen = _generator(seed, _RANDDIR_STREAM, torch.device(device))
    total = sum(ranks)
    scale = None
    if omega is not None:
        roots = torch.tensor(omega, dtype=dtype, device=torch.device(device)).sqrt()
        scale = roots.repeat_interleave(torch.tensor(ranks, device=torch.device(device)))[:, None]
    out = []
    for size in _chunks(n_samples, min(n, total) * total):
        g = _gram_equivalent_gaussian(size, n, total, gen, dtype, torch.device(device))
        rows = _orthonormalize_blocks(g, ranks)
        out.append(_top_eig_gram(rows if scale is None else rows * scale, gen))
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
