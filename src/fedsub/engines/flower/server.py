"""The ServerApp side: the round loop of `fedsub.engines.rounds`, its clients reached by Messages.

sample -> configure -> send to the nodes holding those partitions -> screen the replies that came back
in time -> aggregate -> evaluate -> checkpoint -> log, all in the shared RoundLoop, so the same config
and seed give the simulator's metrics.jsonl (timing fields aside; tested). `FlowerClients` is the
engine's whole part: discovery (which node holds which partition), Messages out, replies in. A client
with no node, no reply within flower.round_timeout or an error is `dropped` with the reason; a round
with fewer usable replies than `failures.min_clients` is `skipped` and leaves the global state as it
was.

Resume: the checkpoint holds the server state, the records and the RNGs. Client state stays on the
nodes (`context.state`), and a resumed run is a new Flower run whose nodes start empty (flwr 1.41
gives every run without a series id a fresh Context: flwr/supernode/start_client_internal.py; the
in-process grid builds new Contexts). So a resume is exact when no client held state at the
checkpoint (every LoRA method, fedavg_full, fedgalore with dense downlink and synced moments), and
refused in one line when one did (fedftg, fedgalore's factored downlink or `sync: none`): nodes
report in each reply whether they hold state, and the checkpoint lists those clients.
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedsub.config import ExperimentConfig, MethodSpec, config_to_dict, validate_config
from fedsub.core.types import ClientUpdate, Payload
from fedsub.core.validation import check_examples
from fedsub.data.report import save_histogram_report
from fedsub.engines.failures import ClientOutcome, finite_train_loss, reply_outcome
from fedsub.engines.fed_eval import EVALUATE
from fedsub.engines.final_model import save_final_model
from fedsub.engines.flower.records import META, payload_to_record, record_to_update
from fedsub.engines.flower.secagg import ScreenedGrid, SecureRound, clipped_clients, secure_mean
from fedsub.engines.flower.secagg import workflow as secagg_workflow
from fedsub.engines.rounds import ClientStates, Exchange, RoundLoop
from fedsub.engines.setup import FederatedData, reset_peak_rss, set_up_method
from fedsub.errors import CheckpointError

QUERY = "query"
REPLY_POLL_SECONDS = 0.2  # flwr's Grid.send_and_receive sleeps 3 s between pulls (superlink/grid/http_grid.py)


class FlowerClients:
    """The clients of a ServerApp: Flower nodes reached through `grid`, one per partition."""

    def __init__(
        self, grid: Grid, cfg: ExperimentConfig, method_key: str, data: FederatedData | None = None,
        run_dir: Path | None = None,
    ):  # fmt: skip
        self.grid, self.cfg, self.method_key, self.data, self.run_dir = grid, cfg, method_key, data, run_dir
        self.nodes: dict[int, int] = {}  # partition-id (fedsub client id) -> Flower node id
        self.holding_state: set[int] = set()  # clients whose node said it holds state for them
        self.data_errors: dict[int, str] = {}  # data.source nodes: why a node's own data cannot be used

    # ------------------------------------------------------------------ nodes
    def connect(self) -> None:
        self.discover(wait=self.cfg.flower.startup_timeout)
        if self.cfg.data.source == "nodes" and self.run_dir is not None:
            save_reported_partition(self.run_dir, self.data, self.cfg.federation.num_clients)

    def discover(self, wait: float = 0.0) -> None:
        """Ask every node not yet known which partition it holds (its node config's partition-id).

        Waits up to `wait` seconds for all num_clients partitions to show up: SuperNodes connect at
        their own pace, and a run that starts with one node missing would skip that client's rounds.
        """
        deadline = time.monotonic() + wait
        wanted = self.cfg.federation.num_clients
        while True:
            live = set(self.grid.get_node_ids())
            self.nodes = {c: n for c, n in self.nodes.items() if n in live}
            unknown = sorted(live - set(self.nodes.values()))
            if unknown:
                messages = [
                    Message(RecordDict(), node, QUERY, ttl=self.cfg.flower.round_timeout, group_id="discover")
                    for node in unknown
                ]
                for reply in send_and_receive(self.grid, messages, self.cfg.flower.round_timeout):
                    if not reply.has_error():
                        self.note_node(reply)
            if len(self.nodes) >= wanted or time.monotonic() >= deadline:
                return
            time.sleep(0.5)

    def note_node(self, reply: Message) -> None:
        """A node's answer to the query: its partition-id and, for data.source nodes, its data report.
        A reply that cannot be read, or names a partition outside the federation, is ignored (the
        node then counts as not connected); a report that cannot be used becomes that client's data error."""
        try:
            meta = reply.content.config_records[META]
            partition = int(meta["partition_id"])
        except Exception:  # noqa: BLE001 (anything malformed: the node is simply not mapped)
            return
        if not 0 <= partition < self.cfg.federation.num_clients:
            return
        self.nodes[partition] = reply.metadata.src_node_id
        if "data_error" in meta:
            self.data_errors[partition] = first_line(str(meta["data_error"]))[:300]
        elif "num_examples" in meta and self.data is not None:
            try:
                report = node_report(meta, len(self.data.label_names), self.cfg.validation.max_examples)
            except (ValueError, TypeError, OverflowError) as err:
                self.data_errors[partition] = f"node {partition} reported unusable counts: {first_line(str(err))}"[:300]
                return
            self.data_errors.pop(partition, None)
            self.data.node_reports[partition] = report

    def unreachable(self, clients: list[int]) -> dict[int, str]:
        live = set(self.grid.get_node_ids())
        if any(self.nodes.get(c) not in live for c in clients):
            self.discover()  # a node may have left, or (re)joined under a new node id
        away = {c: f"no node with partition-id {c} is connected" for c in clients if c not in self.nodes}
        return away | {c: f"data: {self.data_errors[c]}" for c in clients if c in self.data_errors and c not in away}

    # ------------------------------------------------------------------ one exchange
    def exchange(self, exchange: Exchange, on_client: Callable[[], None] | None = None) -> dict[int, ClientOutcome]:
        """Send each payload to its client's node, wait at most flower.round_timeout for the replies.

        One outcome per payload: an update, or why there is none (a simulated dropout got the payload
        and never answers, as in the simulator; no reply in time; an error on the node).
        """
        timeout = self.cfg.flower.round_timeout
        messages, outcomes = {}, {}
        for client_id, payload in exchange.payloads.items():
            if exchange.faults[client_id] == "dropout":
                outcomes[client_id] = ClientOutcome(client_id, None, "dropout")
                continue
            content = payload_to_record(payload, {"round": exchange.round, "client_id": client_id})
            messages[client_id] = Message(
                content, self.nodes[client_id], exchange.kind, ttl=timeout, group_id=str(exchange.round + 1)
            )
        tic = time.perf_counter()
        replies, arrived = send_and_receive(self.grid, list(messages.values()), timeout, timed=True)
        waited = time.perf_counter() - tic
        by_node: dict[int, Message] = {}
        for reply in replies:  # a reply counts for the node it came from; a second one from a node is ignored
            by_node.setdefault(reply.metadata.src_node_id, reply)
        for client_id in messages:
            reply = by_node.get(self.nodes[client_id])
            if reply is None:
                outcomes[client_id] = ClientOutcome(
                    client_id, None, f"no reply after {waited:.0f}s (flower.round_timeout={timeout}s)"
                )
            elif reply.has_error():
                outcomes[client_id] = ClientOutcome(
                    client_id, None, f"error {reply.error.code}: {first_line(reply.error.reason)}"
                )
            else:
                elapsed = arrived.get(reply.metadata.reply_to_message_id, waited)
                outcomes[client_id] = self.received(reply, client_id, exchange, elapsed)
        return outcomes

    def received(self, reply: Message, client_id: int, exchange: Exchange, elapsed: float) -> ClientOutcome:
        """A reply in time, from the node the message went to, read defensively: anything that cannot
        be read, or that claims another client, is rejected with the reason and the round goes on.
        Deadlines use `elapsed`, the server's own clock from send to arrival; the node's reported
        training seconds are only logged (and only a finite, non-negative number)."""
        try:
            update = record_to_update(reply.content)
            meta = reply.content.config_records[META]
            if update.client_id != client_id:
                claim = f"reply claims client {update.client_id}, the message went to client {client_id}"
                return rejected(client_id, claim)
            seconds = reported_seconds(meta)
            if meta.get("holds_state", False) is True:
                self.holding_state.add(client_id)
        except Exception as err:  # a malformed reply must not end the run: whatever it is, it is rejected
            return rejected(client_id, f"malformed reply: {type(err).__name__}: {first_line(str(err))}"[:300])
        if exchange.kind == EVALUATE:  # metrics only: no train loss, no deadline (fed_eval screens them)
            return ClientOutcome(client_id, update, None, seconds)
        outcome = reply_outcome(self.cfg.failures, client_id, update, elapsed, exchange.faults[client_id])
        outcome.seconds = seconds
        return outcome

    def secure_exchange(self, exchange: Exchange) -> tuple[dict[int, ClientOutcome], SecureRound]:
        """The train exchange under privacy.secagg: Flower's SecAgg+ over the round's clients
        (engines/flower/secagg.py). The outcomes carry each summed client's example count and train
        metrics (no tensors: the server never holds one); the SecureRound the mean change or why none."""
        sa, timeout = self.cfg.privacy.secagg, self.cfg.flower.round_timeout
        outcomes = {c: ClientOutcome(c, None, "dropout") for c, f in exchange.faults.items() if f == "dropout"}
        asked = {c: p for c, p in exchange.payloads.items() if c not in outcomes}
        contents = {
            self.nodes[c]: payload_to_record(p, {"round": exchange.round, "client_id": c}) for c, p in asked.items()
        }
        sent = next(iter(asked.values()), Payload())
        shapes = [tuple(sent.tensors[n].shape) for n in sorted(sent.tensors)]
        nodes = {self.nodes[c]: c for c in asked}
        grid = ScreenedGrid(self.grid, send_and_receive, timeout, shapes, nodes, self.accept_secure)
        max_weight = sa.max_weight or self.largest_client()
        secure = secure_mean(grid, secagg_workflow(sa, max_weight, timeout), contents, exchange.round, sent)
        for c in asked:
            if c in secure.summed:
                update, meta = secure.summed[c]
                outcomes[c] = ClientOutcome(c, update, None, reported_seconds(meta))
                if meta.get("holds_state", False) is True:  # the checkpoint must list it (resume)
                    self.holding_state.add(c)
            elif c in secure.screened:
                outcomes[c] = rejected(c, secure.screened[c])
            else:
                outcomes[c] = ClientOutcome(c, None, f"left the secure aggregation (no reply within {timeout:g}s)")
        secure.clipped = clipped_clients(secure.summed, sa.clipping_range, max_weight)
        return outcomes, secure

    def accept_secure(self, client_id: int, update: ClientUpdate) -> str | None:
        """The screen a plain reply gets that a masked one still allows: its example count against the
        server's, and a finite train loss (a diverged client's change would poison the sum)."""
        if not finite_train_loss(update):
            return f"non-finite train_loss {update.metrics.get('train_loss')!r}"
        return check_examples(update.num_examples, self.data.train_size(client_id) if self.data else None)

    def largest_client(self) -> float:
        """SecAgg+'s max_weight by default: the most rows any client has, as the server knows them."""
        sizes = [self.data.train_size(c) or 0 for c in range(self.cfg.federation.num_clients)] if self.data else []
        return float(max(sizes, default=0) or self.cfg.validation.max_examples)

    # ------------------------------------------------------------------ checkpoint
    def saved_states(self) -> ClientStates:
        return ClientStates(on_nodes=sorted(self.holding_state))

    def checkpoint_written(self, saved: ClientStates) -> None:
        pass  # the states are on the nodes

    def restore_states(self, saved: ClientStates, where: Path) -> None:
        refuse_node_state(saved.on_nodes, where, self.method_key)


def send_and_receive(grid: Grid, messages: list[Message], timeout: float, timed: bool = False):
    """Push the messages, then pull replies every REPLY_POLL_SECONDS until all are in or `timeout` passed.
    With `timed`, also {message id: seconds from the push to its reply's arrival} (the server's clock).

    flwr's own send_and_receive waits 3 s between pulls, which a round of a warm deployment (a few
    seconds of training) would spend mostly waiting. The in-process grid answers at once (and its
    "dead" nodes never), so it keeps its own."""
    tic = time.monotonic()
    if getattr(grid, "answers_at_once", False):
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        elapsed = time.monotonic() - tic  # the whole batch; each message's own time where the grid kept it
        seconds = getattr(grid, "seconds", {})
        arrived = {
            r.metadata.reply_to_message_id: seconds.get(r.metadata.reply_to_message_id, elapsed) for r in replies
        }
        return (replies, arrived) if timed else replies
    waiting = set(grid.push_messages(messages))
    replies, arrived = [], {}
    while waiting:
        pulled = list(grid.pull_messages(waiting))
        replies += pulled
        for reply in pulled:
            arrived[reply.metadata.reply_to_message_id] = time.monotonic() - tic
        waiting -= {reply.metadata.reply_to_message_id for reply in pulled}
        if not waiting or time.monotonic() - tic >= timeout:
            break
        time.sleep(REPLY_POLL_SECONDS)
    return (replies, arrived) if timed else replies


def reported_seconds(meta) -> float:
    """The training seconds a node reports (logged only): a finite, non-negative number, else 0."""
    reported = meta.get("seconds_train", 0.0)
    finite = isinstance(reported, (int, float)) and not isinstance(reported, bool)
    return float(reported) if finite and 0 <= reported < math.inf else 0.0


def rejected(client_id: int, reason: str) -> ClientOutcome:
    """A reply that came but cannot be used: recorded in `rejected`, like an update that fails validation."""
    return ClientOutcome(client_id, None, reason, malformed=True)


def node_report(meta, num_classes: int, max_examples: int) -> dict:
    """An own-data node's counts, checked: whole numbers, a histogram of the label space that sums to
    its row count, at most validation.max_examples rows (one node cannot claim the federation's weight)."""
    rows, held = int(meta["num_examples"]), int(meta["eval_examples"])
    counts = [int(v) for v in json.loads(str(meta["label_counts"]))]
    if len(counts) != num_classes or min(counts, default=0) < 0 or sum(counts) != rows or held < 0:
        raise ValueError(f"num_examples {rows} with label counts {counts[:8]} over {num_classes} classes")
    if rows > max_examples:
        raise ValueError(f"{rows} rows > validation.max_examples {max_examples}")
    return {"num_examples": rows, "eval_examples": held, "label_counts": counts}


def save_reported_partition(run_dir: Path, data: FederatedData, num_clients: int) -> None:
    """data.source nodes: partition.json, label_histogram.csv and the heatmap from what the nodes
    reported (row counts and label histograms; a node that did not report counts as empty)."""
    reports = data.node_reports
    hist = np.zeros((num_clients, len(data.label_names)), dtype=np.int64)
    for client, report in reports.items():
        hist[client] = report["label_counts"]
    clients = {str(c): reports.get(c, {"num_examples": 0, "eval_examples": 0}) for c in range(num_clients)}
    data.heterogeneity = save_histogram_report(run_dir, hist, data.label_names, {"source": "nodes"}, clients)


def refuse_node_state(on_nodes: list[int], where: Path, method_key: str) -> None:
    """A resumed Flower run starts its nodes empty: exact only if no client held state at the checkpoint."""
    if on_nodes:
        raise CheckpointError(
            f"--resume: checkpoint {where}: {method_key} keeps client state on the Flower nodes (clients "
            f"{', '.join(map(str, on_nodes))}), "
            f"which a resumed Flower run starts without; delete {where} to rerun {method_key} from round 1, or use "
            f"engine: simulation"
        )


class FlowerServer:
    """The server side of one method's Flower run: the method, a workspace for evaluation, the
    RoundLoop. The clients are Flower nodes, reached through the grid `run_with_grid` is given."""

    def __init__(
        self, cfg: ExperimentConfig, spec: MethodSpec, data: FederatedData, out_dir: Path, resume: bool = False
    ):
        self.cfg, self.spec, self.data, self.out_dir, self.resume = cfg, spec, data, out_dir, resume
        reset_peak_rss()
        self.loop = RoundLoop(cfg, spec, data, set_up_method(cfg, spec, data), out_dir)
        self.checkpoint_dir = self.loop.checkpoint_dir

    def run_with_grid(self, grid: Grid, on_round: Callable[[dict], None] | None = None) -> list[dict]:
        clients = FlowerClients(grid, self.cfg, self.spec.key, self.data, self.out_dir.parent)
        return self.loop.run(clients, on_round, resume=self.resume)

    def save_final_model(self, label_names: list[str]) -> None:
        save_final_model(self.loop, self.out_dir, label_names)

    @property
    def state(self):
        return self.loop.state


def first_line(text: str | None) -> str:
    """The last non-empty line of a traceback is the exception; keep reasons one line long."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def query_reply(message: Message, partition_id: int, report: dict | None = None) -> Message:
    return Message(RecordDict({META: ConfigRecord({"partition_id": partition_id, **(report or {})})}), reply_to=message)


def run_config_text(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML: what the ServerApp and every ClientApp rebuild the run from."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


@functools.lru_cache(maxsize=4)
def config_from_text(text: str) -> ExperimentConfig:
    """The run config a message carries, validated once per text (nodes ask for it on every message;
    callers only read it)."""
    return validate_config(yaml.safe_load(text), source="flower run config")


def method_spec(cfg: ExperimentConfig, key: str) -> MethodSpec:
    return next(spec for spec in cfg.methods if spec.key == key)


def describe(record: dict[str, Any]) -> str:
    """One line per round for logs (skipped rounds included)."""
    if record.get("skipped"):
        return f"  {record['method']} {record['round']}: skipped ({record['skipped']})"
    acc = "" if record.get("accuracy") is None else f" acc {record['accuracy']:.3f}"
    return (
        f"  {record['method']} {record['round']}: loss {record['train_loss']:.3f}{acc} "
        f"aggregated {record['aggregated']} {record['seconds_round']:.1f}s"
    )
