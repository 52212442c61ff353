"""Federated evaluation (config `federated_eval`): every evaluating client scores the model it would
train from on its own held-out rows, and the server aggregates what comes back.

The client side (`evaluate_client`) is one function for both engines: the simulator calls it on its
shared workspace, a Flower node inside its ClientApp. The payload is the server's global tensors
(`ServerState.tensors`: every method's `load_global` writes exactly those, plus fixed zeros), so a
node rebuilds the server's evaluated model and then, for a personalised method, its own part
(`Method.personalize`: FedSA-LoRA's B). The server side (`summarize`) screens each reply (its
example count must be the size the server knows for that client, every metric finite) and logs
per-client metrics, their example-weighted means `fed_<metric>` and the spread of the headline
metric: `fed_<metric>_worst` and `fed_<metric>_p10`.
"""

from __future__ import annotations

import math

import numpy as np

from fedsub.core.method import Method
from fedsub.core.types import ClientUpdate, Payload, ServerState
from fedsub.core.workspace import Workspace
from fedsub.engines.failures import ClientOutcome
from fedsub.engines.setup import FederatedData
from fedsub.tasks.base import Task

EVALUATE = "evaluate"  # the exchange kind; Flower's message type of the same name


def evaluate_client(
    method: Method, workspace: Workspace, data: FederatedData, payload: Payload, client_id: int,
    client_state: dict, round_index: int, batch_size: int,
) -> ClientUpdate:  # fmt: skip
    """The client's metrics on its own evaluation rows; no tensors go back."""
    method.load_global(workspace, ServerState(round=round_index, tensors=dict(payload.tensors)))
    if method.personalize is not None:
        method.personalize(workspace, client_state)
    rows = data.client_eval_data(client_id)
    if len(rows) == 0:
        raise ValueError(f"client {client_id} has no evaluation rows")
    metrics = data.task.evaluate(workspace.model, rows, batch_size, workspace.device)
    return ClientUpdate(client_id, Payload({}), len(rows), {k: float(v) for k, v in metrics.items()})


def evaluating_clients(data: FederatedData, candidates: list[int]) -> list[int]:
    """The candidates known to hold at least one evaluation row (a tiny client may hold none; a node
    that reported no usable data is left out)."""
    return [c for c in candidates if (data.eval_size(c) or 0) > 0]


def screen(update: ClientUpdate, expected_rows: int, keys: tuple[str, ...]) -> str | None:
    """Why an evaluation reply is refused, or None."""
    if update.num_examples != expected_rows:
        return f"num_examples {update.num_examples} != the client's {expected_rows} evaluation rows"
    for key in keys:
        value = update.metrics.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"metric {key!r} is {value!r}, not a finite number"
    return None


def summarize(outcomes: list[ClientOutcome], data: FederatedData) -> dict:
    """The round's federated-evaluation fields (README, "Federated evaluation")."""
    task: Task = data.task
    results, dropped = [], []
    for outcome in outcomes:
        reason = outcome.reason
        if outcome.update is not None:
            reason = screen(outcome.update, data.eval_size(outcome.client_id), task.metric_keys)
        if reason is not None:
            dropped.append({"client": outcome.client_id, "reason": reason})
            continue
        metrics = {k: outcome.update.metrics[k] for k in task.metric_keys}
        results.append({"client": outcome.client_id, "num_examples": outcome.update.num_examples, **metrics})
    return {**aggregate(results, task), "fed_eval": results, "fed_eval_dropped": dropped}


def aggregate(results: list[dict], task: Task) -> dict:
    """Example-weighted means of every metric; worst client and 10th percentile of the headline one."""
    head = task.metric
    if not results:
        return {**{f"fed_{k}": None for k in task.metric_keys}, f"fed_{head}_worst": None, f"fed_{head}_p10": None}
    weights = np.array([r["num_examples"] for r in results], dtype=np.float64)
    weights /= weights.sum()
    means = {f"fed_{k}": float(np.dot(weights, [r[k] for r in results])) for k in task.metric_keys}
    scores = np.array([r[head] for r in results])
    return {**means, f"fed_{head}_worst": float(scores.min()), f"fed_{head}_p10": float(np.percentile(scores, 10))}


def empty(task: Task) -> dict:
    """A round without evaluation: every field present, null."""
    return {**aggregate([], task), "fed_eval": None, "fed_eval_dropped": None}
