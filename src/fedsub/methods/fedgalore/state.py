"""FedGaLore's typed server state (`ServerState.extra`), instead of a dict of string keys: the
current projectors, the synchronised moments, and the factored downlink's delta log. Frozen:
the server replaces it each round (`dataclasses.replace`), it never edits it; checkpoints store it
by its registered name."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedsub.core.types import Tensors, server_extra


@server_extra("fedgalore.delta")
@dataclass(frozen=True)
class Delta:
    """One round's change of the global matrices: W^version = decay W^(version - 1) + R_bar P."""

    version: int
    decay: float  # c_bar, the clients' mean decay product
    r_bar: Tensors  # matrix -> R_bar
    refresh: int  # the projector's refresh index (rebuilds a random P from the seed)
    projectors: Tensors | None  # a sketched P (None: random, so not kept)


@server_extra("fedgalore")
@dataclass(frozen=True)
class FedGaLoreState:
    projectors: Tensors  # matrix -> this round's shared P
    refresh: int = 0  # refresh index of `projectors`
    proj_sketched: bool = False  # `projectors` came from a sketch (then they are sent down)
    v_hat: Tensors = field(
        default_factory=dict
    )  # matrix -> synchronised second moment (empty: none yet, or not synced)
    v_step: float = 0.0  # the step count V_hat's bias correction continues from
    deltas: list[Delta] = field(default_factory=list)  # factored downlink: the newest `downlink_history` deltas
    known: dict[int, int] = field(default_factory=dict)  # client id -> newest global version it is known to hold
