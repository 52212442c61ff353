"""FedGaLore's factored downlink: the global GaLore-managed weights travel as factored deltas.

Round t turns the global W^{t-1} into W^t = c_bar W^{t-1} + R_bar P (fedgalore.factored_update). A
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

from typing import Any, Callable

from torch import Tensor

Delta = dict[str, Any]  # {"version", "decay", "r_bar": {name: R_bar}, "refresh", "projectors": {name: P} | None}


def record_delta(extra: dict, delta: Delta, client_ids: list[int], history: int) -> dict:
    """Server: the state's delta log with this round's delta appended (newest ``history`` kept) and
    the uploading clients marked as holding the version they trained from."""
    deltas = [*extra.get("deltas", []), delta][-history:] if history else []
    known = {**extra.get("known", {}), **{str(c): delta["version"] - 1 for c in client_ids}}
    return {**extra, "deltas": deltas, "known": known}


def deltas_for(extra: dict, client_id: int, version: int) -> list[Delta] | None:
    """The deltas a client needs to reach ``version``, or None when the log does not reach back."""
    held = extra.get("known", {}).get(str(client_id), 0)
    needed = [d for d in extra.get("deltas", []) if d["version"] > held]
    return needed if len(needed) == version - held else None


def pack(deltas: list[Delta], current_refresh: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Payload tensors and scalars of a delta chain. A sketched P already sent as this round's
    projector (same refresh) is not sent twice."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {"deltas": len(deltas), "delta_base": deltas[0]["version"] - 1 if deltas else -1}
    for j, delta in enumerate(deltas):
        scalars[f"delta{j}_decay"], scalars[f"delta{j}_refresh"] = delta["decay"], delta["refresh"]
        tensors.update({f"dR{j}::{n}": r for n, r in delta["r_bar"].items()})
        if delta["projectors"] is not None and delta["refresh"] != current_refresh:
            tensors.update({f"dP{j}::{n}": p for n, p in delta["projectors"].items()})
    return tensors, scalars


def apply_deltas(
    weights: dict[str, Tensor],
    held: int,
    payload_tensors: dict[str, Tensor],
    scalars: dict[str, Any],
    projectors_of: Callable[[int, int], dict[str, Tensor]],
    update: Callable[[Tensor, float, Tensor, Tensor], Tensor],
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
        weights = {n: update(w, decay, payload_tensors[f"dR{j}::{n}"], projectors[n]) for n, w in weights.items()}
        version = base + j + 1
    return weights, version
