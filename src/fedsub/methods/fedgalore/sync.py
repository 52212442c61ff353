"""FedGaLore's server-side second-moment sync (docs/methods.md "FedGaLore", point 5) and its metrics.

``sync`` ``mean``: V_hat = sum_k p_k V_k; ``ajive``: fedsub.linalg.moments.sync_second_moments per
managed matrix, with the ``ajive_*`` options of FedGaLoreOptions (options.py). The blocks share the weight's long
side: m for a right-side moment (m x r); a left-side moment (r x n) is transposed there and back.

Metrics: ``ajive_joint_rank_mean/min/max`` (ajive; identical moments count their numerical rank),
``seconds_ajive``, and for both syncs ``v_hat_rel_diff_mean/max`` = ||V_hat - V_bar||_F / ||V_bar||_F
over the managed matrices (V_bar the weighted mean): how far the sync moved off the mean, 0 for the
mean sync and (to rounding) wherever AJIVE returned the mean: joint rank 0 with ``ajive_input`` v
and ``ajive_floor`` 0, or identical moments.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from fedsub.core.tensors import weighted_sum
from fedsub.linalg.moments import normalised_weights, relative_difference, weighted_mean
from fedsub.methods.fedgalore.keys import Part, key, keys, parts
from fedsub.optim.projector import choose_side


def sync_moments(
    options: Any, shapes: dict[str, torch.Size], uploads: list[dict], weights: list[float]
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """V_hat per matrix (``options.sync`` ajive or mean; none / reset: nothing) and the metrics."""
    if options.sync in ("none", "reset"):
        return {}, {}
    if options.sync == "mean":
        v = parts(weighted_sum(uploads, weights, keys(Part.MOMENT, shapes)), Part.MOMENT, shapes)
        v_hat = {n: v[n].clamp_min(0) for n in shapes}
        return v_hat, drift_metrics([relative_difference(v_hat[n], v[n]) for n in shapes])
    return ajive_sync(options, shapes, uploads, weights)


def sync_rules(options: Any) -> dict[str, Any]:
    """sync_second_moments' keyword arguments from the ajive_* options (defaults: the original
    estimator, with AJIVE's identifiability check on)."""
    samples = options.ajive_samples
    kwargs: dict[str, Any] = dict(seed=options.seed, n_wedin_samples=samples, n_randdir_samples=samples)
    if options.ajive_signal_rank is not None:
        kwargs["signal_ranks"] = options.ajive_signal_rank
    if options.ajive_joint_rank is not None:
        kwargs["joint_rank"] = options.ajive_joint_rank
    if not options.ajive_identifiability:
        kwargs["check_identifiability"] = False
    transform = "sqrt" if options.ajive_input == "sqrt" else "none"
    return {**kwargs, "transform": transform, "weighting": options.ajive_weighting, "floor": options.ajive_floor}


def ajive_sync(
    options: Any, shapes: dict[str, torch.Size], uploads: list[dict], weights: list[float]
) -> tuple[dict[str, Tensor], dict[str, float]]:
    from fedsub.linalg.moments import sync_second_moments  # late: AJIVE is only needed here (and tests patch it)

    rules = sync_rules(options)
    v_hat, ranks, tic = {}, [], time.perf_counter()
    for name, shape in shapes.items():
        left = choose_side(shape) == "left"
        moments = [u[key(Part.MOMENT, name)].mT if left else u[key(Part.MOMENT, name)] for u in uploads]
        synced, result = sync_second_moments(moments, weights, **rules)
        v_hat[name] = synced.mT.contiguous() if left else synced
        # Identical moments (result None) share every direction: their joint rank is their rank.
        ranks.append(int(torch.linalg.matrix_rank(moments[0])) if result is None else result.joint_rank)
    metrics = {
        "ajive_joint_rank_mean": sum(ranks) / len(ranks),
        "ajive_joint_rank_min": float(min(ranks)),
        "ajive_joint_rank_max": float(max(ranks)),
        "seconds_ajive": time.perf_counter() - tic,
    }
    # V_bar with the p that sync_second_moments uses, so that its mean fallback gives exactly 0.
    p = normalised_weights(weights, len(uploads))
    diffs = [relative_difference(v_hat[n], weighted_mean([u[key(Part.MOMENT, n)] for u in uploads], p)) for n in shapes]
    return v_hat, {**metrics, **drift_metrics(diffs)}


def drift_metrics(diffs: list[float]) -> dict[str, float]:
    """v_hat_rel_diff_mean / _max over the managed matrices."""
    return {"v_hat_rel_diff_mean": sum(diffs) / len(diffs), "v_hat_rel_diff_max": max(diffs)}
