"""Payload <-> Flower records: what crosses the wire, converted exactly (every dtype, bf16 included).

A `Payload` maps onto one RecordDict: all its tensors packed into one uint8 Array (the ArrayRecord
"tensors", key "packed"), their names, dtypes and shapes as a JSON index in the ConfigRecord "meta",
its scalars into the ConfigRecord "scalars". One Array because flwr 1.41 moves every Array as at
least two objects (the Array and its chunk) and every object as one HTTP request per hop: a fedit
message of 60 tensors was 61 objects, ~3 s to pull on loopback (benchmarks/RESULTS.md, "Flower"),
and is 3 packed. The bytes are the tensors' own (bf16 too, which numpy cannot hold), so a round trip
is bit-exact and the size is the payload's plus the index.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedsub.core.types import ClientUpdate, Payload, Tensors

TENSORS, SCALARS, META, METRICS = "tensors", "scalars", "meta", "metrics"
PACKED, INDEX = "packed", "tensor_index"
# the dtypes a payload may carry, by name: a name from the wire is looked up here, never evaluated
DTYPES = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        torch.float32, torch.float64, torch.float16, torch.bfloat16,
        torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool,
    )
}  # fmt: skip


def tensors_to_record(tensors: Tensors) -> tuple[ArrayRecord, str]:
    """Every tensor's bytes back to back in one uint8 Array, and the JSON index [[name, dtype, shape]]."""
    index, parts = [], []
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.dtype not in DTYPES.values():
            raise ValueError(f"tensor {name!r}: dtype {tensor.dtype} cannot be sent")
        index.append([name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)])
        parts.append(tensor.reshape(-1).view(torch.uint8))
    blob = torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)
    return ArrayRecord({PACKED: Array(blob.numpy())}), json.dumps(index)


def record_to_tensors(record: ArrayRecord, index_json: str) -> Tensors:
    """The tensors back, bit-exact; an index that does not match the bytes is a ValueError. No packed
    array reads as no tensors (a SecAgg+ reply: Flower's mod clears the arrays it masked)."""
    packed = record[PACKED].numpy() if PACKED in record else None
    blob = torch.empty(0, dtype=torch.uint8) if packed is None else torch.from_numpy(packed).reshape(-1)
    if blob.dtype != torch.uint8:
        raise ValueError(f"packed tensors must be uint8 bytes, got {blob.dtype}")
    tensors, offset = {}, 0
    for name, dtype_name, shape in json.loads(index_json):
        dtype = DTYPES.get(dtype_name)
        if dtype is None:
            raise ValueError(f"tensor {name!r}: unknown dtype {dtype_name!r}")
        size = math.prod(shape) * dtype.itemsize
        if offset + size > blob.numel():
            raise ValueError(f"tensor {name!r}: its {size} bytes run past the {blob.numel()} sent")
        # clone first: a fresh buffer starts aligned, so view(dtype) is valid for every width
        tensors[name] = blob[offset : offset + size].clone().view(dtype).reshape(shape)
        offset += size
    if offset != blob.numel():
        raise ValueError(f"{blob.numel() - offset} packed bytes are not in the tensor index")
    return tensors


def payload_to_record(payload: Payload, extra: dict[str, Any] | None = None) -> RecordDict:
    """The payload as a RecordDict; `extra` (round, client id, ...) goes into "meta"."""
    arrays, index = tensors_to_record(payload.tensors)
    meta = {INDEX: index, **(extra or {})}
    return RecordDict({TENSORS: arrays, SCALARS: ConfigRecord(dict(payload.scalars)), META: ConfigRecord(meta)})


def record_to_payload(content: RecordDict) -> tuple[Payload, dict[str, Any]]:
    meta = dict(content.config_records[META])
    tensors = record_to_tensors(content.array_records[TENSORS], meta.pop(INDEX))
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
