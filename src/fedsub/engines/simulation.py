"""The in-process simulator: the round loop of `fedsub.engines.rounds` with clients that are function
calls on one model reused by every client, their states kept in a store with a memory budget
(engines/client_store.py: the most recently used in memory, the rest on disk; checkpoints reference
its files). Clients get the server's global tensors with their payload (ClientContext.server_tensors),
so no method keeps a copy of the global model per client.

Client sampling, simulated faults and each client's randomness are pure functions of (seed, round,
client), so a run is reproducible, any round can be replayed in isolation, and a run resumed from
its checkpoint writes the same metrics as one never interrupted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from fedsub.config import ExperimentConfig, MethodSpec
from fedsub.core.seeding import client_seed
from fedsub.core.types import ClientContext, Payload, ServerState, Tensors
from fedsub.engines.client_store import ClientStateStore
from fedsub.engines.failures import ClientOutcome, run_client
from fedsub.engines.fed_eval import EVALUATE, evaluate_client
from fedsub.engines.final_model import save_final_model
from fedsub.engines.rounds import TRAIN, ClientStates, Exchange, RoundLoop
from fedsub.engines.setup import FederatedData, MethodSetup, reset_peak_rss, set_up_method


class InProcessClients:
    """The simulator's clients: each trains, in turn, on the one shared workspace model."""

    def __init__(self, cfg: ExperimentConfig, data: FederatedData, setup: MethodSetup, store_dir: Path):
        self.cfg, self.data = cfg, data
        self.method, self.workspace, self.settings = setup.method, setup.workspace, setup.settings
        self.states = ClientStateStore(store_dir, cfg.clients.state_memory_mb * 2**20)
        # False: clients rebuild the global model from their payload alone, as a Flower node does
        # (tests set it to check that path gives the same run)
        self.hand_server_tensors = True

    def connect(self) -> None:
        pass  # every client is here

    def unreachable(self, clients: list[int]) -> dict[int, str]:
        return {}

    def exchange(self, exchange: Exchange, on_client: Callable[[], None] | None = None) -> dict[int, ClientOutcome]:
        outcomes = {}
        for client_id, payload in exchange.payloads.items():
            if exchange.kind == TRAIN:
                tensors = exchange.server_tensors if self.hand_server_tensors else None
                fault = exchange.faults[client_id]
                outcomes[client_id] = self.train_client(exchange.round, client_id, payload, fault, tensors)
                if on_client:
                    on_client()
            elif exchange.kind == EVALUATE:
                outcomes[client_id] = self.evaluate_client(exchange.round, client_id, payload)
            else:
                outcomes[client_id] = self.warm_up_client(
                    exchange.round, client_id, payload, exchange.faults[client_id]
                )
        return outcomes

    def evaluate_client(self, round_index: int, client_id: int, payload: Payload) -> ClientOutcome:
        """Federated evaluation: the client's metrics on its own rows; its state is read, never changed."""
        tic = time.perf_counter()
        state = self.states.get(client_id, {})
        try:
            update = evaluate_client(
                self.method, self.workspace, self.data, payload, client_id, state, round_index,
                self.cfg.train.eval_batch_size,
            )  # fmt: skip
        except Exception as err:  # one client's failure must not end the round
            return ClientOutcome(client_id, None, f"error: {type(err).__name__}: {str(err)[:200]}")
        return ClientOutcome(client_id, update, None, time.perf_counter() - tic)

    def train_client(
        self, round_index: int, client_id: int, payload: Payload, fault: str | None, server_tensors: Tensors | None
    ) -> ClientOutcome:
        """One client's local round; its state changes persist only if it did not fail."""
        context = self.client_context(round_index, client_id, server_tensors)
        outcome = run_client(
            self.cfg.failures, client_id, fault, lambda: self.method.client_train(self.workspace, payload, context)
        )
        if outcome.keep_state:
            self.states.put(client_id, context.state)
        elif fault != "dropout":
            # a client that raised between backward() and zero_grad() leaves gradients on the shared
            # model, which the next client's first backward() would add to its own
            self.workspace.model.zero_grad(set_to_none=True)
        return outcome

    def warm_up_client(self, round_index: int, client_id: int, payload: Payload, fault: str | None) -> ClientOutcome:
        context = self.client_context(round_index, client_id)  # a copy: the warm-up keeps no state
        exchange = self.method.warmup  # a warm-up exchange is only sent for a method that declares one
        outcome = run_client(
            self.cfg.failures, client_id, fault, lambda: exchange.client(self.workspace, payload, context)
        )
        self.workspace.model.zero_grad(set_to_none=True)
        return outcome

    def client_context(self, round_index: int, client_id: int, server_tensors: Tensors | None = None) -> ClientContext:
        return ClientContext(
            client_id=client_id,
            round=round_index,
            indices=self.data.parts[client_id],
            train=self.settings,
            seed=client_seed(self.cfg.seed, round_index, client_id),
            state=dict(self.states.get(client_id, {})),  # a copy: committed only if the client succeeds
            server_tensors=server_tensors,
        )

    def saved_states(self) -> ClientStates:
        return ClientStates(files=self.states.manifest())

    def checkpoint_written(self, saved: ClientStates) -> None:
        self.states.committed_to(saved.files)

    def restore_states(self, saved: ClientStates, where: Path) -> None:
        self.states.restore(saved.files, where)
        for client_id, state in saved.held.items():  # a format-1 checkpoint held them inline
            self.states.put(client_id, state)


class Simulation:
    """Runs one method of an experiment in this process, round by round (see RoundLoop.run)."""

    def __init__(
        self, cfg: ExperimentConfig, spec: MethodSpec, data: FederatedData, out_dir: Path, resume: bool = False
    ):
        self.cfg, self.spec, self.data, self.out_dir, self.resume = cfg, spec, data, out_dir, resume
        reset_peak_rss()
        setup = set_up_method(cfg, spec, data)
        self.settings = setup.settings
        self.loop = RoundLoop(cfg, spec, data, setup, out_dir)
        self.clients = InProcessClients(cfg, data, setup, self.loop.checkpoint_dir / "client_states")
        self.checkpoint_dir = self.loop.checkpoint_dir

    def run(
        self, on_round: Callable[[dict], None] | None = None, on_client: Callable[[], None] | None = None
    ) -> list[dict]:
        return self.loop.run(self.clients, on_round, on_client, resume=self.resume, play_round=self.run_round)

    def run_round(self, round_index: int, on_client: Callable[[], None] | None = None) -> dict:
        return self.loop.run_round(self.clients, round_index, on_client)

    def warmup(self, round_index: int, clients: list[int]) -> dict | None:
        """The method's warm-up exchange of a round on its own (tests drive a round's phases)."""
        return self.loop.warmup(self.clients, round_index, clients)

    def client_context(self, round_index: int, client_id: int) -> ClientContext:
        return self.clients.client_context(round_index, client_id)

    def save_final_model(self, label_names: list[str]) -> None:
        save_final_model(self.loop, self.out_dir, label_names)

    # the server's parts, as the tests and tools that drive a round by hand reach them
    @property
    def method(self) -> Any:
        return self.loop.method

    @property
    def workspace(self):
        return self.loop.workspace

    @property
    def state(self) -> ServerState:
        return self.loop.state

    @state.setter
    def state(self, state: ServerState) -> None:
        self.loop.state = state

    @property
    def client_states(self) -> ClientStateStore:
        return self.clients.states
