"""Secure aggregation on Flower (config `privacy.secagg`): Flower's own SecAgg+ protocol around
fedsub's train exchange, so that the server learns only the weighted mean of the round's changes.

Both halves are Flower's code, unchanged (flwr 1.41; Bell et al. 2020, SecAgg+):
- clients: `secaggplus_mod` on the train handler (`secagg_when_asked` passes every other message
  through). In its collect stage it calls our handler, reads the change we hand it as a legacy FitRes,
  multiplies it by the client's weight n / max_weight, clips every coordinate to +-clipping_range,
  quantises it stochastically into quantization_range integers, adds its pairwise and private masks
  mod modulus_range, and clears our arrays before the reply leaves: only the masked integers go up.
- server: `SecAggPlusWorkflow`'s four stages (setup, share keys, collect masked vectors, unmask),
  called one by one with a minimal legacy context (`SumOnly`): its configure_fit names the round's
  nodes, and its aggregate_fit receives only the unmasked, dequantised mean, the one thing it keeps.

What fedsub adds: the change (upload minus what was sent) is what is summed, so clipping_range bounds
a round's change, not a weight (1.0 and 2**22 levels quantise a LoRA change of ~1e-3 to ~5e-7 per
client, tested against the plain mean); and every reply is screened before Flower's workflow reads it
(`ScreenedGrid`): a reply of the wrong shape or types is dropped as if it never came, and the protocol
recovers that client's masks as it does for any dropout, instead of raising inside Flower's code.
The server cannot screen a client's change (it never sees one): clipping_range and max_weight are the
bound on any one client's influence, and robust rules are refused with secure aggregation.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitIns, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState

from fedsub.config import SecAggConfig
from fedsub.core.types import ClientUpdate, Payload, Tensors
from fedsub.core.validation import shown
from fedsub.engines.flower.records import META, record_to_update, update_to_record

MAX_KEY_BYTES = 4096  # a public key, a share or a ciphertext of one share pair is ~100-300 bytes


# ------------------------------------------------------------------ the client's half
def secagg_when_asked(message: Message, context: Context, call_next) -> Message:
    """The train handler's mod: Flower's secaggplus_mod for the messages of a SecAgg+ round, every
    other message as it is (a run without secure aggregation never sees the mod)."""
    if message.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in message.content.config_records:
        return secaggplus_mod(message, context, call_next)
    return call_next(message, context)


def in_secure_round(message: Message) -> bool:
    return RECORD_KEY_CONFIGS in message.content.config_records


def masked_reply(update: ClientUpdate, sent: Payload) -> RecordDict:
    """What the train handler gives secaggplus_mod in a secure round: the change of every sent tensor
    (in name order) as the legacy FitRes the mod reads, and fedsub's reply without tensors (its example
    count and train metrics, which go up in clear as Flower's FitRes metrics do). `max_abs_change` lets
    the server log a change the clipping_range cut."""
    names = sorted(sent.tensors)
    changes = [(update.payload.tensors[n].float() - sent.tensors[n].float()).numpy() for n in names]
    if not all(np.isfinite(c).all() for c in changes):  # quantising NaN gives any integer: keep it out of the sum
        raise ValueError("the change is not finite; it is not sent into the secure sum")
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(changes), update.num_examples, {})
    content = compat.fitres_to_recorddict(fitres, keep_input=False)
    plain = update_to_record(ClientUpdate(update.client_id, Payload(), update.num_examples, update.metrics))
    for name, record in [*plain.config_records.items(), *plain.array_records.items()]:
        content[name] = record  # its (empty) tensor record too: the mod clears it, the server reads no tensors
    largest = max((float(np.abs(c).max()) for c in changes if c.size), default=0.0)
    content.config_records[META]["max_abs_change"] = largest
    return content


# ------------------------------------------------------------------ the server's half
@dataclass
class NodeProxy:
    """What SecAggPlusWorkflow reads of a legacy ClientProxy: its node id."""

    node_id: int


class SumOnly:
    """The two calls SecAggPlusWorkflow makes of a legacy Strategy: which nodes train (configure_fit)
    and what to do with the aggregate (aggregate_fit: keep the unmasked mean; never an update). It is
    also the client manager the workflow asks for its log line ("sampled 3 clients (out of 3)")."""

    def __init__(self, nodes: list[int]):
        self.nodes, self.mean = nodes, None

    def num_available(self) -> int:
        return len(self.nodes)

    def configure_fit(self, server_round, parameters, client_manager):
        return [(NodeProxy(n), FitIns(parameters, {})) for n in self.nodes]

    def aggregate_fit(self, server_round, results, failures):
        if results:
            self.mean = parameters_to_ndarrays(results[0][1].parameters)  # every result holds the same mean
        return None, {}


@dataclass
class SecureRound:
    """A secure round's outcome: the weighted mean change (None: the protocol halted, `reason` says
    why), the clients whose masked change is in it with their clear metadata, and the protocol's cost."""

    mean: Tensors | None
    summed: dict[int, tuple[ClientUpdate, dict]] = field(default_factory=dict)  # client -> (counts and metrics, META)
    screened: dict[int, str] = field(default_factory=dict)  # client id -> why its reply was dropped
    reason: str | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    clipped: list[int] = field(default_factory=list)  # clients whose change clipping_range cut


class ScreenedGrid:
    """The grid as SecAggPlusWorkflow sees it: fedsub's polling (`receive`) and every reply screened
    for the stage it answers before the workflow reads it. A reply that fails is left out, as if its
    node had dropped (the protocol's own recovery then applies). A collect-stage reply is also read as
    the client's update without tensors (its count and metrics) and put to `accept(client, update)`,
    the server's own screen: a miscounted or diverged client is kept out of the sum, not summed."""

    def __init__(self, grid, receive: Callable, timeout: float, shapes: list[tuple[int, ...]],
                 node_clients: dict[int, int], accept: Callable[[int, ClientUpdate], str | None]):  # fmt: skip
        self.grid, self.receive, self.timeout = grid, receive, timeout
        self.shapes, self.node_clients, self.accept = shapes, node_clients, accept  # node id -> client id
        self.outcome = SecureRound(None)

    def __getattr__(self, name):  # create_message, get_node_ids, run: the grid's own
        return getattr(self.grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None):
        messages = list(messages)  # one stage per call: the workflow sends each stage to all its nodes at once
        self.outcome.bytes_down += sum(content_bytes(m.content) for m in messages)
        stage = str(messages[0].content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]) if messages else ""
        kept = []
        for reply in self.receive(self.grid, messages, self.timeout):
            if reply.has_error():
                kept.append(reply)
                continue
            self.outcome.bytes_up += content_bytes(reply.content)
            client = self.node_clients.get(reply.metadata.src_node_id, -1)
            reason = screen_reply(stage, reply.content, self.shapes)
            if reason is None and stage == Stage.COLLECT_MASKED_VECTORS:
                reason = self.note_summed(client, reply.content)
            if reason is None:
                kept.append(reply)
            else:
                self.outcome.screened[client] = f"secagg {stage}: {reason}"[:300]
        return kept

    def note_summed(self, client: int, content: RecordDict) -> str | None:
        try:
            update, meta = record_to_update(content), dict(content.config_records[META])
            weighted = compat.recorddict_to_fitres(content, keep_input=True).num_examples  # what the mod weighted by
        except Exception as err:  # noqa: BLE001 (whatever is malformed: kept out of the sum, the round goes on)
            return f"malformed reply: {type(err).__name__}"
        if update.client_id != client:
            return f"reply claims client {update.client_id}, the node holds client {client}"
        if weighted != update.num_examples:
            return f"weighted by {shown(weighted)} examples but reports {update.num_examples}"
        reason = self.accept(client, update)
        if reason is None:
            self.outcome.summed[client] = (update, meta)
        return reason


def screen_reply(stage: str, content: RecordDict, shapes: list[tuple[int, ...]]) -> str | None:
    """Why a reply to `stage` cannot be handed to Flower's workflow (None: it can): the keys and
    types each stage reads, bounded sizes, and in the collect stage masked integers of the sent
    tensors' shapes (plus the weight's one entry) and Flower's FitRes records."""
    try:
        res = content.config_records[RECORD_KEY_CONFIGS]
        if stage == Stage.SETUP:
            keys = (res[Key.PUBLIC_KEY_1], res[Key.PUBLIC_KEY_2])
            ok = all(isinstance(k, bytes) and len(k) <= MAX_KEY_BYTES for k in keys)
        elif stage == Stage.SHARE_KEYS:
            dsts, texts = res[Key.DESTINATION_LIST], res[Key.CIPHERTEXT_LIST]
            ok = len(dsts) == len(texts) and all(type(d) is int for d in dsts) and all(
                isinstance(t, bytes) and len(t) <= MAX_KEY_BYTES for t in texts)  # fmt: skip
        elif stage == Stage.COLLECT_MASKED_VECTORS:
            return masked_vector_problem(res[Key.MASKED_PARAMETERS], shapes)
        elif stage == Stage.UNMASK:
            nids, shares = res[Key.NODE_ID_LIST], res[Key.SHARE_LIST]
            ok = len(nids) == len(shares) and all(type(n) is int for n in nids) and all(
                isinstance(s, bytes) and len(s) <= MAX_KEY_BYTES for s in shares)  # fmt: skip
        else:
            return f"unknown stage {stage!r}"
    except Exception as err:  # noqa: BLE001 (np.load of hostile bytes raises several kinds: all are malformed)
        return f"malformed: {type(err).__name__}: {err}"[:200]
    return None if ok else "malformed keys or shares"


def masked_vector_problem(arrays, shapes: list[tuple[int, ...]]) -> str | None:
    if not isinstance(arrays, list) or len(arrays) != len(shapes) + 1:
        return f"{len(arrays) if isinstance(arrays, list) else 'no'} masked arrays, expected {len(shapes) + 1}"
    for blob, shape in zip(arrays, [(1,), *shapes]):
        if not isinstance(blob, bytes):
            return "a masked array is not bytes"
        array = np.load(io.BytesIO(blob), allow_pickle=False)
        if array.shape != shape or array.dtype.kind not in "iu":
            return f"masked array of shape {array.shape} and dtype {array.dtype}, expected integers of {shape}"
    return None


def content_bytes(content: RecordDict) -> int:
    """Bytes a message carries: its arrays' and every bytes or str value of its config records
    (numbers at 8 bytes each); what SecAgg+ costs is mostly keys, shares and the masked vector."""
    total = sum(a.numpy().nbytes for record in content.array_records.values() for a in record.values())
    for record in content.config_records.values():
        for value in record.values():
            for v in value if isinstance(value, list) else [value]:
                total += len(v) if isinstance(v, (bytes, str)) else 8
    return total


def workflow(sa: SecAggConfig, max_weight: float, timeout: float) -> SecAggPlusWorkflow:
    """Flower's workflow with the config's settings (a float <= 1 is a share of the round's clients)."""
    shares = sa.num_shares if sa.num_shares <= 1 else int(sa.num_shares)
    threshold = sa.reconstruction_threshold if sa.reconstruction_threshold <= 1 else int(sa.reconstruction_threshold)
    return SecAggPlusWorkflow(
        shares, threshold, max_weight=max_weight, clipping_range=sa.clipping_range,
        quantization_range=sa.quantization_range, modulus_range=sa.modulus_range, timeout=timeout,
    )  # fmt: skip


def secure_mean(grid: ScreenedGrid, flow: SecAggPlusWorkflow, contents: dict[int, RecordDict], round_index: int,
                sent: Payload) -> SecureRound:  # fmt: skip
    """Run the four stages over the nodes of `contents` (node id -> the train message's content);
    the weighted mean change by tensor name, or why there is none. Flower's own INFO lines (how many
    were sampled, how many results) are held back: the round's record says it, under --quiet too."""
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(max(level, logging.WARNING))
    try:
        return run_stages(grid, flow, contents, round_index, sent)
    finally:
        flwr_log.setLevel(level)


def run_stages(grid: ScreenedGrid, flow: SecAggPlusWorkflow, contents: dict[int, RecordDict], round_index: int,
               sent: Payload) -> SecureRound:  # fmt: skip
    strategy = SumOnly(sorted(contents))
    context = LegacyContext(Context(0, 0, {}, RecordDict(), {}), strategy=strategy, client_manager=strategy)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: round_index + 1})
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(Parameters([], ""), True)
    state, outcome = WorkflowState(), grid.outcome
    if not (flow.setup_stage(grid, context, state) and flow.share_keys_stage(grid, context, state)):
        outcome.reason = "secure aggregation halted before the masked vectors: too few clients answered"
        return outcome
    # The protocol's members are the nodes that shared their keys. flwr 1.41 keeps every sampled node,
    # so one silent at setup or share-keys is later listed as dropped, and the others are asked for
    # shares of a key they never received: a KeyError on every node, and the round is lost.
    members = set(state.active_node_ids)
    state.sampled_node_ids = members
    state.nid_to_neighbours = {n: ns & members for n, ns in state.nid_to_neighbours.items() if n in members}
    state.nid_to_fitins = {nid: contents[nid] for nid in members}
    if not (flow.collect_masked_vectors_stage(grid, context, state) and flow.unmask_stage(grid, context, state)):
        outcome.reason = "secure aggregation halted: too few clients left to unmask the sum"
        return outcome
    if strategy.mean is None:
        outcome.reason = "secure aggregation gave no sum"
        return outcome
    names = sorted(sent.tensors)
    outcome.mean = {
        n: torch.from_numpy(np.asarray(a, dtype=np.float32)).reshape(sent.tensors[n].shape)
        for n, a in zip(names, strategy.mean)
    }
    return outcome


def clipped_clients(
    summed: dict[int, tuple[ClientUpdate, dict]], clipping_range: float, max_weight: float
) -> list[int]:
    """Clients whose weighted change had a coordinate beyond clipping_range (the mod clipped it)."""
    out = []
    for client, (update, meta) in summed.items():
        largest = meta.get("max_abs_change", 0.0)
        if (
            isinstance(largest, float)
            and math.isfinite(largest)
            and largest * update.num_examples / max_weight > clipping_range
        ):
            out.append(client)
    return sorted(out)
