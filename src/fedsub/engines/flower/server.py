"""The generic ServerApp main loop: the simulator's round, with messages instead of function calls.

sample -> configure -> send to the nodes holding those partitions -> aggregate the replies that came
back in time -> evaluate -> log. The record of a round is the simulator's, key for key, so the same
config and seed give the same metrics.jsonl (timing fields aside; tested). A round whose replies fall
short of `flower.min_clients` is recorded as skipped, with the reason, and leaves the global state as
it was.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedsub.config import ExperimentConfig, MethodSpec
from fedsub.core.tensors import normalized_weights
from fedsub.core.types import ClientUpdate
from fedsub.engines.flower.records import META, payload_to_record, record_to_update
from fedsub.engines.simulation import FederatedData, Simulation, peak_rss_mb, sample_clients

QUERY, TRAIN = "query", "train"


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
        updates, failed, bytes_down, seconds_train = self.exchange(grid, round_index, clients)
        base = {"round": round_index + 1, "method": self.spec.key}
        if len(updates) < self.cfg.flower.min_clients:
            reason = f"{len(updates)} of {len(clients)} clients replied, fewer than flower.min_clients={self.cfg.flower.min_clients}"
            return self.skipped_record(base, clients, failed, reason, bytes_down, start)
        tic = time.perf_counter()
        self.state, method_metrics = self.method.aggregate_train(self.state, updates)
        seconds_aggregate = time.perf_counter() - tic
        evaluation, seconds_eval = self.maybe_evaluate(round_index)
        weights = normalized_weights([u.num_examples for u in updates])
        # Key for key the simulator's record (Simulation.run_round); "failed" only when someone failed.
        return {
            **base,
            **evaluation,
            "train_loss": float(sum(w * u.metrics["train_loss"] for w, u in zip(weights, updates))),
            "clients": [u.client_id for u in updates],
            "bytes_up": sum(u.payload.nbytes() for u in updates),
            "bytes_down": bytes_down,
            **method_metrics,
            **({"failed": failed} if failed else {}),
            "seconds_train": seconds_train,
            "seconds_aggregate": seconds_aggregate,
            "seconds_eval": seconds_eval,
            "seconds_round": time.perf_counter() - start,
            "peak_rss_mb": peak_rss_mb(),
        }

    def exchange(self, grid: Grid, round_index: int, clients: list[int]) -> tuple[list[ClientUpdate], list[dict], int, float]:
        """Send each sampled client its payload, wait at most flower.round_timeout for the replies.

        Returns the updates (in client order, as the simulator aggregates them), the failures with
        their reasons, the bytes sent and the clients' own training seconds.
        """
        messages, failed, bytes_down = {}, [], 0
        for client_id in clients:
            if client_id not in self.nodes:
                failed.append({"client": client_id, "reason": f"no node with partition-id {client_id} is connected"})
                continue
            payload = self.method.configure_train(self.state, client_id)
            bytes_down += payload.nbytes()
            content = payload_to_record(payload, {"round": round_index, "client_id": client_id})
            messages[client_id] = Message(content, self.nodes[client_id], TRAIN, ttl=self.cfg.flower.round_timeout, group_id=str(round_index + 1))
        tic = time.perf_counter()
        replies = grid.send_and_receive(list(messages.values()), timeout=self.cfg.flower.round_timeout)
        waited = time.perf_counter() - tic
        by_node = {reply.metadata.src_node_id: reply for reply in replies}
        updates, seconds_train = [], 0.0
        for client_id in messages:
            reply = by_node.get(self.nodes[client_id])
            if reply is None:
                failed.append({"client": client_id, "reason": f"no reply after {waited:.0f}s (flower.round_timeout={self.cfg.flower.round_timeout}s)"})
            elif reply.has_error():
                failed.append({"client": client_id, "reason": f"error {reply.error.code}: {first_line(reply.error.reason)}"})
            else:
                updates.append(record_to_update(reply.content))
                seconds_train += float(reply.content.config_records[META]["seconds_train"])
        return sorted(updates, key=lambda u: u.client_id), sorted(failed, key=lambda f: f["client"]), bytes_down, seconds_train

    def skipped_record(self, base: dict, clients: list[int], failed: list[dict], reason: str, bytes_down: int, start: float) -> dict:
        """A round without enough replies: nothing aggregated, the global model unchanged."""
        return {
            **base,
            "test_loss": None,
            "accuracy": None,
            "macro_f1": None,
            "train_loss": None,
            "clients": [],
            "bytes_up": 0,
            "bytes_down": bytes_down,
            "skipped": True,
            "reason": reason,
            "failed": failed,
            "sampled": clients,
            "seconds_train": 0.0,
            "seconds_aggregate": 0.0,
            "seconds_eval": 0.0,
            "seconds_round": time.perf_counter() - start,
            "peak_rss_mb": peak_rss_mb(),
        }


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
        return f"  {record['method']} {record['round']}: skipped ({record['reason']})"
    acc = "" if record.get("accuracy") is None else f" acc {record['accuracy']:.3f}"
    return f"  {record['method']} {record['round']}: loss {record['train_loss']:.3f}{acc} clients {record['clients']} {record['seconds_round']:.1f}s"
