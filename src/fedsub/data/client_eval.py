"""Each client's own evaluation rows, for federated evaluation (config `federated_eval`).

Two ways, both seeded and pure functions of (partition, labels, seed), so the server and a Flower
node that holds partition k compute the same rows:

- `test_partition`: the test set split over the clients following their train label mix. For each
  class c, its test rows (shuffled) are dealt to the clients in proportion to how many train rows of
  class c each holds (largest remainder), so a client with 30 % of class c's train rows evaluates on
  30 % of its test rows; a client without class c gets none of it. Training data is untouched.
- `holdout`: a share of each client's own train rows (at least 1, never all), held out of its
  training; what a silo without a shared test set does.
"""

from __future__ import annotations

import numpy as np

from fedsub.config import FederatedEvalConfig
from fedsub.core.seeding import derive_rng

_TEST_STREAM, _HOLDOUT_STREAM = 0xE7A1, 0xE7A2  # independent of the partition's and the splits' draws


def largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to `weights` summing to `total` (Hamilton's method; ties to the lower index)."""
    if weights.sum() == 0:
        return np.zeros(len(weights), dtype=np.int64)
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def split_test_by_partition(
    parts: list[np.ndarray], train_labels: np.ndarray, test_labels: np.ndarray, seed: int
) -> list[np.ndarray]:
    """Test row indices per client, following each client's train label counts (module docstring)."""
    rng = derive_rng(seed, _TEST_STREAM)
    rows: list[list[np.ndarray]] = [[] for _ in parts]
    for label in np.unique(test_labels):
        pool = rng.permutation(np.flatnonzero(test_labels == label))
        held = np.array([int(np.sum(train_labels[p] == label)) for p in parts])
        bounds = np.concatenate([[0], np.cumsum(largest_remainder(len(pool), held))])
        for k in range(len(parts)):
            rows[k].append(pool[bounds[k] : bounds[k + 1]])
    return [np.sort(np.concatenate(r)) if r else np.empty(0, dtype=np.int64) for r in rows]


def hold_out(parts: list[np.ndarray], fraction: float, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(train rows, held-out rows) per client: round(fraction * n) of its rows, at least 1 and at most
    n - 1 (a client of one row keeps it for training and evaluates on nothing)."""
    train, held = [], []
    for k, part in enumerate(parts):
        part = np.asarray(part)
        size = min(max(1, round(fraction * len(part))), len(part) - 1) if len(part) > 1 else 0
        chosen = derive_rng(seed, _HOLDOUT_STREAM, k).permutation(len(part))[:size]
        keep = np.ones(len(part), dtype=bool)
        keep[chosen] = False
        train.append(part[keep])  # the partition's own order: training batches draw from it
        held.append(np.sort(part[~keep]))
    return train, held


def client_eval_rows(
    parts: list[np.ndarray], train_labels: np.ndarray, test_labels: np.ndarray, cfg: FederatedEvalConfig, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """(train parts, each client's evaluation rows, the split those rows index: "test" or "train")."""
    if cfg.data == "holdout":
        train, held = hold_out(parts, cfg.holdout_fraction, seed)
        return train, held, "train"
    return parts, split_test_by_partition(parts, train_labels, test_labels, seed), "test"
