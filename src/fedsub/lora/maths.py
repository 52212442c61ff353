"""Pure LoRA maths shared by the federated LoRA methods: stacking, slicing, SVD factorisations.

Notation (docs/methods.md): a LoRA pair on W0 (d_out x d_in) is B (d_out x r), A (r x d_in), scale
s = lora_alpha / r, update ΔW = s B A. Every function here takes and returns plain tensors, so the
exact-number tests call them on 3x2 matrices; the method modules only wire them to payloads
(tensor names: fedsub.lora.names; payload plumbing: fedsub.lora.aggregate).

The SVD of a stacked product B_stack A_stack (d_out x k times k x d_in, k = Σ r_k) is taken in
factored form (QR of both factors, SVD of the k x k core): O((d_out + d_in) k²) instead of the
O(d_out d_in min(d_out, d_in)) of a dense SVD, and it never forms the dense d_out x d_in matrix. For
MiniLM's 384 x 1536 MLP weights with 3 clients at r = 8 (k = 24) that is ~1,000x fewer flops.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
from torch import Tensor

from fedsub.core.seeding import torch_generator

Factors = tuple[Tensor, Tensor]  # (B, A) with ΔW = (scale) * B @ A
Split = Literal["symmetric", "orthonormal_a", "orthonormal_b"]

# ---------------------------------------------------------------- stacking and slicing


def stack_factors(pairs: Sequence[Factors], weights: Sequence[float]) -> Factors:
    """FLoRA stacking (Wang et al. 2024, arXiv 2409.05976): B_stack = [B_1 ... B_K] (columns),
    A_stack = [p_1 A_1; ...; p_K A_K] (rows), so B_stack A_stack = Σ p_k B_k A_k exactly, for any
    mix of ranks. Returned in float64 (the products are summed there)."""
    bs = [b.double() for b, _ in pairs]
    as_ = [a.double() * float(p) for (_, a), p in zip(pairs, weights)]
    return torch.cat(bs, dim=1), torch.cat(as_, dim=0)


def slice_rank(b: Tensor, a: Tensor, rank: int) -> Factors:
    """The first `rank` components: B[:, :rank], A[:rank] (a heterogeneous-rank client's share)."""
    return b[:, :rank].contiguous(), a[:rank].contiguous()


def pad_rank(b: Tensor, a: Tensor, rank: int) -> Factors:
    """Zero-pad r-wide factors to `rank` components (B gets zero columns, A zero rows)."""
    extra = rank - b.shape[1]
    if extra < 0:
        raise ValueError(f"cannot pad rank {b.shape[1]} down to {rank}")
    b_pad = torch.cat([b, b.new_zeros(b.shape[0], extra)], dim=1)
    a_pad = torch.cat([a, a.new_zeros(extra, a.shape[1])], dim=0)
    return b_pad, a_pad


# ---------------------------------------------------------------- SVD of a factored product


def factored_svd(b: Tensor, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD U diag(S) Vh of B @ A from its factors (float64), without forming B @ A.

    B = Q_B R_B, Aᵀ = Q_A R_A, so B A = Q_B (R_B R_Aᵀ) Q_Aᵀ and the SVD of the small core gives the
    singular values; U = Q_B U_c, Vh = Vh_c Q_Aᵀ. Returns min(rows of both cores) triplets.
    """
    q_b, r_b = torch.linalg.qr(b.double(), mode="reduced")
    q_a, r_a = torch.linalg.qr(a.double().mT, mode="reduced")
    u_c, s, vh_c = torch.linalg.svd(r_b @ r_a.mT, full_matrices=False)
    return q_b @ u_c, s, vh_c @ q_a.mT


def truncated_svd(b: Tensor, a: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """The top-`rank` SVD of B @ A with exactly `rank` triplets: when the product has fewer (a stack
    narrower than `rank`), U and Vh are zero-padded and S gets zeros, so factors keep their shapes."""
    u, s, vh = factored_svd(b, a)
    return _pad_triplets(u[:, :rank], s[:rank], vh[:rank], rank)


def split_svd(u: Tensor, s: Tensor, vh: Tensor, scale: float, split: Split) -> Factors:
    """LoRA factors (B, A) with scale * B A = U diag(S) Vh (the de-scaling by s is on the factors).

    symmetric (SVD redistribution): B = U √(S/s), A = √(S/s) Vh.
    orthonormal_a (FedSVD, arXiv 2505.12805): A = Vh (orthonormal rows), B = U S / s.
    orthonormal_b (Subspace-Reg, arXiv 2606.22724): B = U (orthonormal columns), A = S Vh / s.
    """
    if split == "symmetric":
        root = torch.sqrt(s.clamp(min=0) / scale)
        return u * root, root[:, None] * vh
    if split == "orthonormal_a":
        return u * (s / scale), vh.clone()
    if split == "orthonormal_b":
        return u.clone(), (s / scale)[:, None] * vh
    raise ValueError(f"unknown split {split!r}")


def rescale_split(b: Tensor, a: Tensor, ratio: float, split: Split) -> Factors:
    """Multiply the product B A by `ratio`, keeping the split's orthonormal factor orthonormal:
    symmetric scales both by √ratio (as the Subspace-Reg authors' code does), orthonormal_a scales B,
    orthonormal_b scales A (so B_g stays an orthonormal basis, the regulariser's reference)."""
    if split == "symmetric":
        root = math.sqrt(ratio)
        return b * root, a * root
    if split == "orthonormal_a":
        return b * ratio, a
    return b, a * ratio


def clip_factor(norm: float, max_norm: float | None) -> float:
    """Frobenius clip: the factor c = min(1, max_norm / norm) that brings ‖ΔW‖ down to max_norm."""
    if max_norm is None or norm <= max_norm:
        return 1.0
    return max_norm / norm


def svd_refactor(
    b_stack: Tensor,
    a_stack: Tensor,
    rank: int,
    scale: float,
    split: Split,
    max_norm: float | None = None,
    rescale: bool = False,
) -> Factors:
    """Re-factor the aggregate ΔW̄ = scale * B_stack A_stack into rank-`rank` LoRA factors.

    The pipeline of SVD redistribution and Subspace-Reg's server (docs/methods.md): optional Frobenius
    clip of ΔW̄ (to `max_norm`, on the effective update, per layer), rank-r SVD, split by `split`,
    optional norm-restoring rescale so that ‖scale * B A‖ equals the (clipped) ‖ΔW̄‖ that truncation
    shrank. Norms come from the singular values of the full factored SVD (no dense matrix).
    """
    u, s, vh = factored_svd(b_stack, a_stack)
    s = s * scale  # singular values of the effective update ΔW̄
    full_norm = float(torch.linalg.vector_norm(s))
    s = s * clip_factor(full_norm, max_norm)
    target = float(torch.linalg.vector_norm(s))
    u, s, vh = _pad_triplets(u[:, :rank], s[:rank], vh[:rank], rank)
    b, a = split_svd(u, s, vh, scale, split)
    kept = float(torch.linalg.vector_norm(s))
    if rescale and kept > 0.0:
        b, a = rescale_split(b, a, target / kept, split)
    return b, a


def _pad_triplets(u: Tensor, s: Tensor, vh: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    missing = rank - s.numel()
    if missing <= 0:
        return u, s, vh
    return (
        torch.cat([u, u.new_zeros(u.shape[0], missing)], dim=1),
        torch.cat([s, s.new_zeros(missing)]),
        torch.cat([vh, vh.new_zeros(missing, vh.shape[1])], dim=0),
    )


# ---------------------------------------------------------------- per-method server maths


def flexlora_factors(b_stack: Tensor, a_stack: Tensor, ranks: Sequence[int], scale: float) -> list[Factors]:
    """FlexLoRA (Bai et al. 2024, arXiv 2402.11505): from ΔW̄ = s B_stack A_stack, client k gets the
    rank-r_k truncated SVD, B_k = U[:, :r_k] S[:r_k] / s, A_k = Vh[:r_k]. One SVD serves every rank
    (the truncations are nested), which is why the server stores only the max-rank factors."""
    u, s, vh = truncated_svd(b_stack, a_stack, max(ranks))
    b, a = split_svd(u, s * scale, vh, scale, "orthonormal_a")  # singular values of ΔW̄ are s·S
    return [slice_rank(b, a, r) for r in ranks]


def fedsvd_factors(b_mean: Tensor, a_prev: Tensor, rank: int) -> Factors:
    """FedSVD (arXiv 2505.12805): M = B̄ A_prev, rank-r SVD, A ← Vh_r (orthonormal rows),
    B ← U_r S_r. M has rank ≤ r, so B A = M exactly (the aggregated product is preserved)."""
    u, s, vh = truncated_svd(b_mean, a_prev, rank)
    return u * s, vh


def merge_update(weight: Tensor, b_stack: Tensor, a_stack: Tensor, scale: float) -> Tensor:
    """FLoRA's server merge: W ← W + s B_stack A_stack (computed in float64, cast back)."""
    return (weight.double() + scale * (b_stack.double() @ a_stack.double())).to(weight.dtype)


def fresh_lora_a(rows: int, cols: int, seed: int) -> Tensor:
    """A new LoRA A as PEFT initialises it (kaiming_uniform with a = √5, i.e. U(-1/√d_in, 1/√d_in)),
    from a CPU generator so a seed gives the same A on every device (FLoRA's fresh adapters)."""
    gen = torch_generator(seed)
    bound = 1.0 / math.sqrt(cols)
    return (torch.rand(rows, cols, generator=gen, dtype=torch.float64) * 2 - 1).mul_(bound).float()


# ---------------------------------------------------------------- Subspace-Reg client regulariser


def subspace_penalty(
    factors: Sequence[Factors],
    references: Sequence[Factors],
    scale: float,
    mu: float,
    alpha: float,
    lam: float,
) -> Tensor:
    """Subspace-Reg's client regulariser (Senarath et al., arXiv 2606.22724), mean over the L layers:

        (1/L) Σ_l [ μ/2 ‖s B A − s B_g A_g‖² + α/2 ‖B − B_g‖² + λ/2 (‖A‖² + ‖B‖²) ]

    with (B_g, A_g) the global factors at round start. The mean over layers of the whole bracket is
    what the authors' code does (`_regularization_term` divides the per-layer sum by the pair count).
    The first term is evaluated in factored form, ‖BA − B_gA_g‖² = tr(BᵀB AAᵀ) − 2 tr(B_gᵀB AA_gᵀ)
    + tr(B_gᵀB_g A_gA_gᵀ), with r x r matrices only: O(r² (d_in + d_out)) per layer and step
    instead of the O(r d_in d_out) of the dense product.
    """
    if not factors:
        raise ValueError("subspace_penalty over no layers")
    total = factors[0][0].new_zeros(())
    for (b, a), (b_g, a_g) in zip(factors, references, strict=True):
        # <X, Y> = tr(XᵀY); for X = B A, Y = B' A' it is the sum of (BᵀB') ∘ (A A'ᵀ): r x r only.
        gap = (
            ((b.mT @ b) * (a @ a.mT)).sum()
            - 2 * ((b.mT @ b_g) * (a @ a_g.mT)).sum()
            + ((b_g.mT @ b_g) * (a_g @ a_g.mT)).sum()
        )
        total = total + 0.5 * mu * scale**2 * gap
        total = total + 0.5 * alpha * (b - b_g).square().sum()
        total = total + 0.5 * lam * (a.square().sum() + b.square().sum())
    return total / len(factors)
