"""Issue 19 point 1: a malformed or lying reply is rejected with a one-line reason and the round goes
on, on both engines; counts, client ids and method scalars are checked against what the server knows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from fedsub_fixtures import tiny_config  # noqa: E402
from flwr.app import Array, ConfigRecord  # noqa: E402

from fedsub.core.types import ClientUpdate, Payload  # noqa: E402
from fedsub.core.validation import ScalarSpec, TensorSpec, validate_update  # noqa: E402


def set_meta(key, value):
    return lambda content: content.config_records["meta"].__setitem__(key, value)


def drop(section, key=None):
    def mutate(content):
        if key is None:
            del content[section]
        else:
            del content.config_records[section][key]

    return mutate


MUTATIONS = {
    "index not json": (set_meta("tensor_index", "[[garbage"), "malformed reply: JSONDecodeError"),
    "index dtype evaluated": (set_meta("tensor_index", '[["x", "torch.load", [2]]]'), "unknown dtype 'torch.load'"),
    "packed float64": (
        lambda c: c.array_records["tensors"].__setitem__("packed", Array(np.zeros(3))),
        "packed tensors must be uint8 bytes",
    ),
    "no client id": (drop("meta", "client_id"), "malformed reply: KeyError"),
    "no metrics": (drop("metrics"), "malformed reply: KeyError"),
    "huge count": (set_meta("num_examples", 2**62), "num_examples 4611686018427387904 != the client's 6 training rows"),
    "string count": (set_meta("num_examples", "many"), "malformed reply: ValueError"),
    "another client": (set_meta("client_id", 0), "reply claims client 0, the message went to client 1"),
}


def tampered(client_app, mutate):
    """Client 1's training replies go through `mutate` (what a broken or hostile node would send)."""

    def app(message, context):
        reply = client_app(message, context)
        if context.node_config["partition-id"] == 1 and message.metadata.message_type == "train":
            mutate(reply.content)
        return reply

    return app


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_a_malformed_flower_reply_is_rejected_and_the_round_goes_on(tiny_data, tmp_path, monkeypatch, name):
    import fedsub.engines.flower.engine as engine_module
    from fedsub.engines.flower.engine import FlowerLocal

    mutate, reason = MUTATIONS[name]
    monkeypatch.setattr(engine_module, "client_app", tampered(engine_module.client_app, mutate))
    cfg = tiny_config(engine="flower", flower={"round_timeout": 5, "startup_timeout": 0})
    records = FlowerLocal(cfg, cfg.methods[0], tiny_data, tmp_path / "fedit").run()
    for record in records:
        assert record["aggregated"] == [0, 2] and record["dropped"] == [] and record["skipped"] is None
        assert [r["client"] for r in record["rejected"]] == [1] and reason in record["rejected"][0]["reason"]
        assert "\n" not in record["rejected"][0]["reason"] and len(record["rejected"][0]["reason"]) <= 300
        assert math.isfinite(record["test_loss"])


def test_a_node_reported_time_neither_dodges_nor_decides_a_deadline(tiny_data, tmp_path, monkeypatch):
    """seconds_train of -5 is not believed: the deadline uses the server's clock (here 0.0 s allowed)."""
    import fedsub.engines.flower.engine as engine_module
    from fedsub.engines.flower.engine import FlowerLocal

    monkeypatch.setattr(
        engine_module, "client_app", tampered(engine_module.client_app, set_meta("seconds_train", -5.0))
    )
    cfg = tiny_config(engine="flower", flower={"round_timeout": 5, "startup_timeout": 0}, failures={"deadline_s": 1e-9})
    record = FlowerLocal(cfg, cfg.methods[0], tiny_data, tmp_path / "fedit").run()[0]
    assert [d["client"] for d in record["dropped"]] == [0, 1, 2]
    assert all(d["reason"].startswith("deadline: trained ") for d in record["dropped"])


def test_the_simulator_rejects_an_absurd_count_instead_of_overflowing(tiny_data, tmp_path):
    from fedsub.engines.simulation import Simulation

    cfg = tiny_config()
    sim = Simulation(cfg, cfg.methods[0], tiny_data, tmp_path / "fedit")
    honest = sim.method.client_train

    def lying(workspace, payload, client):
        update = honest(workspace, payload, client)
        return ClientUpdate(update.client_id, update.payload, 10**400 if client.client_id == 1 else 6, update.metrics)

    sim.method.client_train = lying
    record = sim.run()[0]
    assert record["aggregated"] == [0, 2]
    assert record["rejected"] == [
        {"client": 1, "reason": f"num_examples 1{'0' * 36}... != the client's 6 training rows"}
    ]


SPEC = {"w": TensorSpec((2,)), "decay": ScalarSpec(0.0, 1.0, low_open=True), "v_step": ScalarSpec(1.0, math.inf)}


@pytest.mark.parametrize(
    "scalars, reason",
    [
        ({"decay": 0.5, "v_step": 10}, None),
        ({"decay": 1.0, "v_step": 1}, None),  # the closed ends
        ({"decay": float("nan"), "v_step": 1}, "scalar 'decay' is nan, not finite"),
        ({"decay": math.inf, "v_step": 1}, "scalar 'decay' is inf, not finite"),
        ({"decay": 1e6, "v_step": 1}, "scalar 'decay' = 1000000.0 is outside (0, 1]"),
        ({"decay": -3, "v_step": 1}, "scalar 'decay' = -3 is outside (0, 1]"),
        ({"decay": 0.0, "v_step": 1}, "scalar 'decay' = 0.0 is outside (0, 1]"),  # the open end
        ({"decay": "0.5", "v_step": 1}, "scalar 'decay' is '0.5', not a number"),
        ({"decay": True, "v_step": 1}, "scalar 'decay' is True, not a number"),
        ({"v_step": 1}, "missing scalar 'decay'"),
        ({"decay": 0.5, "v_step": 0.5}, "scalar 'v_step' = 0.5 is outside [1, inf]"),
        ({"decay": 0.5, "v_step": 1, "boost": 9}, "unexpected scalar 'boost'"),
    ],
)
def test_method_scalars_are_validated_like_tensors(scalars, reason):
    update = ClientUpdate(0, Payload({"w": torch.ones(2)}, scalars), 4)
    assert validate_update(update, SPEC, Payload({"w": torch.zeros(2)}), client_id=0, known_examples=4) == reason


def test_fedgalore_declares_its_scalars(tiny_data, tmp_path):
    from fedsub.engines.simulation import Simulation

    cfg = tiny_config(methods=[{"name": "fedgalore", "rank": 4, "sync": "mean"}])
    sim = Simulation(cfg, cfg.methods[0], tiny_data, tmp_path / "g")
    spec = sim.method.update_spec(sim.state, 0, sim.method.configure_train(sim.state, 0))
    assert spec["decay"] == ScalarSpec(0.0, 1.0, low_open=True) and spec["v_step"] == ScalarSpec(1.0, math.inf)
    assert sim.run()[0]["rejected"] == []  # honest clients pass


def test_an_own_data_nodes_report_is_bounded(tmp_path):
    from fedsub.engines.flower.server import node_report

    meta = ConfigRecord({"num_examples": 5, "eval_examples": 1, "label_counts": "[2, 3, 0]"})
    assert node_report(meta, 3, 100) == {"num_examples": 5, "eval_examples": 1, "label_counts": [2, 3, 0]}
    too_many = ConfigRecord({"num_examples": 10**9, "eval_examples": 0, "label_counts": f"[{10**9}, 0, 0]"})
    with pytest.raises(ValueError, match="1000000000 rows > validation.max_examples 100"):
        node_report(too_many, 3, 100)
    inconsistent = ConfigRecord({"num_examples": 5, "eval_examples": 0, "label_counts": "[1, 1, 1]"})
    with pytest.raises(ValueError, match="num_examples 5 with label counts"):
        node_report(inconsistent, 3, 100)


def test_a_count_too_long_to_print_is_still_one_line():
    update = ClientUpdate(0, Payload({"w": torch.ones(2)}), 10**5000)
    reason = validate_update(update, {"w": TensorSpec((2,))}, Payload({"w": torch.zeros(2)}), known_examples=4)
    assert reason == "num_examples an integer too long to print != the client's 4 training rows"
