"""The types every method and engine speak (after fedjax's pure algorithms, in Flower's vocabulary).

A `Payload` is exactly what crosses the wire: named tensors plus a few scalars. Bytes up and down are
measured from payloads, and a payload maps 1:1 onto Flower's ArrayRecord / ConfigRecord.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import torch
from pydantic import BaseModel

if TYPE_CHECKING:
    from fedsub.core.workspace import Workspace

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


@dataclass
class ServerState:
    """Everything the server carries between rounds. Methods never keep state elsewhere.

    `tensors` is the global trainable state (what a checkpoint must hold); `extra` is method-specific
    (projectors, synchronised moments, ...), tensors or scalars.
    """

    round: int = 0
    tensors: Tensors = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainSettings:
    """Local-training settings of one client in one round (resolved from the config)."""

    lr: float
    batch_size: int
    local_steps: int | None = None
    local_epochs: float | None = None
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    head_lr: float | None = None  # the run's train.lr: densely trained heads of the GaLore methods (their own lr is lower)

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


class Method(Protocol):
    """The method contract. A method is pure: all persistent state lives in ServerState or client state.

    Optional: `update_spec(state, client_id, payload) -> fedsub.core.validation.UpdateSpec`, the
    tensors (names, shapes, dtypes) an honest reply to `payload` holds, for methods whose upload is
    not what they sent (the server validates every update against it; default: the sent tensors).

    Warm-up (engines run it before a round's training for every sampled client whose
    `configure_warmup` is not None; its bytes, seconds and failures count in that round):
    `client_warmup(workspace, payload, client) -> ClientUpdate` (no training, client state
    untouched) and `aggregate_warmup(state, updates) -> (state, metrics)`.
    """

    name: str
    options: BaseModel

    def prepare_model(self, workspace: "Workspace") -> None:
        """Adapt the freshly built model (add LoRA, freeze, ...) before `init`."""

    def init(self, workspace: "Workspace") -> ServerState: ...

    def configure_warmup(self, state: ServerState, client_id: int) -> Payload | None: ...

    def configure_train(self, state: ServerState, client_id: int) -> Payload: ...

    def client_train(self, workspace: "Workspace", payload: Payload, client: ClientContext) -> ClientUpdate: ...

    def aggregate_train(self, state: ServerState, updates: Sequence[ClientUpdate]) -> tuple[ServerState, dict[str, float]]: ...

    def load_global(self, workspace: "Workspace", state: ServerState) -> None:
        """Put the global model into the workspace, for evaluation or export."""
