"""Crash-safe checkpoints of a running method: everything needed to continue it bit for bit.

Engine-agnostic: a checkpoint is the server state, the metrics records so far and the RNG states,
as nested Python values whose tensors go into one safetensors file and whose structure goes into
JSON, plus references to the client states and a digest of the partition (the run stores the
partition itself once, in partition.json). The simulator's client states are files of its state
store (fedsub.engines.client_store: written when they change, referenced here by name, size and
sha256), so a checkpoint costs the server state plus the states that changed since the last one,
not the whole population. Under Flower the client states stay on the nodes; the checkpoint then
names the clients that hold one (`clients_on_nodes`), so a resume can tell whether it would be exact.

Layout of a checkpoint folder (one per method):
  state-<round>.safetensors   the tensors of the checkpoint taken after <round> rounds
  checkpoint.json             the pointer: round, structure, records, client files, sha256 of the tensors file
  client_states/              the state store's files (engines/client_store.py)

Atomicity: the tensors file is written (temp file + rename) first, the pointer second; the pointer
rename is the commit. A process killed at any moment leaves either the previous pointer with its
tensors file (still on disk: older files are deleted only after the new pointer is in place) or the
new pair. Stale temp files of a killed write are swept on the next save.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from fedsub.core.io import atomic_write_text, atomic_writer
from fedsub.core.types import ServerState, extra_name, extra_type
from fedsub.errors import CheckpointError

FORMAT = "fedsub-checkpoint-3"
# 1 held the client states and the partition inline; 1 and 2 have no content hash (their records and
# structure are read as they are); 3 covers the whole pointer with `content_sha256`
READABLE = ("fedsub-checkpoint-1", "fedsub-checkpoint-2", FORMAT)
# what a checkpoint may name, looked up, never evaluated (`getattr(torch, name)` took any attribute)
TORCH_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int16, torch.int32,
              torch.int64, torch.uint8, torch.bool)
}  # fmt: skip
NUMPY_SCALARS = {
    np.dtype(t).str: np.dtype(t).type
    for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint64, np.uint32,
              np.uint16, np.uint8, np.bool_)
}  # fmt: skip
DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")
POINTER = "checkpoint.json"
# Test hook: "STAGE:ROUND" kills the process with SIGKILL at STAGE of the checkpoint after ROUND rounds.
# Stages: tensors-half (half the tensors file written), tensors-written, pointer-written.
CRASH_ENV = "FEDSUB_CRASH_AT"


@dataclass
class Checkpoint:
    """One method's run after `round` rounds."""

    round: int
    server: ServerState
    clients: dict[int, dict[str, Any]]  # client states held inline (format 1; the simulator now uses client_files)
    records: list[dict[str, Any]]
    partition_sha256: str  # partition_digest of the partition it was taken on
    rng: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""  # identifies the config that produced it
    clients_on_nodes: list[int] = field(default_factory=list)  # clients whose state is on their own node, not here
    client_files: dict[int, dict[str, Any]] = field(default_factory=dict)  # client id -> its state file (StateFile)


def partition_digest(parts: list[torch.Tensor]) -> str:
    """sha256 of a partition (each client's sorted example ids, in client order)."""
    digest = hashlib.sha256()
    for rows in parts:
        data = torch.as_tensor(rows, dtype=torch.int64).contiguous().numpy().tobytes()
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


# ---------------------------------------------------------------- nested values <-> JSON + tensors


def encode(value: Any, tensors: dict[str, torch.Tensor], seen: dict[int, str], where: str = "") -> Any:
    """JSON-able structure of `value`; its tensors are moved into `tensors` under generated keys.

    Dicts become {"$dict": [[key, value], ...]} so int keys (client ids, parameter indices) stay int;
    a tensor object referenced twice is stored once (FedGaLore's clients share the version-0 weights);
    a method's typed server state (registered with fedsub.core.types.server_extra) is stored by its
    registered name and fields.
    """
    if isinstance(value, torch.Tensor):
        order = dense_order(value)
        if value.numel() and not value.permute(order).is_contiguous():  # a view into a larger buffer
            node = {"$strided": _tensor_key(value, tensors, seen, stored=strided_span(value)),
                    "size": list(value.shape), "stride": list(value.stride()), "device": str(value.device)}  # fmt: skip
            return node
        node = {"$tensor": _tensor_key(value, tensors, seen, order), "device": str(value.device)}
        return {**node, "order": order} if order != list(range(value.dim())) else node
    if isinstance(value, np.ndarray):
        return {"$ndarray": _tensor_key(torch.from_numpy(np.ascontiguousarray(value)), tensors, seen)}
    if isinstance(value, dict):
        return {
            "$dict": [
                [encode(k, tensors, seen, where), encode(v, tensors, seen, f"{where}.{k}")] for k, v in value.items()
            ]
        }
    if isinstance(value, tuple):
        return {"$tuple": [encode(v, tensors, seen, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, tensors, seen, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return {"$numpy": value.dtype.str, "value": value.item()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.dtype):
        return {"$dtype": str(value).removeprefix("torch.")}
    if dataclasses.is_dataclass(value) and extra_name(type(value)) is not None:  # a method's typed server state
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {"$state": extra_name(type(value)), "fields": encode(fields, tensors, seen, where)}
    raise TypeError(f"checkpoint: cannot store {type(value).__name__} at {where or '<top>'}")


def dense_order(tensor: torch.Tensor) -> list[int]:
    """The dimension order in which `tensor` is laid out in memory (outermost first).

    Kept because layout changes results: a GaLore projector stored transposed (strides (1, 8))
    and restored contiguous gave 1-ulp different weights after the next round (measured).
    """
    dims = sorted(range(tensor.dim()), key=lambda d: (-tensor.stride(d), d))
    return dims if tensor.permute(dims).is_contiguous() else list(range(tensor.dim()))


def strided_span(tensor: torch.Tensor) -> torch.Tensor:
    """The stretch of `tensor`'s storage its elements lie in, flat: `span.as_strided(size, stride)`
    is `tensor` again with its very strides. Kept for views that are not dense (GaLore's projector:
    8 rows of a 32 x 32 Q, strides (1, 32)): stored compact, fedftg's next round differed in the
    last digits (measured), as with the transposed layout `dense_order` keeps."""
    length = 1 + sum((n - 1) * st for n, st in zip(tensor.shape, tensor.stride()))
    return tensor.detach().as_strided((length,), (1,), tensor.storage_offset())


def _tensor_key(
    tensor: torch.Tensor,
    tensors: dict[str, torch.Tensor],
    seen: dict[int, str],
    order: list[int] | None = None,
    stored: torch.Tensor | None = None,
) -> str:
    """The key `tensor` is stored under (once per object); `stored` replaces it in the file (a span)."""
    if id(tensor) in seen:
        return seen[id(tensor)]
    key = f"t{len(tensors)}"
    laid_out = stored if stored is not None else tensor.detach().permute(order) if order else tensor.detach()
    # always a fresh compact copy (one, even from a GPU): safetensors refuses tensors that share
    # storage (views of one optimizer buffer)
    tensors[key] = laid_out.to("cpu", memory_format=torch.contiguous_format, copy=True)
    seen[id(tensor)] = key
    return key


def decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `encode`."""
    if isinstance(node, list):
        return [decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if "$tensor" in node:
        value = tensors[node["$tensor"]].to(_available(node["device"]))
        order = node.get("order")
        return value.permute([order.index(d) for d in range(len(order))]) if order else value
    if "$strided" in node:
        return tensors[node["$strided"]].to(_available(node["device"])).as_strided(node["size"], node["stride"])
    if "$ndarray" in node:
        return tensors[node["$ndarray"]].numpy().copy()
    if "$dict" in node:
        return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in node["$dict"]}
    if "$tuple" in node:
        return tuple(decode(v, tensors) for v in node["$tuple"])
    if "$numpy" in node:
        return _allowed(NUMPY_SCALARS, node["$numpy"], "numpy type")(node["value"])
    if "$dtype" in node:
        return _allowed(TORCH_DTYPES, node["$dtype"], "torch dtype")
    if "$state" in node:
        cls = extra_type(node["$state"])
        if cls is None:
            raise CheckpointError(f"it holds server state {node['$state']!r}, which no loaded method defines")
        return cls(**decode(node["fields"], tensors))
    raise CheckpointError(f"unknown entry {sorted(node)}")


def _allowed(table: dict[str, Any], name: Any, what: str) -> Any:
    if not isinstance(name, str) or name not in table:
        raise CheckpointError(f"it names {what} {str(name)[:40]!r}, not one a checkpoint holds")
    return table[name]


def _available(device: Any) -> str:
    if not isinstance(device, str) or not DEVICE.fullmatch(device):
        raise CheckpointError(f"it names device {str(device)[:40]!r}, not cpu or cuda[:N]")
    # Without this, torch's own "Torch not compiled with CUDA enabled" traceback would be the message.
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError(
            f"it holds tensors on {device}, but torch sees no CUDA device here; resume on a machine with CUDA"
        )
    return device


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


# ---------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """The global RNGs (the simulator seeds per client, but a method may draw from the globals)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- save / load


def crash_point(stage: str, round_done: int) -> None:
    """SIGKILL this process at `stage` when FEDSUB_CRASH_AT says so (crash-safety tests only)."""
    if os.environ.get(CRASH_ENV) == f"{stage}:{round_done}":
        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(folder: str | Path, ckpt: Checkpoint) -> Path:
    """Write `ckpt` into `folder` (see the module docstring for why a kill never corrupts it)."""
    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    structure = {
        "server": {"round": ckpt.server.round, "tensors": encode(ckpt.server.tensors, tensors, seen, "server"),
                   "extra": encode(ckpt.server.extra, tensors, seen, "server.extra")},
        "clients": encode(ckpt.clients, tensors, seen, "clients"),
        "rng": encode(ckpt.rng, tensors, seen, "rng"),
    }  # fmt: skip
    data = safetensors.torch.save(tensors)
    name = f"state-{ckpt.round:05d}.safetensors"
    with atomic_writer(folder / name) as handle:
        handle.write(data[: len(data) // 2])
        crash_point("tensors-half", ckpt.round)
        handle.write(data[len(data) // 2 :])
    crash_point("tensors-written", ckpt.round)
    pointer = {"format": FORMAT, "round": ckpt.round, "fingerprint": ckpt.fingerprint, "tensors_file": name,
               "tensors_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
               "structure": structure, "records": ckpt.records,
               "clients_on_nodes": list(ckpt.clients_on_nodes), "partition_sha256": ckpt.partition_sha256,
               "client_files": [[c, f] for c, f in sorted(ckpt.client_files.items())]}  # fmt: skip
    pointer["content_sha256"] = content_digest(pointer)
    atomic_write_text(folder / POINTER, json.dumps(pointer))
    crash_point("pointer-written", ckpt.round)
    for stale in folder.iterdir():  # older tensors files and temp files of killed writes
        if (
            stale.name != name
            and stale.name != POINTER
            and (stale.suffix == ".safetensors" or stale.name.endswith(".tmp"))
        ):
            stale.unlink(missing_ok=True)
    return folder / POINTER


def content_digest(pointer: dict[str, Any]) -> str:
    """sha256 of the pointer's canonical JSON without its own digest: records, structure, client files
    and the tensors file's hash, so an edit to any of them is caught on resume."""
    body = {k: v for k, v in pointer.items() if k != "content_sha256"}
    canonical = json.loads(json.dumps(body))  # as it reads back: int dict keys become strings, tuples lists
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def checkpoint_round(folder: str | Path) -> int:
    """Rounds done by the checkpoint in `folder` (0 when there is none or it is unreadable)."""
    try:
        return int(json.loads((Path(folder) / POINTER).read_text())["round"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def checkpoint_clients_on_nodes(folder: str | Path) -> list[int]:
    """The clients whose state the checkpoint in `folder` left on their nodes ([] when none or unreadable);
    read from the pointer alone, without loading the tensors."""
    try:
        return [int(c) for c in json.loads((Path(folder) / POINTER).read_text()).get("clients_on_nodes", [])]
    except (OSError, ValueError, AttributeError, TypeError):
        return []


def load_checkpoint(folder: str | Path) -> Checkpoint | None:
    """The checkpoint in `folder`, None when there is none; CheckpointError when it is unreadable."""
    folder = Path(folder)
    path = folder / POINTER
    if not path.is_file():
        return None
    fix = f"delete {folder} to restart this method from round 1"
    try:
        pointer = json.loads(path.read_text())
        if not isinstance(pointer, dict) or pointer.get("format") not in READABLE:
            raise ValueError(f"not a {FORMAT} file")
        if pointer["format"] == FORMAT and pointer.get("content_sha256") != content_digest(pointer):
            raise ValueError("its records or structure do not match its content_sha256 (edited after writing)")
        tensors = _read_tensors(folder / pointer["tensors_file"], pointer)
        structure = pointer["structure"]
        server = structure["server"]
        return Checkpoint(
            round=int(pointer["round"]),
            server=ServerState(
                int(server["round"]), decode(server["tensors"], tensors), decode(server["extra"], tensors)
            ),
            clients=decode(structure["clients"], tensors),
            records=list(pointer["records"]),
            partition_sha256=str(pointer.get("partition_sha256") or _inline_partition(structure, tensors)),
            rng=decode(structure["rng"], tensors),
            fingerprint=str(pointer.get("fingerprint", "")),
            clients_on_nodes=[int(c) for c in pointer.get("clients_on_nodes", [])],
            client_files={int(c): dict(f) for c, f in pointer.get("client_files", [])},
        )
    except CheckpointError as err:
        raise CheckpointError(f"checkpoint {path}: {err}") from None
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({reason}); {fix}") from None


def _inline_partition(structure: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """The partition digest of a format-1 checkpoint, which held the partition itself."""
    return partition_digest(decode(structure["partition"], tensors))


def _read_tensors(path: Path, pointer: dict[str, Any]) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ValueError(f"its tensors file {path.name} is missing")
    data = path.read_bytes()
    if len(data) != pointer["tensors_bytes"] or hashlib.sha256(data).hexdigest() != pointer["sha256"]:
        raise ValueError(f"{path.name} has {len(data)} bytes or a checksum that does not match the pointer")
    try:
        return safetensors.torch.load(data)
    except Exception as err:  # safetensors raises its own SafetensorError on a bad header
        raise ValueError(f"{path.name}: {err}") from None
