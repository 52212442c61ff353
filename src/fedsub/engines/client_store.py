"""The simulator's client states under a memory budget: the most recently used in memory, the rest
spilled to disk, loaded on demand.

A population of 2,000 simulated clients of which 10 train per round must not hold 2,000 optimizer
states in memory (fedgalore `sync: none` on MiniLM: ~4 MB each), nor write them all into every
checkpoint. So a state lives in memory while it is among the most recently used that fit
`clients.state_memory_mb`; past that, the least recently used is written to
`<run>/client_states/client-<id>-<serial>.safetensors` (atomically: temp file + rename) and dropped
from memory. A checkpoint writes only the states that changed since they were last written and
references the files (`manifest`); a file is deleted once no committed checkpoint and no live state
references it, so a run killed at any moment can resume from its last checkpoint's files.

A file holds one state as the checkpoint's nested encoding (fedsub.core.checkpoint.encode): the
structure as JSON in the safetensors metadata, the tensors as safetensors. Its size and sha256 are in
the manifest; a missing, truncated or altered file is refused in one line naming it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from fedsub.core.checkpoint import decode, encode
from fedsub.core.io import atomic_write_bytes
from fedsub.errors import CheckpointError, ConfigError

BUDGET_FIELD = "clients.state_memory_mb"
STATE_OVERHEAD = 1024  # bytes counted per state beyond its tensors: the dict, ints, strings
_NAME = re.compile(r"client-(\d+)-(\d+)\.safetensors")


@dataclass(frozen=True)
class StateFile:
    """One spilled state: its file name in the store's folder, its size and checksum."""

    name: str
    bytes: int
    sha256: str


def state_bytes(value: Any) -> int:
    """Memory a state holds: its tensors' bytes (each storage once) plus a fixed overhead."""
    seen: set[int] = set()

    def walk(v: Any) -> int:
        if isinstance(v, torch.Tensor):
            key = v.untyped_storage().data_ptr()
            if key in seen:
                return 0
            seen.add(key)
            return v.untyped_storage().nbytes()
        if isinstance(v, dict):
            return sum(walk(x) for x in v.values())
        if isinstance(v, (list, tuple)):
            return sum(walk(x) for x in v)
        return 0

    return walk(value) + STATE_OVERHEAD


class ClientStateStore(Mapping[int, dict]):
    """Client id -> state dict, at most `budget_bytes` of them in memory (see the module docstring)."""

    def __init__(self, folder: Path, budget_bytes: float):
        self.folder, self.budget = Path(folder), float(budget_bytes)  # float: 0.001 MB prints as 0.001
        self.memory: OrderedDict[int, dict[str, Any]] = OrderedDict()  # least recently used first
        self.sizes: dict[int, int] = {}
        self.in_memory_bytes = 0
        self.files: dict[int, StateFile] = {}  # the file that holds a state's current value, if any
        self.committed: set[str] = set()  # files the last committed checkpoint references
        self.serial = self._next_serial()
        self.written_bytes = 0  # bytes of state files written so far (benchmarks read it)

    # ---------------------------------------------------------------- the mapping
    def __getitem__(self, client_id: int) -> dict[str, Any]:
        if client_id in self.memory:
            self.memory.move_to_end(client_id)
            return self.memory[client_id]
        if client_id not in self.files:
            raise KeyError(client_id)
        state = self._read(self.files[client_id])
        self._hold(client_id, state)  # clean: its file still holds it
        return state

    def __contains__(self, client_id: object) -> bool:
        return client_id in self.memory or client_id in self.files

    def __iter__(self) -> Iterator[int]:
        return iter(sorted({*self.memory, *self.files}))

    def __len__(self) -> int:
        return len({*self.memory, *self.files})

    def put(self, client_id: int, state: dict[str, Any]) -> None:
        """`state` becomes the client's current state (its older file, if any, is stale)."""
        stale = self.files.pop(client_id, None)
        if stale is not None and stale.name not in self.committed:
            (self.folder / stale.name).unlink(missing_ok=True)
        self._hold(client_id, state)

    # ---------------------------------------------------------------- checkpoints
    def manifest(self) -> dict[int, dict[str, Any]]:
        """Write every state that changed since it was last written; client id -> its file, for a checkpoint."""
        for client_id, state in self.memory.items():
            if client_id not in self.files:
                self.files[client_id] = self._write(client_id, state)
        return {c: asdict(f) for c, f in sorted(self.files.items())}

    def committed_to(self, manifest: dict[int, dict[str, Any]]) -> None:
        """The checkpoint holding `manifest` is committed: files neither it nor a live state references go."""
        self.committed = {entry["name"] for entry in manifest.values()}
        live = self.committed | {f.name for f in self.files.values()}
        if self.folder.is_dir():
            for path in self.folder.iterdir():
                if path.name not in live and (_NAME.fullmatch(path.name) or path.name.endswith(".tmp")):
                    path.unlink(missing_ok=True)

    def restore(self, manifest: dict[int, dict[str, Any]], where: Path) -> None:
        """Continue from a checkpoint's `manifest`: every file must be there with its size (checked now,
        its checksum when it is loaded); nothing on disk is changed by a refusal."""
        files = {int(c): StateFile(**entry) for c, entry in manifest.items()}
        for client_id, ref in files.items():
            path = self.folder / ref.name
            size = path.stat().st_size if path.is_file() else None
            if size != ref.bytes:
                found = "missing" if size is None else f"{size} bytes, not {ref.bytes}"
                raise CheckpointError(
                    f"checkpoint {where}: client {client_id}'s state file {path} is {found}; restore the file, "
                    f"or delete {where} to restart this method from round 1"
                )
        self.memory.clear()
        self.sizes.clear()
        self.in_memory_bytes = 0
        self.files, self.committed = files, {f.name for f in files.values()}
        self.serial = self._next_serial()

    # ---------------------------------------------------------------- memory and files
    def _hold(self, client_id: int, state: dict[str, Any]) -> None:
        size = state_bytes(state)
        if size > self.budget:
            need = f"{math.ceil(size / 2**20 * 100) / 100:g}"  # MB, rounded up to 0.01
            raise ConfigError(
                f"{BUDGET_FIELD}: {self.budget / 2**20:g} MB is less than one client's state "
                f"({size / 2**20:.3g} MB, client {client_id}); raise it to at least {need}"
            )
        if client_id in self.memory:
            self.in_memory_bytes -= self.sizes[client_id]
        self.memory[client_id], self.sizes[client_id] = state, size
        self.memory.move_to_end(client_id)
        self.in_memory_bytes += size
        while self.in_memory_bytes > self.budget:
            self._spill_oldest()

    def _spill_oldest(self) -> None:
        client_id, state = self.memory.popitem(last=False)
        self.in_memory_bytes -= self.sizes.pop(client_id)
        if client_id not in self.files:  # changed since written (or never written)
            self.files[client_id] = self._write(client_id, state)

    def _write(self, client_id: int, state: dict[str, Any]) -> StateFile:
        tensors: dict[str, torch.Tensor] = {}
        structure = encode(state, tensors, {}, f"client {client_id}")
        data = safetensors.torch.save(tensors, metadata={"fedsub": json.dumps(structure)})
        name = f"client-{client_id}-{self.serial:08d}.safetensors"
        self.serial += 1
        atomic_write_bytes(self.folder / name, data)
        self.written_bytes += len(data)
        return StateFile(name, len(data), hashlib.sha256(data).hexdigest())

    def _read(self, ref: StateFile) -> dict[str, Any]:
        path = self.folder / ref.name
        fix = "restore the file, or delete the run's checkpoint to restart this method from round 1"
        try:
            data = path.read_bytes()
        except OSError as err:
            raise CheckpointError(f"client state file {path} cannot be read ({err.strerror}); {fix}") from None
        if len(data) != ref.bytes or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise CheckpointError(f"client state file {path} changed since it was written (size or checksum); {fix}")
        try:
            header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
            return decode(json.loads(header["__metadata__"]["fedsub"]), safetensors.torch.load(data))
        except Exception as err:  # a file with the right checksum but not ours: a bug, still one line
            raise CheckpointError(f"client state file {path} is not a fedsub client state ({err}); {fix}") from None

    def _next_serial(self) -> int:
        """One past the highest serial in the folder: a resumed run never reuses a killed run's names."""
        serials = [int(m.group(2)) for p in self.folder.glob("client-*.safetensors") if (m := _NAME.fullmatch(p.name))]
        return max(serials, default=-1) + 1
