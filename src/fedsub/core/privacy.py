"""Client-level differential privacy, central model (DP-FedAvg; McMahan et al. 2018, adaptive clipping
after Andrew et al. 2021), config `privacy.dp`.

Each round: every accepted client's change (its upload minus what it was sent) is clipped to L2 norm
C over all its tensors; the clipped changes are summed; Gaussian noise N(0, (z_delta C)^2) is added to
every coordinate of the sum; the sum is divided by the expected number of clients m
(federation.clients_per_round), and the global model moves by that. The method then aggregates one
update holding global + noisy mean change, so a method whose aggregate is the weighted mean of its
uploads applies exactly that (config.DP_SERVES; the methods whose server takes an SVD of the sum of
B_k A_k get the noise in that sum instead: fedsub.lora.private).

Adaptive clipping: C follows the target_quantile of the clients' change norms, C <- C exp(-eta (b - gamma))
with b the noisy share of clients within C (count noise sigma_b = m / 20); the sum's noise is then
z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2, so that the round as a whole is the Gaussian mechanism with
multiplier z (possible only for z < 2 sigma_b = m / 10: with few clients per round the count's own
noise spends more than the whole budget), which the accountant composes: Opacus' RDP accountant over
the rounds released so far at sampling rate q = m / num_clients, reported as epsilon at delta.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from fedsub.core.robust import change, norm
from fedsub.core.types import ClientUpdate, Payload, Tensors


@dataclass(frozen=True)
class Release:
    """One round's private aggregate and what the record says of it."""

    update: ClientUpdate  # global + noisy mean change, weight 1
    clip_norm: float  # C used this round
    next_clip_norm: float  # C for the next round (adaptive), else C
    clipped_share: float  # the true share of clients whose change exceeded C (logged, not released)


def count_noise_std(expected_clients: int) -> float:
    """sigma_b of the adaptive clipping count (Andrew et al. 2021 use m / 20)."""
    return expected_clients / 20.0


def sum_noise_multiplier(z: float, adaptive: bool, expected_clients: int) -> float:
    """z_delta: the sum's own noise multiplier, so that sum and count together spend z."""
    if not adaptive:
        return z
    sigma_b = count_noise_std(expected_clients)
    remaining = z**-2 - (2 * sigma_b) ** -2
    if remaining <= 0:
        raise ValueError(
            f"privacy.dp.noise_multiplier {z:g} is too large for adaptive clipping with {expected_clients} "
            f"clients per round (the count's noise alone spends z = {2 * sigma_b:.3g}); lower it, sample more "
            f"clients, or set adaptive: false"
        )
    return remaining**-0.5


def private_mean(
    updates: Sequence[ClientUpdate], sent: Tensors, clip_norm: float, z: float, expected_clients: int,
    generator: torch.Generator, adaptive: bool = False, target_quantile: float = 0.5, clip_lr: float = 0.2,
) -> Release:  # fmt: skip
    """The round's DP-FedAvg release (module docstring); `sent` is the global tensors every client got."""
    changes = [change(u, sent) for u in updates]
    norms = [norm(c) for c in changes]
    noise_std = sum_noise_multiplier(z, adaptive, expected_clients) * clip_norm
    summed: Tensors = {}
    for c, size in zip(changes, norms):
        scale = min(1.0, clip_norm / size) if size > 0 else 1.0
        for name, d in c.items():
            summed[name] = summed.get(name, 0.0) + scale * d
    tensors = {}
    for name, total in summed.items():
        noise = torch.randn(total.shape, generator=generator, dtype=torch.float64).float() * noise_std
        reference = updates[0].payload.tensors[name]
        base = sent[name].float() if name in sent else 0.0
        tensors[name] = (base + (total + noise) / expected_clients).to(reference.dtype)
    within = sum(size <= clip_norm for size in norms)
    next_clip = clip_norm
    if adaptive:
        noisy_share = (within + float(torch.randn((), generator=generator, dtype=torch.float64))
                       * count_noise_std(expected_clients)) / expected_clients  # fmt: skip
        next_clip = clip_norm * math.exp(-clip_lr * (noisy_share - target_quantile))
    release = ClientUpdate(updates[0].client_id, Payload(tensors), 1, {})
    return Release(release, clip_norm, next_clip, 1 - within / len(updates))


@functools.lru_cache(maxsize=4096)  # local DP asks it for every client every round; most share (q, steps)
def epsilon(z: float, sample_rate: float, rounds: int, delta: float) -> float:
    """epsilon after `rounds` releases of the sampled Gaussian mechanism (Opacus' RDP accountant); DP-SGD's
    steps are its releases too."""
    if rounds == 0:
        return 0.0
    from opacus.accountants import RDPAccountant  # late: an optional extra (fedsub[dp]), imported when used

    accountant = RDPAccountant()
    accountant.history = [(z, sample_rate, rounds)]
    return float(accountant.get_epsilon(delta=delta))
