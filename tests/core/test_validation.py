"""Server-side validation: every malformed update is rejected with a reason, an honest one accepted
(hand-made cases, hypothesis-fuzzed payloads, and in the simulator's round)."""

import math

import pytest
import torch
from fedsub_fixtures import tiny_config
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsub.core.types import ClientUpdate, Payload
from fedsub.core.validation import TensorSpec, spec_of, validate_update
from fedsub.engines.simulation import Simulation

SENT = Payload({"w": torch.zeros(3, 2), "b": torch.zeros(2)})
SPEC = spec_of(SENT.tensors)


def honest(**tensors):
    return ClientUpdate(0, Payload({"w": torch.ones(3, 2), "b": torch.ones(2), **tensors}), 4, {"train_loss": 0.1})


def reject(update, max_norm=None):
    return validate_update(update, SPEC, SENT, max_norm, client_id=0)


def test_an_honest_update_passes():
    assert reject(honest()) is None
    assert reject(honest(), max_norm=math.sqrt(6) + 1e-6) is None  # ||ones(3,2) - 0|| = sqrt 6


@pytest.mark.parametrize(
    "update, reason",
    [
        (honest(extra=torch.ones(1)), "unexpected tensor 'extra'"),
        (ClientUpdate(0, Payload({"w": torch.ones(3, 2)}), 4), "missing tensor 'b'"),
        (
            ClientUpdate(0, Payload({"w": torch.ones(2, 3), "b": torch.ones(2)}), 4),
            "tensor 'w' has shape (2, 3), expected (3, 2)",
        ),
        (
            ClientUpdate(0, Payload({"w": torch.ones(3, 2, dtype=torch.float64), "b": torch.ones(2)}), 4),
            "tensor 'w' has dtype float64, expected float32",
        ),
        (
            ClientUpdate(0, Payload({"w": torch.full((3, 2), math.inf), "b": torch.ones(2)}), 4),
            "tensor 'w' has non-finite values",
        ),
        (
            ClientUpdate(0, Payload({"w": torch.ones(3, 2), "b": torch.tensor([1.0, math.nan])}), 4),
            "tensor 'b' has non-finite values",
        ),
        (ClientUpdate(0, Payload({"w": [[1.0] * 2] * 3, "b": torch.ones(2)}), 4), "tensor 'w' is a list, not a tensor"),
        (
            ClientUpdate(0, Payload({"w": torch.ones(3, 2), "b": torch.ones(2)}), 0),
            "num_examples 0 is not a positive integer",
        ),
        (ClientUpdate(0, {"w": torch.ones(3, 2)}, 4), "payload is a dict, not a Payload of named tensors"),
        (ClientUpdate(5, Payload(dict(SENT.tensors)), 4), "update claims client_id 5, sent by client 0"),
        ("garbage", "reply is a str, not a ClientUpdate"),
    ],
)
def test_malformed_updates_are_rejected_with_the_reason(update, reason):
    assert reject(update) == reason


def test_the_norm_bound_applies_to_the_change_from_what_was_sent():
    assert reject(honest(), max_norm=2.0) == "tensor 'w': update norm 2.449 > max_norm 2"
    free = validate_update(honest(), {**SPEC, "w": TensorSpec((3, 2))}, Payload({"b": torch.ones(2)}), 3.0)
    assert free is None  # b unchanged (norm 0); w not sent, so its own norm 2.449 counts
    assert (
        validate_update(honest(), SPEC, Payload({"b": torch.ones(2)}), 2.0)
        == "tensor 'w': update norm 2.449 > max_norm 2"
    )


# ---------------------------------------------------------------- fuzzing

values = st.one_of(
    st.none(), st.integers(), st.floats(allow_nan=True), st.text(max_size=5), st.lists(st.floats(), max_size=3),
    st.builds(torch.full, st.tuples(st.integers(0, 3), st.integers(0, 3)),
              st.floats(width=32, allow_nan=True, allow_infinity=True)),
    st.sampled_from([torch.ones(3, 2, dtype=torch.int64), torch.ones(3, 2, dtype=torch.bfloat16),
                     torch.ones(2, dtype=torch.bool)]),
)  # fmt: skip
payloads = st.dictionaries(
    st.one_of(st.sampled_from(["w", "b", "x"]), st.text(max_size=3), st.integers()), values, max_size=4
)


@settings(max_examples=150, deadline=None)
@given(tensors=payloads, num_examples=st.one_of(st.integers(-2, 10), st.floats(), st.none(), st.booleans()))
def test_fuzzed_payloads_never_crash_the_server_and_only_valid_ones_pass(tensors, num_examples):
    update = ClientUpdate(0, Payload(tensors), num_examples)
    reason = reject(update, max_norm=10.0)
    valid = (
        set(tensors) == {"w", "b"} and isinstance(num_examples, int) and not isinstance(num_examples,
        bool) and num_examples > 0
        and all(isinstance(t, torch.Tensor) and t.dtype == torch.float32 and tuple(t.shape) == SPEC[n].shape
                and bool(torch.isfinite(t).all()) and float(t.norm()) <= 10.0 for n, t in tensors.items())
    )  # fmt: skip
    assert (reason is None) == valid
    assert reason is None or ("\n" not in reason and len(reason) < 200)


@settings(max_examples=100, deadline=None)
@given(
    name=st.sampled_from(["w", "b"]),
    corruption=st.sampled_from(["drop", "add", "shape", "dtype", "nan", "inf", "huge"]),
    index=st.integers(0, 5),
)
def test_every_single_corruption_of_an_honest_update_is_rejected(name, corruption, index):
    tensors = dict(honest().payload.tensors)
    value = tensors[name].clone()
    if corruption == "drop":
        del tensors[name]
    elif corruption == "add":
        tensors[f"{name}_extra"] = value
    elif corruption == "shape":
        tensors[name] = value.reshape(-1)[:-1]
    elif corruption == "dtype":
        tensors[name] = value.double()
    else:
        value.view(-1)[index % value.numel()] = {"nan": math.nan, "inf": -math.inf, "huge": 1e6}[corruption]
        tensors[name] = value
    assert reject(ClientUpdate(0, Payload(tensors), 4), max_norm=100.0) is not None


def test_the_simulator_never_aggregates_a_rejected_update(tiny_data, tmp_path):
    cfg = tiny_config(federation={"num_clients": 3, "clients_per_round": 3, "rounds": 1})
    sim = Simulation(cfg, cfg.methods[0], tiny_data, tmp_path)
    honest_train = sim.method.client_train

    def client_train(workspace, payload, client):
        update = honest_train(workspace, payload, client)
        if client.client_id == 1:
            name = next(iter(update.payload.tensors))
            update.payload.tensors[name] = torch.full_like(update.payload.tensors[name], math.nan)
        return update

    sim.method.client_train = client_train
    [record] = sim.run()
    assert len(record["rejected"]) == 1 and record["rejected"][0]["client"] == 1
    assert record["rejected"][0]["reason"].endswith("has non-finite values")
    assert record["aggregated"] == [0, 2] and record["dropped"] == []
    assert all(bool(torch.isfinite(t).all()) for t in sim.state.tensors.values())
