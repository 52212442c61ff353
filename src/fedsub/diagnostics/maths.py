"""Subspace diagnostics of a federated round (docs/methods.md, Subspace-Reg; arXiv 2606.22724).

Inputs per LoRA layer l: each client's factors (B_k, A_k) with ΔW_k = s B_k A_k, the FedAvg weights
p_k, and the update the server now holds in factored form (B_agg, A_agg). ΔW_k is the client's whole
adapter product after its round (its LoRA update from W0, as the authors' code measures it; for
flora, whose adapters start fresh, the round's update). ΔW̄ = Σ p_k ΔW_k is their exact mean (what
FedAvg of full weights would give), not the server's possibly re-factored or biased version.

- basis overlap: for each (layer, client), ‖Q_gᵀ Q_k‖_F² / r_k, averaged. Q_k is an orthonormal basis
  of span(B_k) (r_k its numerical rank, = r for a full-rank B_k); Q_g holds the top-r left singular
  vectors of the server's update s B_agg A_agg (exactly span(B_g) for the SVD methods, span(avg B)
  for fedit; for flora / flexlora the best rank-r summary of the aggregate). 1 iff span(B_k) ⊆ span(Q_g).
  `diag_basis_overlap_sqrt` is the mean of the square roots, the number the authors' code reports
  (their published 0.99998 vs 0.958 are on that scale).
- cancellation ratio: ‖ΔW̄‖ / Σ p_k ‖ΔW_k‖, norms over all layers' entries together (1 = no
  cancellation, 0 = the client updates cancel out).
- client-global cosine: mean_k cos(ΔW_k, ΔW̄); pairwise cosine: mean_{i<j} cos(ΔW_i, ΔW_j); each
  update flattened over all layers (as the authors' code does). A zero vector gives cosine 0; a
  round with one client gives pairwise cosine 1.
- rank: numerical rank of ΔW̄ per layer (mean and max over layers): singular values above
  RANK_RTOL · max(σ_max, Σ p_k ‖ΔW_k‖). It grows to Σ r_k when clients disagree (rank inflation);
  `diag_truncation_energy` is the share of ‖ΔW̄‖² beyond the top r singular values, what a rank-r
  re-factorisation drops.

Cost: nothing dense. The inner products come from r x r matrices, ⟨B_iA_i, B_jA_j⟩ = Σ (B_iᵀB_j) ∘
(A_iA_jᵀ); singular values of ΔW̄ from the factored SVD of the stacked factors (fedsub.lora.maths).

Dense methods (fedftg, fedavg_full; `dense_diagnostics`): ΔW_k = W_k − W_t, the round's update, per
trained matrix; the head is left out, as the LoRA diagnostics leave it out (they see LoRA layers only),
and so are biases. Same cancellation, cosines, rank rule; truncation energy at fedftg's rank (fedavg_full
has no rank and reports none). No basis overlap: a dense update has no B; a client basis would need
a truncation rank fedavg_full does not have (its ΔW̄ has full rank, 32 of 32 on the tiny model) and
one SVD per client and matrix (8 x 36 of them on MiniLM, against one per matrix here).
FedGaLore (`factored_diagnostics`): the same numbers from its r-wide uploads R_k, exactly.
Their ΔW_k is the round's update, the LoRA methods' (flora aside) the whole adapter since W0: a
LoRA rank counts every round so far, a dense / FedGaLore rank this round's only.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import Tensor

from fedsub.lora.maths import Factors, factored_svd, stack_factors

# Float32 resolution is ~1.2e-7 of the largest entry: components 10x below it are storage noise.
RANK_RTOL = 1e-6


def update_gram(pairs: Sequence[Factors]) -> Tensor:
    """K x K Gram matrix G_ij = ⟨B_i A_i, B_j A_j⟩_F of one layer's client updates (float64)."""
    bs = [b.double() for b, _ in pairs]
    as_ = [a.double() for _, a in pairs]
    k = len(pairs)
    gram = torch.zeros(k, k, dtype=torch.float64)
    for i in range(k):
        for j in range(i, k):
            gram[i, j] = gram[j, i] = ((bs[i].mT @ bs[j]) * (as_[i] @ as_[j].mT)).sum()
    return gram


def _safe_ratio(num: float, den: float) -> float:
    return num / den if den > 0.0 else 0.0


def update_geometry(gram: Tensor, weights: Sequence[float]) -> dict[str, float]:
    """Cancellation ratio and cosines from the Gram matrix of the (flattened) client updates."""
    p = torch.tensor(list(weights), dtype=torch.float64)
    norms = gram.diagonal().clamp(min=0).sqrt()
    mean_norm = math.sqrt(max(float(p @ gram @ p), 0.0))
    with_mean = gram @ p  # ⟨ΔW_k, ΔW̄⟩
    k = len(p)
    client_global = [_safe_ratio(float(with_mean[i]), float(norms[i]) * mean_norm) for i in range(k)]
    pairs = [_safe_ratio(float(gram[i, j]), float(norms[i] * norms[j])) for i in range(k) for j in range(i + 1, k)]
    return {
        "diag_cancellation_ratio": _safe_ratio(mean_norm, float(p @ norms)),
        "diag_cos_client_global": sum(client_global) / k,
        "diag_cos_pairwise": sum(pairs) / len(pairs) if pairs else 1.0,
    }


def numerical_rank(singular_values: Tensor, rtol: float = RANK_RTOL, reference: float = 0.0) -> int:
    """Number of singular values above rtol * max(σ_max, reference) (0 for a zero matrix). A reference
    scale (the clients' update norm) keeps the rounding noise of a cancelled aggregate from counting."""
    if singular_values.numel() == 0:
        return 0
    top = max(float(singular_values.max()), reference)
    return int((singular_values > rtol * top).sum()) if top > 0 else 0


def column_basis(b: Tensor, rtol: float = RANK_RTOL) -> Tensor:
    """Orthonormal basis of span(B) (left singular vectors of its numerical rank)."""
    u, s, _ = torch.linalg.svd(b.double(), full_matrices=False)
    return u[:, : numerical_rank(s, rtol)]


def reference_basis(b: Tensor, a: Tensor, rank: int, rtol: float = RANK_RTOL) -> Tensor:
    """Top-`rank` left singular vectors of B A (fewer if its numerical rank is lower)."""
    u, s, _ = factored_svd(b, a)
    return u[:, : min(rank, numerical_rank(s, rtol))]


def basis_overlap(q_ref: Tensor, q_client: Tensor) -> float | None:
    """‖Q_refᵀ Q_k‖_F² / r_k in [0, 1]; None when the client's basis is empty (B_k = 0)."""
    if q_client.shape[1] == 0:
        return None
    return float((q_ref.mT @ q_client).square().sum()) / q_client.shape[1]


def spectrum_summary(s: Tensor, rank: int, rtol: float, reference: float) -> tuple[int, float]:
    """(numerical rank, share of Σ σ² beyond the top `rank` singular values) of one ΔW̄."""
    energy = s.square()
    layer_rank = numerical_rank(s, rtol, reference)
    return layer_rank, _safe_ratio(float(energy[rank:].sum()), float(energy.sum())) if layer_rank else 0.0


def layer_spectrum(
    pairs: Sequence[Factors], weights: Sequence[float], rank: int, rtol: float, reference: float
) -> tuple[int, float]:
    """(numerical rank of ΔW̄, share of ‖ΔW̄‖² beyond its top `rank` singular values)."""
    return spectrum_summary(factored_svd(*stack_factors(pairs, weights))[1], rank, rtol, reference)


def lora_diagnostics(
    clients: Sequence[Sequence[Factors]],
    weights: Sequence[float],
    aggregated: Sequence[Factors],
    rank: int,
    rtol: float = RANK_RTOL,
) -> dict[str, float]:
    """All diagnostics of one round. clients[l][k] = (B_k, A_k) of layer l with ΔW_k = B_k A_k (fold the
    LoRA scale into B); aggregated[l] = the server's update of layer l as factors; `weights` = p_k."""
    if not clients:
        return {}
    grams = [update_gram(layer) for layer in clients]
    p = torch.tensor(list(weights), dtype=torch.float64)
    overlaps, ranks, truncated = [], [], []
    for layer, gram, (b_agg, a_agg) in zip(clients, grams, aggregated, strict=True):
        q_ref = reference_basis(b_agg, a_agg, rank, rtol)
        overlaps += [basis_overlap(q_ref, column_basis(b, rtol)) for b, _ in layer]
        client_norm = float(p @ gram.diagonal().clamp(min=0).sqrt())  # Σ p_k ‖ΔW_k‖ of this layer
        layer_rank, energy = layer_spectrum(layer, weights, rank, rtol, client_norm)
        ranks.append(layer_rank)
        truncated.append(energy)
    overlaps = [o for o in overlaps if o is not None]
    return {
        "diag_basis_overlap": sum(overlaps) / len(overlaps) if overlaps else 0.0,
        "diag_basis_overlap_sqrt": sum(math.sqrt(o) for o in overlaps) / len(overlaps) if overlaps else 0.0,
        **update_geometry(sum(grams), weights),
        "diag_rank_mean": sum(ranks) / len(ranks),
        "diag_rank_max": float(max(ranks)),
        "diag_truncation_energy": sum(truncated) / len(truncated),
    }


# ---------------------------------------------------------------- dense and GaLore-factored updates


def dense_diagnostics(
    clients: Iterable[Sequence[Tensor]], weights: Sequence[float], rank: int | None = None, rtol: float = RANK_RTOL
) -> dict[str, float]:
    """The diagnostics of dense client updates, matrix by matrix: clients[l][k] = ΔW_k of matrix l
    (a conv kernel is read as out x rest). Cosines and cancellation over all matrices' entries (the
    summed Gram), rank of ΔW̄ = Σ p_k ΔW_k per matrix (float64 svdvals: float32's ~1e-7 rounding of
    the SVD itself sits next to RANK_RTOL), truncation energy at `rank` when the method has one.
    `clients` may be a generator: one matrix's K float64 copies are held at a time (MiniLM's
    384 x 1536 MLP weights, 8 clients: 38 MB; all 36 matrices at once would be 680 MB)."""
    p = torch.tensor(list(weights), dtype=torch.float64)
    gram, ranks, truncated = None, [], []
    for layer in clients:
        flat = torch.stack([d.double().flatten() for d in layer])  # K x (m n)
        layer_gram = flat @ flat.mT
        gram = layer_gram if gram is None else gram + layer_gram
        s = torch.linalg.svdvals((p @ flat).reshape(layer[0].shape[0], -1))
        client_norm = float(p @ layer_gram.diagonal().clamp(min=0).sqrt())  # Σ p_k ‖ΔW_k‖ of this matrix
        layer_rank, energy = spectrum_summary(s, rank or 0, rtol, client_norm)
        ranks.append(layer_rank)
        truncated.append(energy)
    if gram is None:
        return {}
    metrics = {
        **update_geometry(gram, weights),
        "diag_rank_mean": sum(ranks) / len(ranks),
        "diag_rank_max": float(max(ranks)),
    }
    if rank is not None:
        metrics["diag_truncation_energy"] = sum(truncated) / len(truncated)
    return metrics


def factored_diagnostics(r_factors: Iterable[Sequence[Tensor]], weights: Sequence[float]) -> dict[str, float]:
    """FedGaLore's diagnostics in r-space: r_factors[l][k] = R_k of matrix l, ΔW_k = R_k P (right,
    P: r x n with orthonormal rows) or P R_k (left, P: m x r, orthonormal columns), P shared by the
    round's clients. Then ⟨R_i P, R_j P⟩ = tr(R_i P Pᵀ R_jᵀ) = ⟨R_i, R_j⟩ and R̄ P = (Σ p_k R_k) P has
    R̄'s singular values, so the dense diagnostics of the R_k are those of the updates, at m x r cost
    (MiniLM, r = 8: 48x less than the 384 x 1536 matrices). The decay term (c_k - 1) W_t is left out:
    0 at weight decay 0 (our presets); otherwise a full-rank shrink of W_t common to every client
    that took the same steps, which would make every rank min(m, n) and pull the cosines towards 1
    without saying anything about the learned subspace. No truncation energy: R̄ P has rank <= r and
    the server applies it untruncated."""
    return dense_diagnostics(r_factors, weights)
