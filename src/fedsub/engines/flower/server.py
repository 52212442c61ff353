"""The generic ServerApp main loop: the simulator's round, with messages instead of function calls.

sample -> configure -> send to the nodes holding those partitions -> aggregate the replies that came
back in time -> evaluate -> log. The round ends in the simulator's own `finish_round` (validation,
aggregation, evaluation, the record), so the same config and seed give the same metrics.jsonl (timing
fields aside; tested). A client with no node, no reply within flower.round_timeout or an error is
`dropped` with the reason; a round with fewer usable replies than `failures.min_clients` is `skipped`
and leaves the global state as it was.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedsub.config import ExperimentConfig, MethodSpec
from fedsub.core.types import Payload
from fedsub.engines.failures import ClientOutcome, reply_outcome, simulated_fault
from fedsub.engines.flower.records import META, payload_to_record, record_to_update
from fedsub.engines.setup import FederatedData, sample_clients
from fedsub.engines.simulation import Simulation

QUERY, TRAIN, WARMUP = "query", "train", "train.warmup"


class FlowerServer(Simulation):
    """The server side of one method's run. Reuses the simulator's set-up (method, workspace for
    evaluation, initial state) and its evaluation; the clients are Flower nodes reached via `grid`."""

    def __init__(self, cfg: ExperimentConfig, spec: MethodSpec, data: FederatedData, out_dir: Path):
        super().__init__(cfg, spec, data, out_dir)
        self.nodes: dict[int, int] = {}  # partition-id (fedsub client id) -> Flower node id

    def run_with_grid(self, grid: Grid, on_round: Callable[[dict], None] | None = None) -> list[dict]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.discover(grid, wait=self.cfg.flower.startup_timeout)
        records = []
        with open(self.out_dir / "metrics.jsonl", "w") as log:
            for round_index in range(self.cfg.federation.rounds):
                record = self.flower_round(grid, round_index)
                log.write(json.dumps(record) + "\n")
                log.flush()
                records.append(record)
                if on_round:
                    on_round(record)
        return records

    # ------------------------------------------------------------------ nodes
    def discover(self, grid: Grid, wait: float = 0.0) -> None:
        """Ask every node not yet known which partition it holds (its node config's partition-id).

        Waits up to `wait` seconds for all num_clients partitions to show up: SuperNodes connect at
        their own pace, and a run that starts with one node missing would skip that client's rounds.
        """
        deadline = time.monotonic() + wait
        wanted = self.cfg.federation.num_clients
        while True:
            live = set(grid.get_node_ids())
            self.nodes = {c: n for c, n in self.nodes.items() if n in live}
            unknown = sorted(live - set(self.nodes.values()))
            if unknown:
                messages = [Message(RecordDict(), node, QUERY, ttl=self.cfg.flower.round_timeout, group_id="discover") for node in unknown]
                for reply in grid.send_and_receive(messages, timeout=self.cfg.flower.round_timeout):
                    if not reply.has_error():
                        partition = int(reply.content.config_records[META]["partition_id"])
                        self.nodes[partition] = reply.metadata.src_node_id
            if len(self.nodes) >= wanted or time.monotonic() >= deadline:
                return
            time.sleep(0.5)

    # ------------------------------------------------------------------ one round
    def flower_round(self, grid: Grid, round_index: int) -> dict:
        fed = self.cfg.federation
        start = time.perf_counter()
        clients = sample_clients(self.cfg.seed, round_index, fed.num_clients, fed.clients_per_round)
        live = set(grid.get_node_ids())
        if any(self.nodes.get(c) not in live for c in clients):
            self.discover(grid)  # a node may have left, or (re)joined under a new node id
        warmup = None
        warming = [c for c in clients if self.method.configure_warmup(self.state, c) is not None]
        if warming:
            outcomes, sent, _ = self.exchange(grid, round_index, warming, self.method.configure_warmup, WARMUP)
            warmup = self.finish_warmup(outcomes, sent)
        outcomes, sent, bytes_down = self.exchange(grid, round_index, clients)
        return self.finish_round(round_index, start, clients, outcomes, sent, bytes_down, warmup)

    def exchange(self, grid: Grid, round_index: int, clients: list[int], configure: Callable[[Any, int], Payload] | None = None,
                 message_type: str = TRAIN) -> tuple[list[ClientOutcome], dict[int, Payload], int]:
        """Send each sampled client its payload (``configure``: the method's configure_train, or
        configure_warmup for a warm-up), wait at most flower.round_timeout for the replies.

        Returns one outcome per sampled client in client order (an update, or why there is none: no
        node, no reply in time, an error on the node), the payloads sent and their bytes.
        """
        configure = configure or self.method.configure_train
        messages, sent, missing, bytes_down = {}, {}, {}, 0
        faults = {c: simulated_fault(self.cfg.failures, self.cfg.seed, round_index, c) for c in clients}
        for client_id in clients:
            if client_id not in self.nodes:
                missing[client_id] = f"no node with partition-id {client_id} is connected"
                continue
            sent[client_id] = configure(self.state, client_id)
            bytes_down += sent[client_id].nbytes()
            if faults[client_id] == "dropout":  # simulated, as in the simulator: it got the payload, never answers
                missing[client_id] = "dropout"
                continue
            content = payload_to_record(sent[client_id], {"round": round_index, "client_id": client_id})
            messages[client_id] = Message(content, self.nodes[client_id], message_type, ttl=self.cfg.flower.round_timeout, group_id=str(round_index + 1))
        tic = time.perf_counter()
        replies = grid.send_and_receive(list(messages.values()), timeout=self.cfg.flower.round_timeout)
        waited = time.perf_counter() - tic
        by_node = {reply.metadata.src_node_id: reply for reply in replies}
        for client_id in messages:
            reply = by_node.get(self.nodes[client_id])
            if reply is None:
                missing[client_id] = f"no reply after {waited:.0f}s (flower.round_timeout={self.cfg.flower.round_timeout}s)"
            elif reply.has_error():
                missing[client_id] = f"error {reply.error.code}: {first_line(reply.error.reason)}"
        outcomes = [
            ClientOutcome(c, None, missing[c]) if c in missing else self.received(by_node[self.nodes[c]], faults[c])
            for c in clients
        ]  # fmt: skip
        return outcomes, sent, bytes_down

    def received(self, reply: Message, fault: str | None) -> ClientOutcome:
        """A reply in time; a simulated straggler's or one over failures.deadline_s is dropped, as in the simulator."""
        update = record_to_update(reply.content)
        seconds = float(reply.content.config_records[META]["seconds_train"])
        return reply_outcome(self.cfg.failures, update.client_id, update, seconds, fault)


def first_line(text: str | None) -> str:
    """The last non-empty line of a traceback is the exception; keep reasons one line long."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def query_reply(message: Message, partition_id: int) -> Message:
    return Message(RecordDict({META: ConfigRecord({"partition_id": partition_id})}), reply_to=message)


def run_config_text(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML: what the ServerApp and every ClientApp rebuild the run from."""
    import yaml

    from fedsub.config import config_to_dict

    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def config_from_text(text: str) -> ExperimentConfig:
    import yaml

    from fedsub.config import validate_config

    return validate_config(yaml.safe_load(text), source="flower run config")


def method_spec(cfg: ExperimentConfig, key: str) -> MethodSpec:
    return next(spec for spec in cfg.methods if spec.key == key)


def describe(record: dict[str, Any]) -> str:
    """One line per round for logs (skipped rounds included)."""
    if record.get("skipped"):
        return f"  {record['method']} {record['round']}: skipped ({record['skipped']})"
    acc = "" if record.get("accuracy") is None else f" acc {record['accuracy']:.3f}"
    return f"  {record['method']} {record['round']}: loss {record['train_loss']:.3f}{acc} aggregated {record['aggregated']} {record['seconds_round']:.1f}s"
