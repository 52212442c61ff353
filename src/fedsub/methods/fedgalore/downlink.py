"""FedGaLore's factored downlink: the global GaLore-managed weights travel as factored deltas.

Round t turns the global W^{t-1} into W^t = c_bar W^{t-1} + R_bar P (factored.factored_update). A
client that holds version v of the global weights needs only the deltas v+1..t: per delta the scalar
c_bar, R_bar per matrix (m x r) and, for a sketched projector, P (random ones are rebuilt from the
seed). Version 0 is the pretrained base that every client loads itself, as in federated LoRA. The
client applies the deltas to its own copy with the server's function, so its weights are bit-identical
to the server's. The server keeps the last ``history`` deltas and the newest version each client is
known to hold (from its uploads); a client further behind than the history gets the dense weights.
A client may hold a newer version than the server knows (it received a round and then failed): it
skips the deltas it already applied.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from torch import Tensor

from fedsub.methods.fedgalore.factored import factored_update
from fedsub.methods.fedgalore.keys import Part, key, named
from fedsub.methods.fedgalore.state import Delta, FedGaLoreState


def record_delta(extra: FedGaLoreState, delta: Delta, client_ids: list[int], history: int) -> FedGaLoreState:
    """Server: the state's delta log with this round's delta appended (newest ``history`` kept) and
    the uploading clients marked as holding the version they trained from."""
    deltas = [*extra.deltas, delta][-history:] if history else []
    known = {**extra.known, **{c: delta.version - 1 for c in client_ids}}
    return dataclasses.replace(extra, deltas=deltas, known=known)


def deltas_for(extra: FedGaLoreState, client_id: int, version: int) -> list[Delta] | None:
    """The deltas a client needs to reach ``version``, or None when the log does not reach back."""
    held = extra.known.get(client_id, 0)
    needed = [d for d in extra.deltas if d.version > held]
    return needed if len(needed) == version - held else None


def pack(deltas: list[Delta], current_refresh: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Payload tensors and scalars of a delta chain. A sketched P already sent as this round's
    projector (same refresh) is not sent twice."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {"deltas": len(deltas), "delta_base": deltas[0].version - 1 if deltas else -1}
    for j, delta in enumerate(deltas):
        scalars[f"delta{j}_decay"], scalars[f"delta{j}_refresh"] = delta.decay, delta.refresh
        tensors.update(named(Part.FACTOR, delta.r_bar, delta=j))
        if delta.projectors is not None and delta.refresh != current_refresh:
            tensors.update(named(Part.PROJECTOR, delta.projectors, delta=j))
    return tensors, scalars


def apply_deltas(
    weights: dict[str, Tensor],
    held: int,
    payload_tensors: dict[str, Tensor],
    scalars: dict[str, Any],
    projectors_of: Callable[[int, int], dict[str, Tensor]],
) -> tuple[dict[str, Tensor], int]:
    """Client: its copy of version ``held`` moved along the delta chain; returns (weights, version).

    ``projectors_of(j, refresh)`` gives delta j's projectors (sent, this round's, or rebuilt)."""
    base = int(scalars["delta_base"])
    if held < base:
        raise RuntimeError(f"client holds global version {held} but the deltas start at {base + 1}")
    version = held
    for j in range(int(scalars["deltas"])):
        if base + j + 1 <= held:
            continue  # already applied: the server's record of this client lags
        decay, refresh = float(scalars[f"delta{j}_decay"]), int(scalars[f"delta{j}_refresh"])
        projectors = projectors_of(j, refresh)
        weights = {
            n: factored_update(w, decay, payload_tensors[key(Part.FACTOR, n, delta=j)], projectors[n])
            for n, w in weights.items()
        }
        version = base + j + 1
    return weights, version
