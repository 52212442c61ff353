"""An in-process Grid: the ServerApp's messages handed straight to a ClientApp, one Context per node.

The same ServerApp loop and ClientApp handlers as a deployment, without SuperLink, SuperNodes or
processes: what the tests compare against the simulator, and `engine: flower` without
`flower.superlink`. Messages are delivered in order, one at a time (the simulator's order, so the
same seed gives the same floats). flwr's own InMemoryGrid needs a LinkState and is deprecated in 1.41.

`faults` makes a partition misbehave at training (it still answers the server's query for its
partition-id, as a node that joined and then broke does): "error" raises inside its ClientApp (the reply carries the
error, as a SuperNode's does), "leaves_secagg" answers a SecAgg+ round's key stages and dies before
its masked vector, "dead" never replies (a real grid would wait the round timeout; this
one does not sleep, the record is the same), "gone" is not connected at all.
"""

from __future__ import annotations

import copy
import time
import traceback
import uuid
from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

SERVER_NODE_ID = 1  # flwr's SUPERLINK_NODE_ID


class LocalGrid(Grid):
    answers_at_once = True  # replies are there when push_messages returns (fedsub's send_and_receive)

    def __init__(
        self, client_app: ClientApp, num_nodes: int, run_config: dict, faults: dict[int, str] | None = None,
        node_configs: dict[int, dict] | None = None,
    ):  # fmt: skip
        """`node_configs[k]`: more node config for node k (data.source nodes: its data=PATH, test=PATH)."""
        self.client_app = client_app
        self.faults = dict(faults or {})
        extra = node_configs or {}
        # node ids far from partition ids, so a mix-up of the two cannot pass the tests
        self.contexts = {
            1000 + 7 * k: Context(
                run_id=1,
                node_id=1000 + 7 * k,
                node_config={"partition-id": k, "num-partitions": num_nodes, **extra.get(k, {})},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for k in range(num_nodes)
        }
        self._run = Run.create_empty(run_id=1)
        # flwr 1.41 stamps run, node and task ids from this process-wide identity onto every new
        # Message; a ServerApp process has it set by its runtime, this process plays that role.
        if TaskIdentity._run_id is None:
            TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SERVER_NODE_ID, 0
        self._replies: dict[str, Message] = {}
        self.seconds: dict[str, float] = {}  # message id -> seconds its delivery took (the server's clock)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n, c in self.contexts.items() if self.faults.get(int(c.node_config["partition-id"])) != "gone"]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            tic = time.perf_counter()
            reply = self.deliver(message)
            self.seconds[message.metadata.message_id] = time.perf_counter() - tic  # its node's own time
            if reply is not None:
                self._replies[message.metadata.message_id] = reply
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def deliver(self, message: Message) -> Message | None:
        context = self.contexts[message.metadata.dst_node_id]
        fault = (
            self.faults.get(int(context.node_config["partition-id"]))
            if message.metadata.message_type == "train"
            else None
        )
        if fault == "dead" or (fault == "leaves_secagg" and stage_of(message) == "collect_masked_vectors"):
            return None
        try:
            if fault == "error":
                raise RuntimeError(f"injected failure on partition {context.node_config['partition-id']}")
            # a copy, as a real transport delivers: a ClientApp (Flower's secaggplus_mod pops its stage key)
            # may change what it receives, and the server sends one content object to several nodes
            reply = self.client_app(copy.deepcopy(message), context)
        except Exception:  # a SuperNode turns a ClientApp exception into an error reply, so do we
            reason = traceback.format_exc()
            reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)
        return reply


def stage_of(message: Message) -> str | None:
    """The SecAgg+ stage a message asks for (None: not a SecAgg+ message)."""
    configs = message.content.config_records.get("secaggplus_configs")
    return None if configs is None else str(configs.get("stage"))
