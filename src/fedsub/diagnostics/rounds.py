"""The diagnostics of one federated round, wired to a method's uploads and server state
(the maths, on plain tensors: fedsub.diagnostics.maths; what each number means: its docstring)."""

from __future__ import annotations

from typing import Sequence

from fedsub.core.tensors import normalized_weights
from fedsub.core.types import ClientUpdate, ServerState, Tensors
from fedsub.diagnostics.maths import dense_diagnostics, lora_diagnostics
from fedsub.lora.aggregate import client_pairs
from fedsub.lora.maths import Factors
from fedsub.lora.names import LoraKeys, lora_layers


def round_diagnostics(
    layers: dict[str, LoraKeys],
    updates: Sequence[ClientUpdate],
    scale: float,
    aggregated: dict[str, Factors],
    rank: int,
    known: Sequence[Tensors] = (),
) -> dict[str, float]:
    """Wire `lora_diagnostics` to a round: client factors from the uploads (a factor a client did not
    send, e.g. FFA-LoRA's frozen A, from `known`), aggregated[prefix] = server factors (unscaled)."""
    if not layers or not updates:
        return {}
    weights = normalized_weights([u.num_examples for u in updates])
    uploads = [u.payload.tensors for u in updates]
    clients, server = [], []
    for prefix, keys in layers.items():
        clients.append([(scale * b.double(), a) for b, a in client_pairs(uploads, keys, known)])
        b_agg, a_agg = aggregated[prefix]
        server.append((scale * b_agg.double(), a_agg))
    return lora_diagnostics(clients, weights, server, rank)


def server_factor_diagnostics(
    options, layers: dict[str, LoraKeys], updates: Sequence[ClientUpdate], tensors: Tensors, known: Sequence[Tensors] = ()
) -> dict[str, float]:
    """Diagnostics of a method whose new global LoRA factors are in `tensors` (fedsvd, flexlora,
    svd_redistribute); {} when the method's `diagnostics` option is off."""
    if not options.diagnostics:
        return {}
    aggregated = {p: (tensors[k.b], tensors[k.a]) for p, k in layers.items()}
    return round_diagnostics(layers, updates, options.lora_alpha / options.rank, aggregated, options.rank, known)


def fedavg_diagnostics(options, state: ServerState, new: ServerState, updates: Sequence[ClientUpdate]) -> dict[str, float]:
    """Diagnostics of the FedAvg-of-factors methods (fedit, ffa_lora): the server's update is
    s avg(B) avg(A) (A the shared frozen one for FFA-LoRA, kept in state.extra['frozen_lora'])."""
    frozen = state.extra.get("frozen_lora", {})
    layers = lora_layers([*new.tensors, *frozen])
    aggregated = {p: client_pairs([new.tensors], k, known=(frozen,))[0] for p, k in layers.items()}
    scale = options.lora_alpha / options.rank
    return round_diagnostics(layers, updates, scale, aggregated, options.rank, known=(state.tensors, frozen))


def dense_round_diagnostics(state: ServerState, updates: Sequence[ClientUpdate], names: Sequence[str], rank: int | None) -> dict[str, float]:
    """Wire `dense_diagnostics` to a FedAvg-of-weights round (fedftg, fedavg_full): ΔW_k = W_k − W_t
    for each named matrix (the uploads and the round's start state)."""
    if not updates:
        return {}
    weights = normalized_weights([u.num_examples for u in updates])
    start = state.tensors
    clients = ([u.payload.tensors[n].double() - start[n].double() for u in updates] for n in names)
    return dense_diagnostics(clients, weights, rank)
