"""Server-side synchronisation of clients' projected Adam second moments (FedGaLore, METHODS.md
"FedGaLore - our specification", point 5).

Each client k sends V_k (m x r, the GaLore-projected second moment) and a weight (n_k). The
`ajive` sync keeps what the clients' moments share: with U_J the AJIVE joint basis of the blocks
{V_k} (Feng, Jiang, Hannig & Marron 2018, JMVA) and mu_k the column means removed by centring,

    V_hat = sum_k p_k (U_J U_J^T (V_k - mu_k) + mu_k),   clamped >= 0 element-wise,

with p_k the normalised weights; joint rank 0 falls back to the weighted mean sum_k p_k V_k.
Kept in its own module so that `ajive` stays a general decomposition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fedsub.linalg.ajive import AJIVEResult, ajive

__all__ = ["sync_second_moments"]


def sync_second_moments(
    moments: Sequence[Tensor], weights: Sequence[float], **ajive_kwargs: Any
) -> tuple[Tensor, AJIVEResult | None]:
    """AJIVE-synchronised second moment V_hat (METHODS.md FedGaLore point 5).

    Args:
        moments: V_k, one per client, all of the same shape (m x r), dtype and device.
        weights: one non-negative finite weight per client (e.g. n_k), not all zero; normalised
            to p_k here.
        **ajive_kwargs: passed to `fedsub.linalg.ajive` (signal_ranks, joint_rank, seed, ...).

    Returns:
        (V_hat, result): V_hat in the moments' dtype and device, every entry >= 0; result is the
        AJIVE decomposition, or None where AJIVE was not run.

    Special cases:
        - all moments identical (torch.equal; includes a single client): V_hat = V_1.clamp(min=0),
          bit-identical to V_1 for a valid (non-negative) moment, result None. Identical blocks
          share every direction, so AJIVE's truncation to signal ranks would only lose the tail
          of V_1 and the weighted sum would add rounding.
        - joint rank 0 (no shared signal, e.g. constant or all-zero moments): the weighted mean.
        - mismatched shapes, NaN/Inf, bad weights: ValueError (NaN/Inf via ajive).
    """
    _check_same_layout(moments)
    p = _normalised_weights(weights, len(moments))
    first = moments[0]
    if all(torch.equal(first, v) for v in moments[1:]):
        return first.clamp(min=0), None
    result = ajive(moments, **ajive_kwargs)
    if result.joint_rank == 0:
        v_hat = sum(pk * v for pk, v in zip(p, moments))
    else:
        v_hat = sum(pk * (j + mu) for pk, j, mu in zip(p, result.block_joint, result.column_means))
    return v_hat.clamp(min=0), result


def _normalised_weights(weights: Sequence[float], n_moments: int) -> list[float]:
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
