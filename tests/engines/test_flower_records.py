"""Payload <-> Flower records: bit-exact for every dtype we send, bf16 included, over the wire format."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import RecordDict  # noqa: E402
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto  # noqa: E402

from fedsub.core.types import ClientUpdate, Payload  # noqa: E402
from fedsub.engines.flower.records import (  # noqa: E402
    load_client_state,
    payload_to_record,
    record_to_payload,
    record_to_update,
    save_client_state,
    update_to_record,
)

DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
]


def over_the_wire(content: RecordDict) -> RecordDict:
    """What a SuperLink hop does to a RecordDict: protobuf out and back."""
    return recorddict_from_proto(recorddict_to_proto(content))


def sample(dtype: torch.dtype, shape=(3, 2)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(shape, generator=generator, dtype=torch.float64) * 100
    if dtype == torch.bool:
        return values > 0
    return values.to(dtype)


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a, b)  # bit-exact, not close


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_payload_round_trip_every_dtype(dtype):
    tensors = {"w.weight": sample(dtype), "scalar": sample(dtype, ()), "empty": sample(dtype, (0, 4))}
    payload = Payload(tensors, {"refresh": 3, "lr": 1e-4, "mode": "ajive", "sketched": True})
    back, meta = record_to_payload(over_the_wire(payload_to_record(payload, {"round": 2, "client_id": 1})))
    assert back.tensors.keys() == tensors.keys()
    for name in tensors:
        assert_same(tensors[name], back.tensors[name])
    assert back.scalars == payload.scalars
    assert [type(v) for v in back.scalars.values()] == [int, float, str, bool]
    assert meta == {"round": 2, "client_id": 1}
    assert back.nbytes() == payload.nbytes()


def test_bf16_travels_as_its_own_bytes_in_one_packed_array():
    tensor = torch.tensor([1.0, -2.5, 3.0e38, 1.0e-38], dtype=torch.bfloat16)
    other = sample(torch.float64, (5,))
    content = payload_to_record(Payload({"x": tensor, "y": other}))
    assert list(content.array_records["tensors"].keys()) == ["packed"]  # one Array, whatever the tensor count
    array = content.array_records["tensors"]["packed"]
    assert array.dtype == "uint8" and len(array.numpy().tobytes()) == 4 * 2 + 5 * 8
    back = record_to_payload(over_the_wire(content))[0].tensors
    assert_same(back["x"], tensor)
    assert_same(back["y"], other)


@pytest.mark.parametrize(
    "index, reason",
    [
        ('[["x", "float32", [3]]]', "run past"),  # 12 bytes claimed, 8 sent
        ('[["x", "float32", [1]]]', "not in the tensor index"),  # 4 of 8 bytes claimed
        ('[["x", "torch.load", [2]]]', "unknown dtype"),  # a name from the wire is looked up, never evaluated
    ],
)
def test_an_index_that_does_not_match_the_bytes_is_refused(index, reason):
    content = payload_to_record(Payload({"x": torch.ones(2)}))
    content.config_records["meta"]["tensor_index"] = index
    with pytest.raises(ValueError, match=reason):
        record_to_payload(content)


def test_non_contiguous_tensor_round_trips():
    tensor = sample(torch.float32, (4, 3)).t()
    assert not tensor.is_contiguous()
    assert_same(record_to_payload(payload_to_record(Payload({"t": tensor})))[0].tensors["t"], tensor)


def test_update_round_trip_keeps_weight_and_metrics():
    update = ClientUpdate(
        2, Payload({"b": sample(torch.bfloat16)}, {"k": 1}), 17, {"train_loss": 0.123456789012345, "steps": 2.0}
    )
    back = record_to_update(over_the_wire(update_to_record(update)))
    assert (back.client_id, back.num_examples, back.metrics) == (2, 17, update.metrics)
    assert_same(back.payload.tensors["b"], update.payload.tensors["b"])


def test_client_state_round_trips_through_context_state():
    state = {
        "global_version": 3,
        "global_weights": {"w": sample(torch.float32)},
        "optimizer": {
            "state": {0: {"exp_avg": sample(torch.bfloat16), "step": torch.tensor(4.0)}},
            "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999)}],
        },
    }
    context_state = RecordDict()
    assert load_client_state(context_state) == {}
    save_client_state(context_state, state)
    back = load_client_state(over_the_wire(context_state))
    assert back["global_version"] == 3 and back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert_same(back["global_weights"]["w"], state["global_weights"]["w"])
    assert_same(back["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])


def test_a_message_is_a_handful_of_objects_whatever_its_tensor_count():
    """flwr moves each object as one HTTP request per hop: 60 tensors were 125 objects unpacked, now 7
    (message, RecordDict, ArrayRecord, Array, its chunk, 2 ConfigRecords)."""
    from flwr.app import Message
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.task_identity import TaskIdentity

    if TaskIdentity._run_id is None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0
    for count in (1, 60):
        tensors = {f"t{k}": sample(torch.float32, (384, 8)) for k in range(count)}
        message = Message(payload_to_record(Payload(tensors), {"round": 0, "client_id": 0}), 5, "train")
        assert len(get_all_nested_objects(message)) == 7
