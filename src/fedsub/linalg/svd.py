"""SVD helpers: seeded Gaussian sketches, randomized SVD and principal angles.

Randomized SVD follows Halko, Martinsson and Tropp (2011, "Finding structure with randomness",
Algorithms 4.3/4.4 and 5.1). GaLore (Zhao et al. 2024, arXiv 2403.03507) refreshes its projector from
the top singular vectors of a gradient; a randomized SVD gives the same subspace within a tolerance for
O(m n k) instead of O(m n min(m, n)) work. Principal angles (Björck and Golub 1973) measure how close
two subspaces are, e.g. an rsvd projector versus the exact one.

All functions are pure: same inputs (and seed) give the same outputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedsub.core.seeding import torch_generator

__all__ = [
    "seeded_gaussian",
    "orthonormalize",
    "randomized_svd",
    "principal_angles",
    "largest_principal_angle",
]


def seeded_gaussian(
    shape: tuple[int, ...],
    seed: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Standard normal tensor that depends only on ``(shape, seed)``.

    Drawn in float64 on a CPU generator and then cast and moved, so two processes (or a CPU
    client and a GPU client) obtain bit-identical values: CUDA generators produce other streams.
    """
    gen = torch_generator(seed)
    sample = torch.randn(shape, generator=gen, dtype=torch.float64)
    return sample.to(device=device, dtype=dtype)


def orthonormalize(a: Tensor) -> Tensor:
    """Orthonormal basis of the columns of ``a`` (tall, full column rank) via reduced QR.

    Column signs are fixed so that diag(R) > 0: QR's sign convention is otherwise backend
    dependent, and a seeded projector must be identical everywhere.
    """
    q, r = torch.linalg.qr(a, mode="reduced")
    signs = torch.sign(torch.diagonal(r))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return q * signs


def _range_finder(a: Tensor, k: int, power_iters: int, seed: int) -> Tensor:
    """Orthonormal m x k basis Q approximating the dominant column space of ``a`` (Halko Alg. 4.4).

    Each power iteration re-orthonormalises both half-steps: without it, float32 loses the smaller
    retained directions after one or two iterations (their scale shrinks by (s_k / s_1)^2 per pass).
    """
    omega = seeded_gaussian((a.shape[1], k), seed, dtype=a.dtype, device=a.device)
    q = torch.linalg.qr(a @ omega, mode="reduced").Q
    for _ in range(power_iters):
        z = torch.linalg.qr(a.mT @ q, mode="reduced").Q
        q = torch.linalg.qr(a @ z, mode="reduced").Q
    return q


def randomized_svd(
    a: Tensor,
    rank: int,
    *,
    oversampling: int = 10,
    power_iters: int = 2,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Truncated SVD ``a ~ U diag(S) Vh`` of rank ``rank`` by randomized range finding.

    Args:
        a: m x n matrix (float32/float64; cast it first if lower precision).
        rank: number of singular triplets returned (clamped to min(m, n)).
        oversampling: extra sketch columns; 5-10 is Halko's recommendation.
        power_iters: subspace iterations; each sharpens a slow spectral decay.
        seed: seed of the Gaussian test matrix (see :func:`seeded_gaussian`).

    Returns:
        ``U`` (m x rank), ``S`` (rank,), ``Vh`` (rank x n), singular values descending.
    """
    m, n = a.shape
    rank = min(rank, m, n)
    k = min(rank + oversampling, m, n)
    q = _range_finder(a, k, power_iters, seed)
    u_small, s, vh = torch.linalg.svd(q.mT @ a, full_matrices=False)
    return (q @ u_small)[:, :rank], s[:rank], vh[:rank]


def principal_angles(a: Tensor, b: Tensor) -> Tensor:
    """Principal angles (radians, ascending) between the column spaces of ``a`` and ``b``.

    Both matrices share their row count; their column counts may differ (min of the two angles
    are returned). Computed in float64. Small angles come from the sines and large ones from the
    cosines (Björck and Golub): arccos alone loses all digits below ~1e-8 rad (sqrt of eps).
    """
    qa = orthonormalize(a.to(torch.float64))
    qb = orthonormalize(b.to(torch.float64))
    if qa.shape[1] < qb.shape[1]:
        qa, qb = qb, qa
    cross = qa.mT @ qb
    cos = torch.linalg.svdvals(cross).clamp(max=1.0)  # descending -> angles ascending
    sin = torch.linalg.svdvals(qb - qa @ cross).flip(0).clamp(max=1.0)  # ascending
    return torch.where(cos > 1.0 / math.sqrt(2.0), torch.arcsin(sin), torch.arccos(cos))


def largest_principal_angle(a: Tensor, b: Tensor) -> float:
    """The largest principal angle between span(a) and span(b), in radians (0 = same subspace)."""
    return float(principal_angles(a, b).max())
