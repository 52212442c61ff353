"""Every seed fedsub derives, in one place: each random draw of a run is a pure function of the run
seed (or a method's own ``seed`` option) and what the draw is for, so resume and replay are exact and
a new draw in one place never shifts the draws of another.

Two derivations, kept bit for bit as they were when they lived in eight modules (the golden metrics,
tests/test_golden.py, prove every derived value unchanged):

- numpy's SeedSequence over ``(seed, *tags)``: ``derive_rng`` (a numpy Generator; what
  ``np.random.default_rng([seed, *tags])`` gave), ``derive_seed`` (a 32-bit int, for libraries that
  take an int seed: flwr-datasets, torch generators), ``derive_seed64`` (a 64-bit int: AJIVE's
  Monte-Carlo streams). The data (split, caps, partition draws), client sampling, simulated faults,
  each client's round seed, FlexLoRA's rank draws and FLoRA's fresh adapters use these.
- splitmix64 over ``(seed, *parts)``: ``mix_seed``, GaLore's projector and sketch seeds (one per
  matrix per refresh: pure Python, no numpy object per call).

``torch_generator(seed)`` is the one way a seed becomes a torch generator: on the CPU by default
(CUDA generators draw other streams, so a CPU and a GPU client would disagree), on a device only
where the draws never leave it (AJIVE's Monte-Carlo bounds). Model init, dropout and each client's
local steps seed torch's global generator with ``torch.manual_seed`` (the run seed, the client seed).

Negative seeds work: every part is taken modulo 2^64 before it is mixed (SeedSequence refuses
negative entropy; ``--set seed=-1`` once died in client sampling), which leaves every non-negative
seed's draws as they were. torch's own ``manual_seed`` (model init) takes negative seeds as they are.
"""

from __future__ import annotations

import numpy as np
import torch

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment (2^64 / golden ratio)


def _entropy(seed: int, tags: tuple[int, ...]) -> list[int]:
    return [int(part) & _MASK64 for part in (seed, *tags)]


def derive_rng(seed: int, *tags: int) -> np.random.Generator:
    """A numpy generator for (seed, *tags): ``np.random.default_rng([seed, *tags])`` for seed >= 0."""
    return np.random.default_rng(np.random.SeedSequence(_entropy(seed, tags)))


def derive_seed(seed: int, *tags: int) -> int:
    """A 32-bit int seed for (seed, *tags) (SeedSequence's first state word)."""
    return int(np.random.SeedSequence(_entropy(seed, tags)).generate_state(1)[0])


def derive_seed64(seed: int, *tags: int) -> int:
    """A 64-bit int seed for (seed, *tags) (SeedSequence's first 64-bit state word)."""
    return int(np.random.SeedSequence(_entropy(seed, tags)).generate_state(1, np.uint64)[0])


def client_seed(seed: int, round_index: int, client_id: int) -> int:
    """The seed of one client's round (its batch order, dropout, fresh adapters): every engine
    derives it the same way, so a client's round is reproducible in isolation and across engines."""
    return derive_seed(seed, round_index, client_id)


def mix_seed(*parts: int) -> int:
    """Mix integers into one 63-bit seed (splitmix64 finaliser on a running hash).

    Used for (seed, parameter index, refresh index): neighbouring inputs give unrelated streams,
    unlike ``seed + index`` where two keys can collide.
    """
    h = _GOLDEN
    for part in parts:
        h = (h ^ (int(part) & _MASK64)) & _MASK64
        h = (h + _GOLDEN) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


def torch_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded with ``seed`` (a derived one, or a seed given as is)."""
    return torch.Generator(device=device).manual_seed(int(seed))
