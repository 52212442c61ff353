"""Payload plumbing of the federated LoRA methods: each client's factors of a layer, FedAvg of the head."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from fedsub.core.tensors import weighted_sum
from fedsub.lora.maths import Factors
from fedsub.lora.names import LoraKeys, non_lora


def client_pairs(uploads: Sequence[dict[str, Tensor]], keys: LoraKeys, known: Sequence[dict[str, Tensor]] = ()) -> list[Factors]:
    """Each client's (B_k, A_k) of one layer; a factor a client did not send (frozen: FFA-LoRA's or
    FedSVD's A) is taken from `known` (the server's copy)."""

    def find(name: str, upload: dict[str, Tensor]) -> Tensor:
        for source in (upload, *known):
            if name in source:
                return source[name]
        raise KeyError(f"LoRA tensor {name!r} neither sent nor known to the server")

    return [(find(keys.b, u), find(keys.a, u)) for u in uploads]


def average_non_lora(uploads: Sequence[dict[str, Tensor]], weights: Sequence[float]) -> dict[str, Tensor]:
    """FedAvg of every uploaded tensor that is not a LoRA factor (the task head)."""
    names = non_lora(uploads[0])
    return weighted_sum(list(uploads), weights, names) if names else {}
