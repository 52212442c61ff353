"""Independent random streams derived from one run seed, so each data step can change without
shifting the draws of the others (e.g. a new cap does not change the train/test split)."""

from __future__ import annotations

import numpy as np

_MASK = (1 << 64) - 1  # SeedSequence wants non-negative entropy; negative run seeds are allowed


def derive_rng(seed: int, *tags: int) -> np.random.Generator:
    """A generator for (seed, *tags)."""
    return np.random.default_rng(np.random.SeedSequence([seed & _MASK, *tags]))


def derive_seed(seed: int, *tags: int) -> int:
    """A 32-bit int seed for (seed, *tags), for libraries that take an int (flwr-datasets)."""
    return int(np.random.SeedSequence([seed & _MASK, *tags]).generate_state(1)[0])
