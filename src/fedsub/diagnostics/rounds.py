"""The diagnostics of one federated round, computed from what the method declares it holds
(`Method.diagnostics`, fedsub.core.method) and wired to the round's uploads and server state. The
maths, on plain tensors: fedsub.diagnostics.maths; what each number means: its docstring.

A LoRA method declares where the server finds each client's A and B (`LoraFactors`): uploaded,
shared (frozen at a shared seed, or set by the server, and held by it), or kept on the client. A
factor kept on the client is refused (`DiagnosticsUnavailable`), never replaced by the server's
copy: a method that kept B on its clients once reported every diag_* as 0.0, computed from the
server's zero B.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from fedsub.core.method import DenseUpdates, LoraFactors, Metrics, Source
from fedsub.core.tensors import normalized_weights
from fedsub.core.types import ClientUpdate, ServerState, Tensors
from fedsub.diagnostics.maths import dense_diagnostics, factored_diagnostics, lora_diagnostics
from fedsub.lora.maths import Factors
from fedsub.lora.names import LoraKeys


class DiagnosticsUnavailable(ValueError):
    """The diagnostics need a tensor the server never sees (a factor kept on the clients)."""


def refuse_client_held(inputs: LoraFactors) -> None:
    held = [f for f, source in (("A", inputs.a), ("B", inputs.b)) if source is Source.CLIENT]
    if held:
        raise DiagnosticsUnavailable(
            f"the clients keep LoRA {' and '.join(held)} (never sent), so the server cannot compute "
            "ΔW_k = s B_k A_k for the diag_* metrics; they are not reported as zeros instead"
        )


def factor(name: str, source: Source, upload: Tensors, shared: Sequence[Tensors]) -> Tensor:
    """One client's factor `name`, from where the method declares it."""
    if source is Source.UPLOADED:
        if name not in upload:
            raise KeyError(f"LoRA tensor {name!r} is declared uploaded but is not in the update")
        return upload[name]
    if source is Source.SHARED:
        for held in shared:
            if name in held:
                return held[name]
        raise KeyError(f"LoRA tensor {name!r} is declared shared but the server does not hold it")
    raise DiagnosticsUnavailable(f"LoRA tensor {name!r} stays on the clients")


def client_factors(
    uploads: Sequence[Tensors], keys: LoraKeys, inputs: LoraFactors, shared: Sequence[Tensors] = ()
) -> list[Factors]:
    """Each client's (B_k, A_k) of one layer, each factor from its declared source."""
    return [(factor(keys.b, inputs.b, u, shared), factor(keys.a, inputs.a, u, shared)) for u in uploads]


def held_factors(layers: dict[str, LoraKeys], held: Sequence[Tensors]) -> dict[str, Factors]:
    """The server's factors of every layer, from the first of `held` that has each (its new global
    tensors, then shared frozen ones)."""

    def find(name: str) -> Tensor:
        for tensors in held:
            if name in tensors:
                return tensors[name]
        raise KeyError(f"LoRA tensor {name!r} is not held by the server")

    return {p: (find(k.b), find(k.a)) for p, k in layers.items()}


def lora_round_diagnostics(
    options,
    inputs: LoraFactors,
    layers: dict[str, LoraKeys],
    updates: Sequence[ClientUpdate],
    aggregated: dict[str, Factors],
    shared: Sequence[Tensors] = (),
) -> Metrics:
    """`lora_diagnostics` of a round: client factors from their declared sources, aggregated[prefix]
    the server's update of the layer as (unscaled) factors; {} when `options.diagnostics` is off."""
    if not options.diagnostics:
        return {}
    refuse_client_held(inputs)
    if not layers or not updates:
        return {}
    scale = options.lora_alpha / options.rank
    weights = normalized_weights([u.num_examples for u in updates])
    uploads = [u.payload.tensors for u in updates]
    clients, server = [], []
    for prefix, keys in layers.items():
        clients.append([(scale * b.double(), a) for b, a in client_factors(uploads, keys, inputs, shared)])
        b_agg, a_agg = aggregated[prefix]
        server.append((scale * b_agg.double(), a_agg))
    return lora_diagnostics(clients, weights, server, options.rank)


def dense_round_diagnostics(
    options, inputs: DenseUpdates, state: ServerState, updates: Sequence[ClientUpdate], names: Sequence[str]
) -> Metrics:
    """`dense_diagnostics` of a FedAvg-of-weights round (fedftg, fedavg_full): ΔW_k = W_k − W_t for
    each named matrix (the uploads and the round's start state); {} when the option is off."""
    if not options.diagnostics or not updates:
        return {}
    weights = normalized_weights([u.num_examples for u in updates])
    start = state.tensors
    clients = ([u.payload.tensors[n].double() - start[n].double() for u in updates] for n in names)
    return dense_diagnostics(clients, weights, inputs.rank)


def factored_round_diagnostics(
    options, uploads: Sequence[Tensors], weights: Sequence[float], factor_names: Sequence[str]
) -> Metrics:
    """`factored_diagnostics` of a GaLore-factored round from the uploaded R_k (named `factor_names`)."""
    if not options.diagnostics:
        return {}
    return factored_diagnostics([[u[n] for u in uploads] for n in factor_names], weights)
