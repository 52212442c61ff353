"""Secure aggregation on Flower (issue 20 point 3), on the in-process grid: Flower's SecAgg+ gives the
plain aggregate to quantisation error, the server never holds an individual update, a client that
leaves mid-protocol is recovered, bad replies are screened before the sum, refusals."""

from __future__ import annotations

import pytest

pytest.importorskip("flwr")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from fedsub_fixtures import tiny_config  # noqa: E402

from fedsub.engines.flower import secagg  # noqa: E402
from fedsub.engines.flower.engine import FlowerLocal  # noqa: E402
from fedsub.engines.flower.grid import LocalGrid  # noqa: E402
from fedsub.engines.simulation import Simulation  # noqa: E402
from fedsub.errors import ConfigError  # noqa: E402

SECAGG = {"secagg": {"mode": "secaggplus"}}


def configs(name="fedit", rounds=1, **extra):
    base = dict(methods=[name], federation={"num_clients": 3, "clients_per_round": 3, "rounds": rounds}, **extra)
    flower = tiny_config(engine="flower", flower={"round_timeout": 5, "startup_timeout": 0}, privacy=SECAGG, **base)
    return flower, tiny_config(**base)


def secure_run(tiny_data, path, cfg, faults=None):
    engine = FlowerLocal(cfg, cfg.methods[0], tiny_data, path)
    return engine.run(faults=faults), engine


def quantisation_bound(cfg, clients=3):
    """Each client's weighted change is rounded to a step of 2 C / R (stochastic, so within one step);
    the mean of equal-weight clients errs by at most one step."""
    sa = cfg.privacy.secagg
    return clients * 2 * sa.clipping_range / sa.quantization_range


@pytest.mark.parametrize("name", ["fedit", "ffa_lora", "fedavg_full"])
def test_the_secure_mean_is_the_plain_mean_to_quantisation_error(tiny_data, tmp_path, name):
    flower, plain = configs(name)
    records, engine = secure_run(tiny_data, tmp_path / "secure", flower)
    sim = Simulation(plain, plain.methods[0], tiny_data, tmp_path / "plain")
    reference = sim.run()
    assert records[0]["aggregated"] == [0, 1, 2] and records[0]["skipped"] is None
    worst = max(float((engine.state.tensors[n] - t).abs().max()) for n, t in sim.state.tensors.items())
    assert 0 < worst <= quantisation_bound(flower)  # 0 < : the protocol really quantised (1.4e-6 here)
    assert records[0]["train_loss"] == pytest.approx(reference[0]["train_loss"], abs=1e-6)
    assert records[0]["secagg_clipped"] == []


def test_the_server_never_holds_an_individual_update(tiny_data, tmp_path, monkeypatch):
    """Every reply that reaches the server carries no tensor; the masked vectors look uniform on
    [0, 2^32); and the round loop is handed counts and metrics only."""
    replies, handed = [], []
    deliver = LocalGrid.deliver

    def spy(self, message):
        reply = deliver(self, message)
        replies.append(reply)
        return reply

    monkeypatch.setattr(LocalGrid, "deliver", spy)
    from fedsub.engines.rounds import RoundLoop

    finish = RoundLoop.finish_round

    def spy_finish(self, round_index, start, clients, outcomes, sent, warmup=None, secure=None):
        handed.extend(outcomes)
        return finish(self, round_index, start, clients, outcomes, sent, warmup, secure)

    monkeypatch.setattr(RoundLoop, "finish_round", spy_finish)
    flower, _ = configs()
    secure_run(tiny_data, tmp_path, flower)
    train = [r for r in replies if r is not None and "secaggplus_configs" in r.content.config_records]
    assert len(train) == 4 * 3  # four stages x three clients
    for reply in train:
        assert all(len(record) == 0 for record in reply.content.array_records.values())
    masked = [r.content.config_records["secaggplus_configs"].get("masked_params") for r in train]
    vectors = [np.load(__import__("io").BytesIO(b)) for m in masked if m for b in m[1:]]
    values = np.concatenate([v.reshape(-1) for v in vectors]).astype(np.float64)
    assert abs(values.mean() / 2**32 - 0.5) < 0.01 and values.std() / 2**32 > 0.28  # uniform: std 0.289
    assert handed and all(o.update is not None and not o.update.payload.tensors for o in handed)


def test_a_client_leaving_after_the_keys_is_recovered(tiny_data, tmp_path):
    """Client 2 answers setup and share-keys, then dies: its masks are rebuilt from the others'
    shares and the mean is that of clients 0 and 1, as when client 2 was dead from the start."""
    flower, _ = configs()
    left, engine_left = secure_run(tiny_data, tmp_path / "left", flower, {2: "leaves_secagg"})
    dead, engine_dead = secure_run(tiny_data, tmp_path / "dead", flower, {2: "dead"})
    assert left[0]["aggregated"] == dead[0]["aggregated"] == [0, 1]
    assert "left the secure aggregation" in left[0]["dropped"][0]["reason"]
    worst = max(float((engine_left.state.tensors[n] - t).abs().max()) for n, t in engine_dead.state.tensors.items())
    assert worst <= 2 * quantisation_bound(flower, clients=2)


def test_a_malformed_masked_vector_is_screened_and_the_round_goes_on(tiny_data, tmp_path, monkeypatch):
    original = secagg.masked_reply

    def short(update, sent):  # client 1 sends one tensor too few: Flower's sum would raise on it
        content = original(update, sent)
        if update.client_id == 1:
            record = content.array_records["fitres.parameters"]
            del record[next(iter(record.keys()))]
        return content

    monkeypatch.setattr("fedsub.engines.flower.client.masked_reply", short)
    flower, _ = configs()
    records, _ = secure_run(tiny_data, tmp_path, flower)
    assert records[0]["aggregated"] == [0, 2] and records[0]["skipped"] is None
    assert records[0]["rejected"][0]["client"] == 1
    assert "secagg collect_masked_vectors" in records[0]["rejected"][0]["reason"]


@pytest.mark.parametrize(
    "lie, reason",
    [
        ({"num_examples": 600}, "num_examples 600 != the client's 6 training rows"),
        ({"metrics": {"train_loss": float("nan")}}, "non-finite train_loss nan"),
    ],
)
def test_a_miscounted_or_diverged_client_is_kept_out_of_the_sum(tiny_data, tmp_path, monkeypatch, lie, reason):
    """Each collect reply gets the server's screen before Flower sums it: client 0 claims 600 rows
    (its weight would be inside the sum), or reports a NaN train loss. It is rejected, its masks are
    recovered as a dropout's, and the round aggregates the other two."""
    from dataclasses import replace

    original = secagg.masked_reply

    def lying(update, sent):
        return original(replace(update, **lie) if update.client_id == 0 else update, sent)

    monkeypatch.setattr("fedsub.engines.flower.client.masked_reply", lying)
    flower, _ = configs()
    records, engine = secure_run(tiny_data, tmp_path, flower)
    assert records[0]["aggregated"] == [1, 2] and records[0]["skipped"] is None
    assert records[0]["rejected"] == [{"client": 0, "reason": f"secagg collect_masked_vectors: {reason}"}]
    assert engine.state.round == 1


def test_a_non_finite_change_never_leaves_the_client():
    from fedsub.core.types import ClientUpdate, Payload

    sent = Payload({"w": torch.zeros(2)})
    with pytest.raises(ValueError, match="not finite"):
        secagg.masked_reply(ClientUpdate(0, Payload({"w": torch.tensor([1.0, float("inf")])}), 6, {}), sent)


def test_screening_each_stage_exact_cases():
    from flwr.app import ConfigRecord, RecordDict

    def reply(**values):
        return RecordDict({"secaggplus_configs": ConfigRecord(values)})

    assert secagg.screen_reply("setup", reply(pk1=b"a", pk2=b"b"), []) is None
    assert secagg.screen_reply("setup", reply(pk1=b"a"), []).startswith("malformed: KeyError")
    assert secagg.screen_reply("setup", reply(pk1=b"a", pk2=b"x" * 5000), []) == "malformed keys or shares"
    assert secagg.screen_reply("share_keys", reply(dsts=[1, 2], ctxts=[b"a"]), []) == "malformed keys or shares"
    assert secagg.screen_reply("unmask", reply(nids=[1], shares=[b"s"]), []) is None
    good = [np.zeros((1,), np.int64), np.zeros((2, 3), np.int64)]
    blobs = [secagg_bytes(a) for a in good]
    assert secagg.masked_vector_problem(blobs, [(2, 3)]) is None
    assert "expected integers of (2, 3)" in secagg.masked_vector_problem(
        [blobs[0], secagg_bytes(np.zeros((3, 2)))], [(2, 3)]
    )
    assert secagg.masked_vector_problem(blobs[:1], [(2, 3)]) == "1 masked arrays, expected 2"


def secagg_bytes(array):
    from flwr.common import ndarray_to_bytes

    return ndarray_to_bytes(array)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"engine": "simulation"}, "runs on engine: flower"),
        ({"methods": ["flora"]}, "cannot serve method flora: FLoRA stacks"),
        ({"methods": ["fedgalore"]}, "cannot serve method fedgalore: its server syncs"),
        ({"aggregation": {"rule": "median"}}, "aggregation.rule median needs each client's update"),
        ({"failures": {"poisoned": [0]}}, "failures.poisoned"),
        ({"failures": {"deadline_s": 5.0}}, "failures.deadline_s"),
        ({"federation": {"num_clients": 3, "clients_per_round": 1, "rounds": 1}}, "clients_per_round >= 2"),
    ],
)
def test_secagg_refusals_name_the_field(overrides, message):
    raw = {"engine": "flower", "privacy": SECAGG, **overrides}
    with pytest.raises(ConfigError, match=message):
        tiny_config(**raw)


def test_secagg_option_refusals():
    for secure, message in [
        ({"mode": "secaggplus", "modulus_range": 3 * 2**22}, "privacy.secagg.modulus_range"),
        ({"mode": "secaggplus", "num_shares": 2.0}, "privacy.secagg.num_shares"),
        ({"mode": "secaggplus", "clipping_range": 0}, "privacy.secagg.clipping_range"),
    ]:
        with pytest.raises(ConfigError, match=message):
            tiny_config(engine="flower", privacy={"secagg": secure})
    with pytest.raises(ConfigError, match="central DP clips each client's change at the server"):
        tiny_config(engine="flower", privacy={**SECAGG, "dp": {"mode": "central"}})


def test_local_dp_and_secure_aggregation_together(tiny_data, tmp_path):
    flower = tiny_config(engine="flower", flower={"round_timeout": 5, "startup_timeout": 0},
                         privacy={**SECAGG, "dp": {"mode": "local", "noise_multiplier": 0.5}})  # fmt: skip
    records, _ = secure_run(tiny_data, tmp_path, flower)
    assert records[0]["aggregated"] == [0, 1, 2] and records[-1]["dp_epsilon"] > 0
    assert torch.isfinite(torch.tensor(records[-1]["train_loss"]))


def test_a_client_keeping_state_is_listed_for_the_checkpoint(tiny_data, tmp_path):
    """fedsa_lora keeps each client's B on its node: a secure round must still tell the checkpoint."""
    import json

    flower, _ = configs({"name": "fedsa_lora", "rank": 4})
    secure_run(tiny_data, tmp_path / "fedsa_lora", flower)
    checkpoint = json.loads((tmp_path / "fedsa_lora" / "checkpoint" / "checkpoint.json").read_text())
    assert checkpoint["clients_on_nodes"] == [0, 1, 2]
