"""Issue 19 point 2: mutated replies (dtypes, shapes, corrupted bytes, missing / extra / mistyped fields
and scalars, extreme counts) through Flower's record decoding and the server's screening: no exception
escapes, nothing non-finite or off-spec is accepted, the aggregate stays finite. CI-sized here; the
10,000-mutation run is benchmarks/bench_fuzz.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from fedsub_fixtures import tiny_config  # noqa: E402
from flwr.app import Array, Message  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fedsub.core.fedavg import fedavg  # noqa: E402
from fedsub.core.types import ClientUpdate, Payload, ServerState  # noqa: E402
from fedsub.core.validation import ScalarSpec, TensorSpec  # noqa: E402
from fedsub.engines.failures import screen_outcomes  # noqa: E402
from fedsub.engines.flower.records import update_to_record  # noqa: E402
from fedsub.engines.flower.server import FlowerClients  # noqa: E402
from fedsub.engines.rounds import TRAIN, Exchange  # noqa: E402

SPEC = {"a": TensorSpec((4, 3)), "b": TensorSpec((3,)), "decay": ScalarSpec(0.0, 1.0, low_open=True)}
SENT = Payload({"a": torch.zeros(4, 3), "b": torch.zeros(3)})
ROWS = 6  # the client's training rows, as the server knows them

values = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.booleans(), st.none(), st.binary(max_size=8), st.lists(st.integers(), max_size=3),
)  # fmt: skip
mutation = st.one_of(
    st.tuples(st.just("meta"), st.sampled_from(["client_id", "num_examples", "tensor_index", "round", "x"]), values),
    st.tuples(st.just("drop"), st.sampled_from(["meta", "metrics", "scalars", "tensors"]), st.none()),
    st.tuples(st.just("drop_meta"), st.sampled_from(["client_id", "num_examples", "tensor_index"]), st.none()),
    st.tuples(st.just("scalar"), st.sampled_from(["decay", "boost"]), values),
    st.tuples(st.just("metric"), st.sampled_from(["train_loss", "steps"]), values),
    st.tuples(st.just("bytes"), st.integers(0, 59), st.integers(0, 255)),
    st.tuples(st.just("array"), st.sampled_from(["float64", "int8", "empty", "2d"]), st.none()),
    st.tuples(
        st.just("index"),
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b", "c"]),
                st.sampled_from(["float32", "float16", "int64", "torch.load"]),
                st.lists(st.integers(-1, 5), max_size=3),
            ),
            max_size=3,
        ),
        st.none(),
    ),  # fmt: skip
)


def honest_reply() -> Message:
    if TaskIdentity._run_id is None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0
    generator = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(4, 3, generator=generator), "b": torch.randn(3, generator=generator)}
    update = ClientUpdate(0, Payload(tensors, {"decay": 0.9}), ROWS, {"train_loss": 0.5, "steps": 2.0})
    content = update_to_record(update)
    content.config_records["meta"]["seconds_train"] = 1.0
    return Message(content, 5, "train")


def mutate(message: Message, kind: str, key, value) -> None:
    content = message.content
    if kind == "meta":
        content.config_records["meta"][key] = value
    elif kind == "drop":
        del content[key]
    elif kind == "drop_meta":
        del content.config_records["meta"][key]
    elif kind == "scalar":
        content.config_records["scalars"][key] = value
    elif kind == "metric":
        content.config_records["metrics"][key] = value
    elif kind == "bytes":
        raw = bytearray(content.array_records["tensors"]["packed"].numpy().tobytes())
        raw[key % len(raw)] = value
        content.array_records["tensors"]["packed"] = Array(np.frombuffer(bytes(raw), dtype=np.uint8).copy())
    elif kind == "array":
        replacement = {"float64": np.zeros(15), "int8": np.zeros(60, np.int8), "empty": np.zeros(0, np.uint8),
                       "2d": np.zeros((6, 10), np.uint8)}[key]  # fmt: skip
        content.array_records["tensors"]["packed"] = Array(replacement)
    elif kind == "index":
        content.config_records["meta"]["tensor_index"] = json.dumps([[n, d, s] for n, d, s in key])


def screen(message: Message) -> list[ClientUpdate]:
    """What the server keeps of one reply: received (decoding, binding) then screen_outcomes."""
    clients = FlowerClients(grid=None, cfg=tiny_config(engine="flower"), method_key="fedit")
    exchange = Exchange(0, TRAIN, {0: SENT}, {0: None})
    outcome = clients.received(message, 0, exchange, elapsed=1.0)
    accepted, dropped, rejected = screen_outcomes([outcome], {0: SENT}, lambda c, p: SPEC, None, lambda c: ROWS)
    for entry in dropped + rejected:
        assert isinstance(entry["reason"], str) and "\n" not in entry["reason"] and len(entry["reason"]) <= 300
    return accepted


def assert_sound(accepted: list[ClientUpdate]) -> None:
    for update in accepted:
        assert update.num_examples == ROWS and set(update.payload.tensors) == {"a", "b"}
        assert all(torch.isfinite(t).all() and t.is_floating_point() for t in update.payload.tensors.values())
        decay = update.payload.scalars["decay"]
        assert not isinstance(decay, bool) and 0 < decay <= 1 and set(update.payload.scalars) == {"decay"}
    if accepted:
        state = fedavg(ServerState(0, dict(SENT.tensors)), accepted)
        assert all(torch.isfinite(t).all() for t in state.tensors.values())


def test_the_honest_reply_is_accepted():
    assert len(screen(honest_reply())) == 1


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(mutation, min_size=1, max_size=3))
def test_no_mutated_reply_escapes_screening_or_reaches_the_aggregate_unsound(mutations):
    message = honest_reply()
    for kind, key, value in mutations:
        try:
            mutate(message, kind, key, value)
        except Exception:  # the mutation itself is impossible for this record (flwr refused the value)
            continue
    assert_sound(screen(message))  # no exception escapes screen()


def test_a_nan_byte_pattern_is_rejected_not_aggregated():
    message = honest_reply()
    raw = bytearray(message.content.array_records["tensors"]["packed"].numpy().tobytes())
    raw[0:4] = np.array([math.nan], dtype=np.float32).tobytes()
    message.content.array_records["tensors"]["packed"] = Array(np.frombuffer(bytes(raw), dtype=np.uint8).copy())
    assert screen(message) == []
