"""Payload <-> Flower records: what crosses the wire, converted exactly (every dtype, bf16 included).

A `Payload` maps onto one RecordDict: its tensors into the ArrayRecord "tensors", its scalars into the
ConfigRecord "scalars". numpy has no bfloat16 and flwr 1.41 rejects bf16 arrays, so a bf16 tensor
travels as its int16 bit pattern (same bytes, same size) and the names of such tensors are listed in
the ConfigRecord "meta"; the receiver views the bits back as bf16. Everything else goes through numpy
unchanged, so a round trip is bit-exact.
"""

from __future__ import annotations

import io
import json
from typing import Any

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedsub.core.types import ClientUpdate, Payload, Tensors

TENSORS, SCALARS, META, METRICS = "tensors", "scalars", "meta", "metrics"
# torch dtypes that numpy cannot hold, sent as an integer view of the same width.
VIEWED = {torch.bfloat16: torch.int16}


def tensor_to_array(tensor: torch.Tensor) -> tuple[Array, bool]:
    """An Array holding the tensor's bytes; True when it travels as a bit view (bf16)."""
    tensor = tensor.detach().to("cpu").contiguous()
    viewed = tensor.dtype in VIEWED
    if viewed:
        tensor = tensor.view(VIEWED[tensor.dtype])
    return Array(tensor.numpy()), viewed


def array_to_tensor(array: Array, viewed: bool) -> torch.Tensor:
    # np.load returns a fresh, writable, C-ordered array (0-d kept 0-d); from_numpy shares it.
    tensor = torch.from_numpy(array.numpy())
    return tensor.view(torch.bfloat16) if viewed else tensor


def tensors_to_record(tensors: Tensors) -> tuple[ArrayRecord, list[str]]:
    record, viewed = ArrayRecord(), []
    for name, tensor in tensors.items():
        record[name], bits = tensor_to_array(tensor)
        if bits:
            viewed.append(name)
    return record, viewed


def record_to_tensors(record: ArrayRecord, viewed: list[str]) -> Tensors:
    bits = set(viewed)
    return {name: array_to_tensor(array, name in bits) for name, array in record.items()}


def payload_to_record(payload: Payload, extra: dict[str, Any] | None = None) -> RecordDict:
    """The payload as a RecordDict; `extra` (round, client id, ...) goes into "meta"."""
    arrays, viewed = tensors_to_record(payload.tensors)
    meta = {"bf16_views": json.dumps(viewed), **(extra or {})}
    return RecordDict({TENSORS: arrays, SCALARS: ConfigRecord(dict(payload.scalars)), META: ConfigRecord(meta)})


def record_to_payload(content: RecordDict) -> tuple[Payload, dict[str, Any]]:
    meta = dict(content.config_records[META])
    viewed = json.loads(meta.pop("bf16_views"))
    tensors = record_to_tensors(content.array_records[TENSORS], viewed)
    return Payload(tensors, dict(content.config_records[SCALARS])), meta


def update_to_record(update: ClientUpdate) -> RecordDict:
    """A client's reply: its payload, example count and train metrics (floats kept as float64)."""
    content = payload_to_record(update.payload, {"client_id": update.client_id, "num_examples": update.num_examples})
    content[METRICS] = ConfigRecord({k: float(v) for k, v in update.metrics.items()})
    return content


def record_to_update(content: RecordDict) -> ClientUpdate:
    payload, meta = record_to_payload(content)
    metrics = dict(content.config_records[METRICS])
    return ClientUpdate(int(meta["client_id"]), payload, int(meta["num_examples"]), metrics)


# ---------------------------------------------------------------- client state in context.state

STATE_KEY = "fedsub"


def save_client_state(context_state: RecordDict, state: dict[str, Any]) -> None:
    """Keep a client's persistent store (nested dicts of tensors, optimizer states) in context.state.

    Its shape is the method's business (FedFTG keeps a whole optimizer state), so it is stored as one
    torch.save blob: it never leaves the node, only the node's own process reads it back.
    """
    if not state:  # nothing to keep (fedit & co.): the node then says it holds no state
        context_state.pop(STATE_KEY, None)
        return
    buffer = io.BytesIO()
    torch.save(state, buffer)
    context_state[STATE_KEY] = ConfigRecord({"state": buffer.getvalue()})


def holds_client_state(context_state: RecordDict) -> bool:
    return STATE_KEY in context_state


def load_client_state(context_state: RecordDict) -> dict[str, Any]:
    if STATE_KEY not in context_state:
        return {}
    blob = context_state.config_records[STATE_KEY]["state"]
    return torch.load(io.BytesIO(blob), weights_only=True)
