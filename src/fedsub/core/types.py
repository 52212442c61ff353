"""The types every method and engine speak (after fedjax's pure algorithms, in Flower's vocabulary);
the method contract itself is fedsub.core.method.

A `Payload` is exactly what crosses the wire: named tensors plus a few scalars. Bytes up and down are
measured from payloads, and a payload maps 1:1 onto Flower's ArrayRecord / ConfigRecord, so it stays
a flat name -> tensor map; a method whose payload carries several kinds of tensor names them through
one codec of its own (FedGaLore: fedsub.methods.fedgalore.keys).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

import torch

Scalar = int | float | str | bool
Tensors = dict[str, torch.Tensor]


@dataclass
class Payload:
    """Named tensors and scalars sent between server and client."""

    tensors: Tensors = field(default_factory=dict)
    scalars: dict[str, Scalar] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Exact bytes of the tensors (what a wire format must carry at least); scalars excluded."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


@dataclass
class ClientUpdate:
    """A client's reply: its payload, its example count (the FedAvg weight) and train metrics."""

    client_id: int
    payload: Payload
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


E = TypeVar("E")


@dataclass
class ServerState(Generic[E]):
    """Everything the server carries between rounds. Methods never keep state elsewhere.

    `tensors` is the global trainable state (what a checkpoint must hold); `extra` is the method's own
    typed server state (FedGaLore's projectors, moments and delta log; FFA-LoRA's frozen A), a
    dataclass registered with `server_extra` so that checkpoints store and restore it, or None.
    """

    round: int = 0
    tensors: Tensors = field(default_factory=dict)
    extra: E | None = None


_EXTRA_TYPES: dict[str, type] = {}
_EXTRA_NAMES: dict[type, str] = {}


def server_extra(name: str) -> Callable[[type], type]:
    """Register a dataclass as a method's server state (`ServerState.extra`, or a part of it) under
    `name`, the key its checkpoints store it by (a name, not the module path, so modules can move)."""

    def wrap(cls: type) -> type:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"server state {name!r}: {cls.__name__} is not a dataclass")
        if _EXTRA_TYPES.setdefault(name, cls) is not cls:
            raise ValueError(f"server state {name!r} registered twice")
        _EXTRA_NAMES[cls] = name
        return cls

    return wrap


def extra_type(name: str) -> type | None:
    """The server-state dataclass registered under `name` (None: none is)."""
    return _EXTRA_TYPES.get(name)


def extra_name(cls: type) -> str | None:
    """The name `cls` was registered under with `server_extra` (None: it was not)."""
    return _EXTRA_NAMES.get(cls)


@dataclass(frozen=True)
class LocalDP:
    """A client's DP-SGD settings (privacy.dp local; core/dp_sgd.py): C, z, and whether the noise is
    seeded by the run (reproducible: the simulator) or by the OS (a deployment: the server knows the
    run seed)."""

    clip_norm: float
    noise_multiplier: float
    os_noise: bool = False


@dataclass
class TrainSettings:
    """Local-training settings of one client in one round (resolved from the config)."""

    lr: float
    batch_size: int
    local_steps: int | None = None
    local_epochs: float | None = None
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    head_lr: float | None = (
        None  # the run's train.lr: densely trained heads of the GaLore methods (their own lr is lower)
    )
    dp: LocalDP | None = None  # privacy.dp local: DP-SGD's clip, noise and noise source (core/dp_sgd.py)

    def steps_for(self, num_examples: int) -> int:
        if self.local_epochs is not None:
            return max(1, round(self.local_epochs * -(-num_examples // self.batch_size)))
        return int(self.local_steps)


@dataclass
class ClientContext:
    """What the engine hands a client for one round.

    `state` is the client's persistent store (kept by the engine between the client's rounds: in
    memory in the simulator, `context.state` under Flower); `seed` is derived from (run seed, round,
    client id) so that a client's round is reproducible in isolation.
    """

    client_id: int
    round: int
    indices: torch.Tensor  # the client's example ids in the encoded train set
    train: TrainSettings
    seed: int
    state: dict[str, Any] = field(default_factory=dict)
    server_tensors: Tensors | None = None
