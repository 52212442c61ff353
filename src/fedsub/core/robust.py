"""Robust aggregation rules (config `aggregation.rule`), in one place, applied by the round loop to
the accepted updates before the method aggregates them.

- `median`: the coordinate-wise median over clients of every uploaded tensor (Yin et al. 2018);
- `trimmed_mean`: per coordinate, drop the floor(beta x K) largest and smallest values, average the rest;
- `krum` / `multi_krum`: keep the update(s) whose changes lie closest to their n - f - 2 nearest
  neighbours (Blanchard et al. 2017; f = the number of attackers tolerated, multi_krum keeps m),
  which the method then averages;
- `norm_clip`: scale each client's change (its upload minus what it was sent; the upload itself for
  a tensor it was not sent) so that its L2 norm over all its tensors is at most the bound, a fixed
  number or a quantile of the round's norms (adaptive); then the method's own weighted mean.

median and trimmed_mean return one update that stands for the round (unweighted across clients, as
the papers define them; its example count is the round's total), so a method whose aggregate is the
example-weighted mean of the uploads aggregates exactly that robust statistic. Which methods that is,
and which rules each method can take, is `config.ROBUST_RULES`: a method whose server needs every
client's own update (FLoRA's stacking, an SVD of the sum, AJIVE over clients) refuses them.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from fedsub.core.types import ClientUpdate, Payload, Tensors


def change(update: ClientUpdate, sent: Tensors) -> Tensors:
    """What the client changed: upload minus what it was sent (the upload itself where nothing was sent)."""
    return {n: t.float() - sent[n].float() if n in sent else t.float() for n, t in update.payload.tensors.items()}


def norm(tensors: Tensors) -> float:
    """The L2 norm of a set of tensors taken as one vector."""
    return math.sqrt(sum(float(torch.sum(d * d)) for d in tensors.values()))


def change_norm(update: ClientUpdate, sent: Tensors) -> float:
    """The L2 norm of the client's whole change, over all its tensors."""
    return norm(change(update, sent))


def scaled(update: ClientUpdate, sent: Tensors, scale: float, delta: Tensors | None = None) -> ClientUpdate:
    """The update whose change (`delta`, else computed) is multiplied by `scale`, in its own dtypes."""
    delta = change(update, sent) if delta is None else delta
    tensors = {
        n: ((sent[n].float() if n in sent else 0.0) + scale * d).to(update.payload.tensors[n].dtype)
        for n, d in delta.items()
    }
    return ClientUpdate(update.client_id, Payload(tensors, dict(update.payload.scalars)), update.num_examples,
                        update.metrics)  # fmt: skip


def coordinatewise(updates: Sequence[ClientUpdate], statistic) -> ClientUpdate:
    """One update whose every tensor is `statistic` over the clients' stacked tensors (dim 0)."""
    first = updates[0]
    tensors = {
        n: statistic(torch.stack([u.payload.tensors[n].float() for u in updates])).to(t.dtype)
        for n, t in first.payload.tensors.items()
    }
    total = sum(u.num_examples for u in updates)
    return ClientUpdate(first.client_id, Payload(tensors, dict(first.payload.scalars)), total, dict(first.metrics))


def median(updates: Sequence[ClientUpdate]) -> ClientUpdate:
    """Coordinate-wise median; for an even count the mean of the two middle values (numpy's)."""
    return coordinatewise(updates, lambda x: torch.quantile(x.double(), 0.5, dim=0).float())


def trimmed_mean(updates: Sequence[ClientUpdate], beta: float) -> ClientUpdate:
    """Coordinate-wise mean of the middle values: floor(beta x K) dropped at each end."""
    k = len(updates)
    cut = math.floor(beta * k)

    def statistic(x: torch.Tensor) -> torch.Tensor:
        ordered = torch.sort(x, dim=0).values
        return ordered[cut : k - cut].mean(dim=0)

    return coordinatewise(updates, statistic)


def clip_bound(norms: Sequence[float], fixed: float | None, quantile: float) -> float:
    """The clipping bound: `fixed` when given, else the `quantile` of this round's change norms."""
    if fixed is not None:
        return fixed
    return float(torch.quantile(torch.tensor(list(norms), dtype=torch.float64), quantile))


def norm_clip(updates: Sequence[ClientUpdate], sent: dict[int, Tensors], bound: float) -> list[ClientUpdate]:
    """Each client's change scaled to L2 norm <= bound (an honest small change is untouched)."""
    clipped = []
    for u in updates:
        delta = change(u, sent[u.client_id])
        size = norm(delta)
        clipped.append(u if size <= bound else scaled(u, sent[u.client_id], bound / size, delta))
    return clipped


def krum_scores(updates: Sequence[ClientUpdate], sent: dict[int, Tensors], f: int) -> list[float]:
    """Each update's Krum score: the sum of squared distances from its change to its n - f - 2
    nearest other changes (smaller: closer to the crowd)."""
    flat = [torch.cat([d.reshape(-1) for d in change(u, sent[u.client_id]).values()]) for u in updates]
    stacked = torch.stack(flat).double()
    distances = torch.cdist(stacked, stacked) ** 2
    neighbours = max(len(updates) - f - 2, 1)
    return [float(torch.sort(row).values[1 : neighbours + 1].sum()) for row in distances]


def krum(updates: Sequence[ClientUpdate], sent: dict[int, Tensors], f: int, keep: int = 1) -> list[ClientUpdate]:
    """The `keep` updates with the smallest Krum scores (keep=1: Krum; more: multi-Krum), in client order."""
    scores = krum_scores(updates, sent, f)
    chosen = sorted(sorted(range(len(updates)), key=lambda k: (scores[k], k))[:keep])
    return [updates[k] for k in chosen]
