"""The method contract (after fedjax's pure algorithms, in Flower's vocabulary), every capability declared.

A method is a small class in fedsub.methods (one module each, registered by name) that composes the
building blocks of fedsub.core.fedavg, fedsub.lora and fedsub.diagnostics; no method inherits another.
The engines call exactly the members of `Method` below and look nothing up: a capability a method
lacks is declared as such (``warmup = None``, ``client_state = frozenset()``, ``diagnostics = None``,
``global_model_note = None``, ``personalize = None``), and `fedsub.core.registry.register` refuses a class that does not
define every member, so a forgotten one fails at import, not as a silent default in a run.

A method is pure: everything that persists lives in `ServerState` (global; ``extra`` holds its typed
method-specific part) or in the client's state store (`ClientContext.state`, kept by the engine).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Callable, ClassVar, Protocol, Sequence

from pydantic import BaseModel

from fedsub.core.types import ClientContext, ClientUpdate, Payload, ServerState
from fedsub.core.validation import UpdateSpec

if TYPE_CHECKING:
    from fedsub.core.workspace import Workspace

Metrics = dict[str, float]


class Warmup(Protocol):
    """An exchange before a round's training (FedGaLore's first gradient sketch). Engines run it for
    every sampled client whose `configure` is not None; its bytes, seconds and failures count in that
    round, its replies are validated against `update_spec` like a training reply."""

    def configure(self, state: ServerState, client_id: int) -> Payload | None: ...

    def client(self, workspace: "Workspace", payload: Payload, client: ClientContext) -> ClientUpdate:
        """The client's reply; no training, its state untouched."""

    def update_spec(self, state: ServerState, client_id: int, payload: Payload) -> UpdateSpec: ...

    def aggregate(self, state: ServerState, updates: Sequence[ClientUpdate]) -> tuple[ServerState, Metrics]: ...


# ---------------------------------------------------------------- what the diagnostics are computed from


class Source(Enum):
    """Where the server finds a client's factor after the client's round."""

    UPLOADED = "uploaded"  # the client sends it
    SHARED = "shared"  # identical on every client and held by the server (frozen at a shared seed, or set by it)
    CLIENT = "client"  # it stays on the client: the server never sees it


@dataclass(frozen=True)
class LoraFactors:
    """A LoRA method's diagnostics inputs: where each client's A and B come from (ΔW_k = s B_k A_k).
    The diagnostics refuse (fedsub.diagnostics.rounds.DiagnosticsUnavailable) a CLIENT factor
    rather than substitute what the server holds for it."""

    a: Source
    b: Source


@dataclass(frozen=True)
class DenseUpdates:
    """Dense diagnostics inputs: ΔW_k = W_k − W_t of the method's trained matrices (uploaded whole);
    truncation energy at `rank` (None: the method has no rank)."""

    rank: int | None


@dataclass(frozen=True)
class FactoredUpdates:
    """GaLore-factored diagnostics inputs: the uploaded R_k with ΔW_k = R_k P, P shared and orthonormal."""


DiagnosticInputs = LoraFactors | DenseUpdates | FactoredUpdates


class Method(Protocol):
    """What every registered method is. Declarations (class or instance attributes):

    - ``warmup``: its warm-up exchange, or None.
    - ``client_state``: the keys it keeps in ``ClientContext.state`` between a client's rounds (empty:
      its clients keep nothing, so e.g. a Flower resume is exact for it).
    - ``diagnostics``: what its diag_* metrics are computed from (None: it reports none); its
      ``diagnostics`` option turns them off.
    - ``global_model_note``: None when the server's global model (evaluated every round, exported at
      the end) is the whole model the clients train; else one line saying what it leaves out, which
      the round loop writes beside every evaluation (``eval_note``).
    - ``personalize``: None when a client evaluates the global model (federated evaluation,
      config ``federated_eval``); else ``personalize(workspace, client_state)``, which puts the
      client's own kept part into the workspace after ``load_global`` (FedSA-LoRA: its B), so the
      client evaluates the model it would train from.
    """

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]]
    options: BaseModel
    warmup: Warmup | None
    client_state: frozenset[str]
    diagnostics: DiagnosticInputs | None
    global_model_note: str | None
    personalize: Callable[["Workspace", dict], None] | None

    def prepare_model(self, workspace: "Workspace") -> None:
        """Adapt the freshly built model (add LoRA, freeze, ...) before `init`; runs on every process."""

    def init(self, workspace: "Workspace") -> ServerState: ...

    def configure_train(self, state: ServerState, client_id: int) -> Payload: ...

    def client_train(self, workspace: "Workspace", payload: Payload, client: ClientContext) -> ClientUpdate:
        """One client's round: write the whole payload first, never rely on the previous client's model."""

    def update_spec(self, state: ServerState, client_id: int, payload: Payload) -> UpdateSpec:
        """The tensors (names, shapes, dtypes) an honest reply to `payload` holds; the server rejects
        any other (``fedsub.core.validation.spec_of(payload.tensors)`` when the upload is the download)."""

    def aggregate_train(self, state: ServerState, updates: Sequence[ClientUpdate]) -> tuple[ServerState, Metrics]: ...

    def load_global(self, workspace: "Workspace", state: ServerState) -> None:
        """Put the global model into the workspace, for evaluation or export."""


MEMBERS = (
    "Options", "options", "warmup", "client_state", "diagnostics", "global_model_note", "personalize",
    "prepare_model", "init", "configure_train", "client_train", "update_spec", "aggregate_train", "load_global",
)  # fmt: skip
_SET_IN_INIT = ("options",)  # every method's __init__(options) sets it


def missing_members(cls: type) -> list[str]:
    """The members of `Method` that `cls` does not define: neither in its class dictionary nor annotated
    there (a declaration that depends on the options is annotated on the class, set in __init__)."""
    defined = {key for klass in cls.__mro__ for key in (*vars(klass), *vars(klass).get("__annotations__", {}))}
    return [m for m in MEMBERS if m not in defined and m not in _SET_IN_INIT]
