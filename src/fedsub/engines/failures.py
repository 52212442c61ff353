"""Failing clients, for any engine: simulated dropouts and stragglers, crashed or diverged local
training, and the round's fate when too few usable updates are left.

Simulated faults are a pure function of (seed, round, client), like client sampling, so a run with
faults is as reproducible (and as exactly resumable) as one without.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from fedsub.config import FailureConfig
from fedsub.core.robust import change_norm
from fedsub.core.seeding import derive_rng
from fedsub.core.types import ClientUpdate, Payload
from fedsub.core.validation import UpdateSpec, validate_update

_FAULT_STREAM = 0xFA17  # keeps the fault draws independent of client sampling's (seed, round) stream


@dataclass
class ClientOutcome:
    """One sampled client's round: its update (None when it failed) or why it was dropped."""

    client_id: int
    update: ClientUpdate | None
    reason: str | None
    seconds: float = 0.0
    keep_state: bool = True  # whether the client's state changes of this round persist
    malformed: bool = False  # a reply came but could not be read: `reason` says why, it counts as rejected


def simulated_fault(cfg: FailureConfig, seed: int, round_index: int, client_id: int) -> str | None:
    """'dropout' (the client never answers), 'straggler' (it answers after the deadline) or None."""
    if cfg.dropout_prob == 0 and cfg.straggler_prob == 0:
        return None
    u_drop, u_late = derive_rng(seed, round_index, client_id, _FAULT_STREAM).random(2)
    if u_drop < cfg.dropout_prob:
        return "dropout"
    if u_late < cfg.straggler_prob:
        return "straggler"
    return None


def run_client(
    cfg: FailureConfig, client_id: int, fault: str | None, train: Callable[[], ClientUpdate]
) -> ClientOutcome:
    """Train one client and decide whether its update reaches the server.

    A dropout never trains (state untouched). A straggler trains (its local state moves on, as a
    real late client's would) but misses the round. An exception or a non-finite loss drops the
    client and discards its state changes (they came from a broken run).
    """
    if fault == "dropout":
        return ClientOutcome(client_id, None, "dropout", keep_state=False)
    tic = time.perf_counter()
    try:
        update = train()
    except Exception as err:  # any failure of one client must not end the federation
        message = str(err).splitlines()[0] if str(err) else ""
        return ClientOutcome(
            client_id, None, f"error: {type(err).__name__}: {message}"[:300], time.perf_counter() - tic, False
        )
    return reply_outcome(cfg, client_id, update, time.perf_counter() - tic, fault)


def train_loss(update: ClientUpdate):
    return update.metrics.get("train_loss") if isinstance(update.metrics, dict) else None


def finite_train_loss(update: ClientUpdate) -> bool:
    loss = train_loss(update)
    return isinstance(loss, (int, float)) and math.isfinite(loss)


def reply_outcome(
    cfg: FailureConfig, client_id: int, update: ClientUpdate, seconds: float, fault: str | None
) -> ClientOutcome:
    """A trained client's reply, as the server takes it (both engines): dropped with its state
    discarded if its train loss is not finite; dropped (state kept) if it is a simulated straggler
    or trained longer than failures.deadline_s."""
    if not finite_train_loss(update):
        return ClientOutcome(client_id, None, f"non-finite train_loss {train_loss(update)!r}", seconds, False)
    if fault == "straggler":
        return ClientOutcome(client_id, None, "straggler", seconds)
    if cfg.deadline_s is not None and seconds > cfg.deadline_s:
        return ClientOutcome(
            client_id, None, f"deadline: trained {seconds:.2f} s > deadline_s {cfg.deadline_s:g}", seconds
        )
    return ClientOutcome(client_id, update, None, seconds)


def skip_reason(cfg: FailureConfig, accepted: int) -> str | None:
    """Why the round cannot aggregate (None: it can)."""
    if accepted < cfg.min_clients:
        return f"{accepted} usable update{'s' if accepted != 1 else ''} < min_clients {cfg.min_clients}"
    return None


def screen_outcomes(
    outcomes: list[ClientOutcome],
    sent: dict[int, Payload],
    expected: Callable[[int, Payload], UpdateSpec],
    max_norm: float | None,
    known_examples: Callable[[int], int | None] = lambda client_id: None,
    max_norm_relative: float | None = None,
) -> tuple[list[ClientUpdate], list[dict], list[dict]]:
    """Split a round's replies into the accepted updates, the dropped clients and the rejected
    updates (each with its reason, as metrics.jsonl records them), validating every reply against
    `expected(client_id, payload sent)`, what the method declares an honest reply holds, and its
    example count against `known_examples(client_id)`, what the server knows of the client."""
    accepted, dropped, rejected = [], [], []
    for o in outcomes:
        if o.malformed:
            rejected.append({"client": o.client_id, "reason": o.reason})
            continue
        if o.update is None:
            dropped.append({"client": o.client_id, "reason": o.reason})
            continue
        spec = expected(o.client_id, sent[o.client_id])
        known = known_examples(o.client_id)
        reason = validate_update(o.update, spec, sent[o.client_id], max_norm, o.client_id, known)
        if reason:
            rejected.append({"client": o.client_id, "reason": reason})
        else:
            accepted.append(o.update)
    if max_norm_relative is not None and len(accepted) >= 3:
        accepted, outliers = relative_outliers(accepted, sent, max_norm_relative)
        rejected += outliers
    return accepted, dropped, rejected


def relative_outliers(
    updates: list[ClientUpdate], sent: dict[int, Payload], factor: float
) -> tuple[list[ClientUpdate], list[dict]]:
    """Updates whose whole change norm exceeds `factor` x the round's median change norm are rejected:
    one client scaling its update by 10^6 cannot move the model, whatever the tensors' own scale
    (a fixed max_norm fits one tensor kind; a sketch and a factor differ by orders of magnitude)."""
    norms = [change_norm(u, sent[u.client_id].tensors) for u in updates]
    bound = factor * float(np.median(norms))
    kept, outliers = [], []
    for u, norm in zip(updates, norms):
        if norm > bound:
            outliers.append(
                {"client": u.client_id, "reason": f"change norm {norm:.4g} > {factor:g} x the round's median "
                 f"{bound / factor:.4g} (validation.max_norm_relative)"}
            )  # fmt: skip
        else:
            kept.append(u)
    return kept, outliers
