"""GaLore projectors as small pure functions (Zhao et al. 2024, "GaLore", arXiv 2403.03507).

A GaLore-managed matrix W (m x n) is projected on one side, chosen by shape (docs/methods.md):

- ``right`` when m >= n: P is r x n with orthonormal rows, ``g~ = G P^T`` (m x r),
  back-projection ``N P`` (m x n);
- ``left`` when m < n: P is m x r with orthonormal columns, ``g~ = P^T G`` (r x n),
  back-projection ``P N``.

Projecting the smaller dimension keeps the optimizer state at max(m, n) x r. These functions are
shared by the client optimizer (:mod:`fedsub.optim.galore`) and by a server that builds or
aggregates projectors (FedGaLore).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from fedsub.linalg.svd import orthonormalize, randomized_svd, seeded_gaussian

Side = Literal["right", "left"]

__all__ = [
    "Side",
    "choose_side",
    "effective_rank",
    "projector_shape",
    "moment_shape",
    "svd_projector",
    "rsvd_projector",
    "random_projector",
    "project",
    "project_back",
    "add_projected_back_",
    "transport_moments",
]


def choose_side(shape: tuple[int, int] | torch.Size) -> Side:
    """``right`` if m >= n else ``left`` (GaLore's 'std' rule: project the shorter side)."""
    m, n = shape
    return "right" if m >= n else "left"


def effective_rank(shape: tuple[int, int] | torch.Size, rank: int) -> int:
    """Rank actually used: ``min(rank, m, n)`` (a larger rank has no more directions to keep)."""
    return min(int(rank), *shape)


def projector_shape(shape: tuple[int, int] | torch.Size, rank: int) -> tuple[int, int]:
    """Shape of P for a matrix of ``shape``: r x n (right side) or m x r (left side)."""
    m, n = shape
    r = effective_rank(shape, rank)
    return (r, n) if choose_side(shape) == "right" else (m, r)


def moment_shape(shape: tuple[int, int] | torch.Size, rank: int) -> tuple[int, int]:
    """Shape of the projected gradient and of both Adam moments: m x r (right) or r x n (left)."""
    m, n = shape
    r = effective_rank(shape, rank)
    return (m, r) if choose_side(shape) == "right" else (r, n)


def _svd_dtype(dtype: torch.dtype) -> torch.dtype:
    """LAPACK/cuSOLVER have no bf16/fp16 SVD: factorise low precision in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _from_factors(u: Tensor, vh: Tensor, side: Side, rank: int, dtype: torch.dtype) -> Tensor:
    """The first r rows of Vh (right) or columns of U (left), as a compact tensor of their own: a
    slice would keep all of U or Vh alive (a k x k or m x k buffer for an r-wide P; LAPACK's are
    column-major, so the slice is not even dense) in every optimizer and client state holding P."""
    p = vh[:rank] if side == "right" else u[:, :rank]
    return p.to(dtype).clone(memory_format=torch.contiguous_format)


def svd_projector(grad: Tensor, rank: int, *, dtype: torch.dtype | None = None) -> Tensor:
    """Top-r singular vectors of ``grad`` on its projection side (exact SVD, as GaLore).

    Right side: the first r rows of Vh; left side: the first r columns of U. ``dtype`` defaults
    to the gradient's (computed in float32 for 16-bit gradients); the device is the gradient's.
    """
    side = choose_side(grad.shape)
    r = effective_rank(grad.shape, rank)
    u, _, vh = torch.linalg.svd(grad.to(_svd_dtype(grad.dtype)), full_matrices=False)
    return _from_factors(u, vh, side, r, dtype or grad.dtype)


def rsvd_projector(
    grad: Tensor,
    rank: int,
    *,
    oversampling: int = 10,
    power_iters: int = 2,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Like :func:`svd_projector` but via randomized SVD (see :func:`fedsub.linalg.svd.randomized_svd`)."""
    side = choose_side(grad.shape)
    r = effective_rank(grad.shape, rank)
    a = grad.to(_svd_dtype(grad.dtype))
    u, _, vh = randomized_svd(a, r, oversampling=oversampling, power_iters=power_iters, seed=seed)
    return _from_factors(u, vh, side, r, dtype or grad.dtype)


def random_projector(
    shape: tuple[int, int] | torch.Size,
    rank: int,
    seed: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Orthonormalised Gaussian projector that depends only on ``(shape, rank, seed)``.

    Built in float64 on a CPU generator (QR with a sign convention), then cast and moved, so every
    client with the same seed holds the same P and no bytes need to be sent (FedGaLore 'random').
    """
    m, n = shape
    r = effective_rank(shape, rank)
    length = n if choose_side(shape) == "right" else m
    q = orthonormalize(seeded_gaussian((length, r), seed, dtype=torch.float64))
    p = q.mT if choose_side(shape) == "right" else q
    return p.contiguous().to(device=device, dtype=dtype)


def _compute_dtype(big: Tensor, state_dtype: torch.dtype) -> torch.dtype:
    """Dtype for a matmul with an m x n tensor ``big`` (gradient or weight).

    On accelerators, the big tensor's own dtype: bf16 GEMMs run on tensor cores and upcasting
    m x n would cost a full copy (the official GaLore also casts P down). On CPU, the state dtype:
    bf16 GEMMs there are 5-10x slower than an upcast plus float32 GEMM (measured, 1536 x 384).
    """
    return big.dtype if big.device.type != "cpu" else state_dtype


def project(grad: Tensor, p: Tensor, side: Side) -> Tensor:
    """Projected gradient: ``G P^T`` (right) or ``P^T G`` (left), returned in P's dtype."""
    dtype = _compute_dtype(grad, p.dtype)
    g, pp = grad.to(dtype), p.to(dtype)
    low = g @ pp.mT if side == "right" else pp.mT @ g
    return low.to(p.dtype)


def project_back(low: Tensor, p: Tensor, side: Side) -> Tensor:
    """Back-projection to the full m x n shape: ``N P`` (right) or ``P N`` (left)."""
    return low @ p if side == "right" else p @ low


def add_projected_back_(
    weight: Tensor, low: Tensor, p: Tensor, side: Side, *, alpha: float, beta: float = 1.0
) -> Tensor:
    """In place ``W <- beta * W + alpha * project_back(low, P)``.

    When the matmul can run in W's dtype this is one fused ``addmm_``: a single pass over W
    instead of three (scale, matmul into a temporary, add). A 16-bit W on CPU gets a float32
    product added in place (see :func:`_compute_dtype`).
    """
    dtype = _compute_dtype(weight, low.dtype)
    if dtype != weight.dtype:
        update = project_back(low.to(dtype), p.to(dtype), side)
        return weight.mul_(beta).add_(update, alpha=alpha)
    low, p = low.to(dtype), p.to(dtype)
    if side == "right":
        return weight.addmm_(low, p, beta=beta, alpha=alpha)
    return weight.addmm_(p, low, beta=beta, alpha=alpha)


def transport_moments(
    exp_avg: Tensor, exp_avg_sq: Tensor, p_old: Tensor, p_new: Tensor, side: Side, *, outside: bool = True
) -> tuple[Tensor, Tensor]:
    """Carry Adam moments from span(P_old) to span(P_new) (FedGaLore, docs/methods.md point 6).

    Right side: Q = P_old P_new^T (r x r), m_new = m_old Q exactly (a gradient projected on P_old
    re-expressed on P_new), v_new = v_old (Q o Q), the diagonal approximation (v is an elementwise
    second moment, which a rotation does not map exactly). Left side is the transpose:
    Q = P_old^T P_new, m_new = Q^T m_old, v_new = (Q o Q)^T v_old.

    The diagonal map alone is unsafe when span(P_new) leaves span(P_old): new direction j keeps
    only the share c_j = sum_i Q_ij^2 of its energy (about r / n = 8 / 384 = 2% for a fresh random
    P on MiniLM), so v_new ~ 0.02 v and the next steps are ~7x too large (1 / sqrt(0.02)). With
    ``outside`` (default) the missing share is filled with the row's mean old energy per direction:
    v_new[:, j] += (1 - c_j) mean_i v_old[:, i], which is v_old for a one-direction moment and
    leaves a rotation within span(P_old) (c_j = 1) exact.
    """
    if side == "right":
        q = p_old @ p_new.mT
        v_new = exp_avg_sq @ (q * q)
        if outside:
            v_new = v_new + exp_avg_sq.mean(dim=1, keepdim=True) * (1 - (q * q).sum(dim=0)).clamp_min(0)
        return exp_avg @ q, v_new
    q = p_old.mT @ p_new
    v_new = (q * q).mT @ exp_avg_sq
    if outside:
        v_new = v_new + (1 - (q * q).sum(dim=0)).clamp_min(0)[:, None] * exp_avg_sq.mean(dim=0, keepdim=True)
    return q.mT @ exp_avg, v_new
