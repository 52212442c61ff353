"""The ClientApp side: a node trains the partition its node config names, with the same Method object.

A node's "runtime" (config, method, data, the reusable workspace model) is built once per process and
kept in a module-level cache keyed by (run config, method), so the base model is loaded once per
ClientApp process, not once per message, wherever the process outlives a message: Flower's in-process
grid and `fedsub flower node` (a warm worker, fedsub.engines.flower.worker), where a second run of the
same config and method reuses it too. A stock SuperNode starts one `flwr-clientapp` process per
message in both isolation modes and that process exits after its one task
(flwr/supernode/runtime/run_clientapp.py:193 calls the ClientApp once, :231-234 exits;
flower-superexec's SubprocessExecutor starts one per task,
flwr/supercore/superexec/executor/subprocess_executor.py:56-83), so there the model is loaded every
round (measured in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import Context, Message

from fedsub.config import ExperimentConfig, MethodSpec
from fedsub.core.method import Method
from fedsub.core.seeding import client_seed
from fedsub.core.types import ClientContext, TrainSettings
from fedsub.core.workspace import Workspace
from fedsub.engines.failures import finite_train_loss
from fedsub.engines.fed_eval import evaluate_client
from fedsub.engines.flower.records import (
    META,
    holds_client_state,
    load_client_state,
    record_to_payload,
    save_client_state,
    update_to_record,
)
from fedsub.engines.flower.secagg import in_secure_round, masked_reply
from fedsub.engines.flower.server import config_from_text, method_spec, query_reply
from fedsub.engines.setup import FederatedData, prepare_data, prepare_node_data, set_up_method
from fedsub.errors import ConfigError

CONFIG_KEY, METHOD_KEY, OUT_KEY, RESUME_KEY = "fedsub-config", "fedsub-method", "fedsub-out", "fedsub-resume"


@dataclass
class NodeRuntime:
    cfg: ExperimentConfig
    spec: MethodSpec
    data: FederatedData
    method: Method
    workspace: Workspace
    settings: TrainSettings


_RUNTIMES: dict[tuple[str, str], NodeRuntime] = {}
_NODE_DATA: dict[tuple, FederatedData] = {}  # data.source nodes: each node's own files, loaded once
log = logging.getLogger("fedsub.worker")
NODE_FILES = ("data", "test")  # the node-config keys naming a node's own files


def runtime_for(run_config: dict, data: FederatedData | None = None, context: Context | None = None) -> NodeRuntime:
    """The cached runtime of (config, method); built on first use. `data` skips the data loading
    (the in-process grid hands the server's, which is the same by construction). With data.source
    nodes, `context` names the node, whose own files become the runtime's data (and its workspace's)."""
    key = (str(run_config[CONFIG_KEY]), str(run_config[METHOD_KEY]))
    own = own_data(key[0], context) if context is not None else None
    if key not in _RUNTIMES:
        _RUNTIMES.clear()  # one method at a time: free the previous model
        tic = time.perf_counter()
        cfg = config_from_text(key[0])
        spec = method_spec(cfg, key[1])
        if data is None:
            data = own
        if data is None:
            with tempfile.TemporaryDirectory() as scratch:  # the partition report is the server's business
                data = prepare_data(cfg, Path(scratch))
        setup = set_up_method(cfg, spec, data)
        _RUNTIMES[key] = NodeRuntime(cfg, spec, data, setup.method, setup.workspace, setup.settings)
        log.info("built the runtime of %s (%s) in %.2fs", spec.key, cfg.name, time.perf_counter() - tic)
    runtime = _RUNTIMES[key]
    if own is not None and runtime.data is not own:  # another node's files in this process (in-process grid)
        runtime.data = own
        runtime.workspace.train_data, runtime.workspace.test_data = own.train, own.test
    return runtime


def own_data(config_text: str, context: Context) -> FederatedData | None:
    """A node's own data (data.source nodes; None otherwise), loaded once per (config, node, files).
    A file that disagrees with the config raises ConfigError naming the node and the path."""
    cfg = config_from_text(config_text)
    if cfg.data.source != "nodes":
        return None
    client_id = partition_id(context)
    files = {k: str(context.node_config[k]) for k in NODE_FILES if k in context.node_config}
    key = (config_text, client_id, tuple(sorted(files.items())))
    if key not in _NODE_DATA:
        _NODE_DATA[key] = prepare_node_data(cfg, client_id, files)
    return _NODE_DATA[key]


def partition_id(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise ConfigError("SuperNode has no partition-id; start it with --node-config 'partition-id=K'")
    return int(context.node_config["partition-id"])


def handle_query(message: Message, context: Context) -> Message:
    """Which partition this node holds; with data.source nodes also what it holds (row counts and
    its label histogram, never rows or ids), or why its data cannot be used."""
    cid = partition_id(context)
    if config_from_text(str(context.run_config[CONFIG_KEY])).data.source != "nodes":
        return query_reply(message, cid)
    try:
        data = runtime_for(context.run_config, context=context).data
    except ConfigError as err:  # refused here, and told to the server, which drops this client with it
        log.error("%s", err)
        return query_reply(message, cid, {"data_error": str(err)})
    labels = data.train.labels[data.parts[cid]]
    report = {
        "num_examples": len(data.parts[cid]),
        "eval_examples": data.eval_size(cid) or 0,
        "label_counts": json.dumps(torch.bincount(labels, minlength=len(data.label_names)).tolist()),
    }
    return query_reply(message, cid, report)


def handle_train(message: Message, context: Context) -> Message:
    """Train one round on this node's partition; the client's persistent store lives in context.state."""
    return client_reply(message, context, warmup=False)


def handle_warmup(message: Message, context: Context) -> Message:
    """The method's warm-up exchange (FedGaLore's first sketch): no training, the state is kept as it is."""
    return client_reply(message, context, warmup=True)


def handle_evaluate(message: Message, context: Context) -> Message:
    """Federated evaluation: the global model (with this client's own part, for a personalised method)
    scored on this node's evaluation rows; the client state is read, never changed."""
    node = runtime_for(context.run_config, context=context)
    payload, meta = record_to_payload(message.content)
    client_id, round_index = checked_client(node, context, meta)
    if node.data.eval_parts is None:
        raise ValueError("an evaluate message, but this run's federated_eval is off")
    tic = time.perf_counter()
    update = evaluate_client(
        node.method, node.workspace, node.data, payload, client_id, load_client_state(context.state), round_index,
        node.cfg.train.eval_batch_size,
    )  # fmt: skip
    content = update_to_record(update)
    content.config_records[META]["seconds_train"] = time.perf_counter() - tic
    return Message(content, reply_to=message)


def checked_client(node: NodeRuntime, context: Context, meta: dict) -> tuple[int, int]:
    """(client id, round) of a message, which must be for the partition this node holds."""
    client_id, round_index = int(meta["client_id"]), int(meta["round"])
    if client_id != partition_id(context):
        raise ValueError(f"message for client {client_id} reached the node holding partition {partition_id(context)}")
    if client_id >= len(node.data.parts):
        raise ValueError(f"partition-id {client_id} is outside federation.num_clients={len(node.data.parts)}")
    return client_id, round_index


def client_reply(message: Message, context: Context, warmup: bool) -> Message:
    node = runtime_for(context.run_config, context=context)
    payload, meta = record_to_payload(message.content)
    client_id, round_index = checked_client(node, context, meta)
    client = ClientContext(
        client_id=client_id,
        round=round_index,
        indices=node.data.parts[client_id],
        train=node.settings,
        seed=client_seed(node.cfg.seed, round_index, client_id),
        state=load_client_state(context.state),
    )
    tic = time.perf_counter()
    if warmup and node.method.warmup is None:
        raise ValueError(f"a warm-up message for {node.spec.key}, which declares no warm-up exchange")
    work = node.method.warmup.client if warmup else node.method.client_train
    update = work(node.workspace, payload, client)
    seconds = time.perf_counter() - tic
    if not warmup and finite_train_loss(update):  # a diverged client's state is discarded, as in the simulator
        save_client_state(context.state, client.state)
    # a secure round: Flower's secaggplus_mod masks the change and sends no tensor (engines/flower/secagg.py)
    content = masked_reply(update, payload) if in_secure_round(message) else update_to_record(update)
    content.config_records[META]["seconds_train"] = seconds
    content.config_records[META]["holds_state"] = holds_client_state(
        context.state
    )  # the server's checkpoint lists such clients
    return Message(content, reply_to=message)
