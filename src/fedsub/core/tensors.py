"""Arithmetic on dicts of named tensors (the payloads' currency). Pure functions, no in-place edits."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

Tensors = dict[str, torch.Tensor]


def normalized_weights(counts: Sequence[float]) -> list[float]:
    """FedAvg weights p_k = n_k / sum n_j."""
    total = float(sum(counts))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    return [float(c) / total for c in counts]


def weighted_sum(dicts: Sequence[Tensors], weights: Sequence[float], keys: Iterable[str] | None = None) -> Tensors:
    """sum_k w_k * d_k per key, accumulated in float32 (or float64 if given) and cast back."""
    if not dicts:
        raise ValueError("weighted_sum of no tensors")
    if len(dicts) != len(weights):
        raise ValueError(f"{len(dicts)} dicts but {len(weights)} weights")
    keys = list(dicts[0]) if keys is None else list(keys)
    out: Tensors = {}
    for key in keys:
        first = dicts[0][key]
        acc_dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        acc = torch.zeros(first.shape, dtype=acc_dtype, device=first.device)
        for d, w in zip(dicts, weights):
            acc.add_(d[key].to(acc_dtype), alpha=float(w))
        out[key] = acc.to(first.dtype)
    return out


def weighted_mean(dicts: Sequence[Tensors], counts: Sequence[float], keys: Iterable[str] | None = None) -> Tensors:
    """FedAvg: sum_k (n_k / sum n) d_k."""
    return weighted_sum(dicts, normalized_weights(counts), keys)


def subtract(a: Tensors, b: Tensors) -> Tensors:
    return {k: a[k] - b[k] for k in a}


def add(a: Tensors, b: Tensors) -> Tensors:
    return {k: a[k] + b[k] for k in a}


def scale(a: Tensors, factor: float) -> Tensors:
    return {k: v * factor for k, v in a.items()}


def clone(a: Tensors, device: str | torch.device | None = "cpu") -> Tensors:
    return {k: v.detach().to(device).clone() for k, v in a.items()}


def select(a: Tensors, keys: Iterable[str]) -> Tensors:
    return {k: a[k] for k in keys}


def nbytes(a: Tensors) -> int:
    return sum(v.numel() * v.element_size() for v in a.values())


def max_abs_diff(a: Tensors, b: Tensors) -> float:
    if a.keys() != b.keys():
        raise ValueError(f"different keys: {sorted(set(a) ^ set(b))}")
    return max((float((a[k].double() - b[k].double()).abs().max()) for k in a), default=0.0)
