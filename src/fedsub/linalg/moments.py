"""Server-side synchronisation of clients' projected Adam second moments (FedGaLore, METHODS.md
"FedGaLore - our specification", point 5).

Each client k sends V_k (m x r, the GaLore-projected second moment) and a weight (n_k). The
`ajive` sync keeps what the clients' moments share: with U_J the AJIVE joint basis of the blocks
{V_k} (Feng, Jiang, Hannig & Marron 2018, JMVA) and mu_k the column means removed by centring,

    V_hat = sum_k p_k (U_J U_J^T (V_k - mu_k) + mu_k),   clamped >= 0 element-wise,

with p_k the normalised weights; joint rank 0 falls back to the weighted mean sum_k p_k V_k.
Kept in its own module so that `ajive` stays a general decomposition.

Options (defaults: the estimator above, unchanged):
- ``transform="sqrt"``: the same estimator on the blocks sqrt(V_k), mapped back as
  V_hat = max(S_hat, 0)^2 with S_hat the root-domain estimate: non-negative by construction, and
  a rank-1 non-negative pattern a b^T stays rank 1 under the root (sqrt(a) sqrt(b)^T). With joint
  rank 0 it is (sum_k p_k sqrt(V_k))^2 = V_bar - sum_k p_k (sqrt(V_k) - sum_j p_j sqrt(V_j))^2
  entrywise: V_bar less the weighted variance of the roots, never above V_bar (Jensen).
- ``weighting="clients"``: AJIVE stacks the blocks weighted by p_k (ajive's block_weights).
- ``floor`` in [0, 1): V_hat = max(V_hat, floor * V_bar) entrywise instead of max(V_hat, 0)
  (V_bar = sum_k p_k V_k): bounds how far below the mean the sync may take a moment, so that the
  first Adam steps from V_hat are at most 1 / sqrt(floor) times those from V_bar (floor 0.25: 2x).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from fedsub.linalg.ajive import AJIVEResult, ajive

__all__ = ["normalised_weights", "relative_difference", "sync_second_moments", "weighted_mean"]

Transform = Literal["none", "sqrt"]
Weighting = Literal["equal", "clients"]


def sync_second_moments(
    moments: Sequence[Tensor],
    weights: Sequence[float],
    *,
    transform: Transform = "none",
    weighting: Weighting = "equal",
    floor: float = 0.0,
    **ajive_kwargs: Any,
) -> tuple[Tensor, AJIVEResult | None]:
    """AJIVE-synchronised second moment V_hat (METHODS.md FedGaLore point 5).

    Args:
        moments: V_k, one per client, all of the same shape (m x r), dtype and device.
        weights: one non-negative finite weight per client (e.g. n_k), not all zero; normalised
            to p_k here (``weighting="clients"`` needs them all positive).
        transform: "none" (AJIVE on V_k) or "sqrt" (on sqrt(V_k), squared back; the moments
            must be >= 0), see the module docstring.
        weighting: "equal" (AJIVE's own stacking) or "clients" (block_weights = p_k).
        floor: in [0, 1); the result is floored entrywise at floor * V_bar (0: at 0, as before).
        **ajive_kwargs: passed to `fedsub.linalg.ajive` (signal_ranks, joint_rank, seed,
            check_identifiability, ...).

    Returns:
        (V_hat, result): V_hat in the moments' dtype and device, every entry >= 0; result is the
        AJIVE decomposition (of the roots for transform "sqrt"), or None where AJIVE was not run.

    Special cases:
        - all moments identical (torch.equal; includes a single client): V_hat = V_1.clamp(min=0),
          bit-identical to V_1 for a valid (non-negative) moment, result None. Identical blocks
          share every direction, so AJIVE's truncation to signal ranks would only lose the tail
          of V_1 and the weighted sum would add rounding. The same for every option (there
          floor * V_bar = floor * V_1 <= V_1, and no root is taken and squared).
        - joint rank 0 (no shared signal, e.g. constant or all-zero moments): the weighted mean
          (of the roots, squared, for "sqrt"; then floored).
        - mismatched shapes, NaN/Inf, bad weights or options: ValueError naming the argument
          (NaN/Inf via ajive).
    """
    _check_same_layout(moments)
    _check_rules(transform, weighting, floor, ajive_kwargs)
    p = normalised_weights(weights, len(moments))
    first = moments[0]
    if all(torch.equal(first, v) for v in moments[1:]):
        return first.clamp(min=0), None
    blocks = _roots(moments) if transform == "sqrt" else list(moments)
    if weighting == "clients":
        ajive_kwargs = {**ajive_kwargs, "block_weights": p}
    result = ajive(blocks, **ajive_kwargs)
    estimate = _joint_estimate(blocks, p, result)
    v_hat = estimate.clamp(min=0).square() if transform == "sqrt" else estimate
    return _floored(v_hat, moments, p, floor), result


def weighted_mean(moments: Sequence[Tensor], p: Sequence[float]) -> Tensor:
    """V_bar = sum_k p_k V_k, in the moments' dtype (the mean sync and AJIVE's rank-0 fallback)."""
    return sum(pk * v for pk, v in zip(p, moments))


def relative_difference(v_hat: Tensor, v_bar: Tensor) -> float:
    """||V_hat - V_bar||_F / ||V_bar||_F: how far a sync moved off the mean (0 where equal,
    including V_bar = 0 = V_hat; inf for V_hat != 0 = V_bar). Computed in float64."""
    diff = float(torch.linalg.vector_norm((v_hat.double() - v_bar.double()).flatten()))
    scale = float(torch.linalg.vector_norm(v_bar.double().flatten()))
    if diff == 0.0:
        return 0.0
    return diff / scale if scale > 0 else math.inf


def _joint_estimate(blocks: list[Tensor], p: list[float], result: AJIVEResult) -> Tensor:
    """sum_k p_k (J_k + mu_k), or the weighted mean of the blocks where the joint rank is 0."""
    if result.joint_rank == 0:
        return weighted_mean(blocks, p)
    return sum(pk * (j + mu) for pk, j, mu in zip(p, result.block_joint, result.column_means))


def _floored(v_hat: Tensor, moments: Sequence[Tensor], p: list[float], floor: float) -> Tensor:
    if floor == 0.0:
        return v_hat.clamp(min=0)  # the original clamp, bit for bit
    return torch.maximum(v_hat, floor * weighted_mean(moments, p)).clamp(min=0)  # >= 0 even for a bad V_k


def _roots(moments: Sequence[Tensor]) -> list[Tensor]:
    for k, v in enumerate(moments):
        if bool((v < 0).any()):
            raise ValueError(f"transform='sqrt' needs non-negative moments; moment {k} has a negative entry")
    return [v.sqrt() for v in moments]


def _check_rules(transform: str, weighting: str, floor: float, ajive_kwargs: dict) -> None:
    if transform not in ("none", "sqrt"):
        raise ValueError(f"transform must be 'none' or 'sqrt', got {transform!r}")
    if weighting not in ("equal", "clients"):
        raise ValueError(f"weighting must be 'equal' or 'clients', got {weighting!r}")
    if weighting == "clients" and "block_weights" in ajive_kwargs:
        raise ValueError("weighting='clients' sets block_weights itself; pass one of the two")
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0.0 <= floor < 1.0:
        raise ValueError(f"floor must be a number in [0, 1), got {floor!r}")


def normalised_weights(weights: Sequence[float], n_moments: int) -> list[float]:
    """p_k = w_k / sum_j w_j, validated (the p that sync_second_moments uses)."""
    if len(weights) != n_moments:
        raise ValueError(f"{len(weights)} weights for {n_moments} moments")
    w = [float(x) for x in weights]
    if any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {w}")
    total = sum(w)
    return [x / total for x in w]


def _check_same_layout(moments: Sequence[Tensor]) -> None:
    if not moments:
        raise ValueError("no moments to synchronise")
    shapes = {tuple(v.shape) for v in moments}
    if len(shapes) != 1:
        raise ValueError(f"moments must share one shape, got {sorted(shapes)}")
    if len({(v.dtype, v.device) for v in moments}) != 1:
        raise ValueError("moments must share dtype and device")
