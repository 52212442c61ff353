"""The server side every federated LoRA method shares: FedAvg of the head, then one rule per LoRA
layer, written once (`aggregate_lora`); each method supplies only its layer rule."""

from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor

from fedsub.core.tensors import normalized_weights, weighted_sum
from fedsub.core.types import ClientUpdate, ServerState, Tensors
from fedsub.lora.maths import Factors
from fedsub.lora.names import LoraKeys, non_lora

# A layer's new global tensors from (its names, the clients' uploads, their FedAvg weights, the round's start state).
LayerRule = Callable[[LoraKeys, Sequence[Tensors], Sequence[float], Tensors], Tensors]


def client_pairs(uploads: Sequence[dict[str, Tensor]], keys: LoraKeys) -> list[Factors]:
    """Each client's uploaded (B_k, A_k) of one layer."""
    return [(u[keys.b], u[keys.a]) for u in uploads]


def average_non_lora(uploads: Sequence[dict[str, Tensor]], weights: Sequence[float]) -> dict[str, Tensor]:
    """FedAvg of every uploaded tensor that is not a LoRA factor (the task head)."""
    names = non_lora(uploads[0])
    return weighted_sum(list(uploads), weights, names) if names else {}


def aggregate_lora(
    state: ServerState, updates: Sequence[ClientUpdate], layers: dict[str, LoraKeys], rule: LayerRule
) -> ServerState:
    """The next server state: the head FedAvg'ed, then each LoRA layer's tensors as `rule` gives them
    (cast to the dtype the state holds them in), every other tensor kept."""
    weights = normalized_weights([u.num_examples for u in updates])
    uploads = [u.payload.tensors for u in updates]
    tensors = {**state.tensors, **average_non_lora(uploads, weights)}
    for keys in layers.values():
        for name, value in rule(keys, uploads, weights, state.tensors).items():
            tensors[name] = value.to(state.tensors[name].dtype)
    return ServerState(state.round + 1, tensors, state.extra)
