"""FedSA-LoRA: A (and the head) averaged, each client's B kept on the client and restored in its
next round, A + head on the wire, diagnostics refused rather than computed from a B the server lacks."""

import dataclasses

import pytest
import torch
from fedsub_fixtures import tiny_config
from pydantic import ValidationError

from fedsub.config import ConfigError, validate_config
from fedsub.core.registry import build_method
from fedsub.core.types import ClientUpdate, Payload, ServerState
from fedsub.diagnostics.rounds import DiagnosticsUnavailable, client_factors, lora_round_diagnostics
from fedsub.engines.simulation import Simulation
from fedsub.lora.adapters import LoraOptions
from fedsub.lora.names import LORA_A, LORA_B, lora_layers
from fedsub.methods.fedsa_lora import KEPT_B, FedSALoRA

A, B = "q.lora_A.default.weight", "q.lora_B.default.weight"
A1, A2 = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]]), torch.tensor([[5.0, 2.0, -1.0], [4.0, 3.0, 0.0]])


def sim(tiny_data, tmp_path, name="fedsa", **sections):
    cfg = tiny_config(methods=[{"name": "fedsa_lora", "rank": 4}], **sections)
    return Simulation(cfg, cfg.methods[0], tiny_data, tmp_path / name)


def test_aggregate_is_the_fedavg_of_a_and_the_head_and_the_server_holds_no_b():
    method = build_method("fedsa_lora", {"rank": 2})
    state = ServerState(0, {A: torch.zeros(2, 3), "head": torch.zeros(2)})
    ups = [ClientUpdate(0, Payload({A: A1, "head": torch.tensor([4.0, 0.0])}), 1),
           ClientUpdate(1, Payload({A: A2, "head": torch.tensor([0.0, 8.0])}), 3)]  # fmt: skip
    new, metrics = method.aggregate_train(state, ups)
    assert torch.equal(new.tensors[A], torch.tensor([[4.0, 2.0, 0.0], [3.0, 2.0, 1.0]]))  # (A1 + 3 A2) / 4
    assert torch.equal(new.tensors["head"], torch.tensor([1.0, 6.0]))
    assert set(new.tensors) == {A, "head"} and new.round == 1 and metrics == {}


def test_bytes_up_and_down_are_a_and_the_head_and_no_b_crosses_the_wire(tiny_data, tmp_path):
    s = sim(tiny_data, tmp_path)
    params = s.workspace.parameters_by_name()
    sent = s.method.configure_train(s.state, 0)
    assert [n for n in sent.tensors if LORA_A in n] and not [n for n in sent.tensors if LORA_B in n]
    a_and_head = sum(
        params[n].numel() * params[n].element_size() for n in s.workspace.trainable_names() if LORA_B not in n
    )
    record = s.run_round(0)
    assert record["bytes_up"] == record["bytes_down"] == 3 * a_and_head
    update = s.method.client_train(s.workspace, s.method.configure_train(s.state, 0), s.client_context(1, 0))
    assert set(update.payload.tensors) == set(sent.tensors)


def frozen_lr(context):
    """The client's context with lr 0: AdamW moves nothing, so the model shows what the round started from."""
    return dataclasses.replace(context, train=dataclasses.replace(context.train, lr=0.0))


def test_each_client_keeps_its_own_b_and_starts_its_next_round_from_it(tiny_data, tmp_path):
    s = sim(tiny_data, tmp_path)
    b_names = s.method.b_names
    s.run_round(0)  # all 3 clients train: each keeps its own B
    kept = {c: state[KEPT_B] for c, state in s.client_states.items()}
    assert sorted(kept) == [0, 1, 2] and all(set(b) == set(b_names) for b in kept.values())
    assert any(kept[0][n].abs().sum() > 0 for n in b_names)  # B trained
    assert not all(torch.equal(kept[0][n], kept[1][n]) for n in b_names)  # and is the client's own
    assert set(s.state.tensors).isdisjoint(b_names)  # the server holds no B
    # The shared model now holds the last client's B; client 0's next round starts from its own.
    context = frozen_lr(s.client_context(1, 0))
    s.method.client_train(s.workspace, s.method.configure_train(s.state, 0), context)
    now = s.workspace.read(b_names)
    assert all(torch.equal(now[n], kept[0][n]) for n in b_names)
    assert all(torch.equal(context.state[KEPT_B][n], kept[0][n]) for n in b_names)
    # A client's first round starts from B = 0, whatever the shared model held.
    fresh = frozen_lr(s.client_context(1, 0))
    fresh.state.clear()
    s.method.client_train(s.workspace, s.method.configure_train(s.state, 0), fresh)
    assert all(not s.workspace.read(b_names)[n].any() for n in b_names)


def test_a_kept_b_changes_only_in_the_rounds_its_client_trains(tiny_data, tmp_path):
    s = sim(tiny_data, tmp_path, federation={"num_clients": 3, "clients_per_round": 2, "rounds": 2}, seed=2)
    first = s.run_round(0)["clients"]
    after_first = {c: dict(s.client_states[c][KEPT_B]) for c in first}
    second = s.run_round(1)["clients"]
    assert (first, second) == ([0, 1], [0, 2])  # seed 2: client 1 sits round 2 out
    for c in first:
        same = all(torch.equal(s.client_states[c][KEPT_B][n], after_first[c][n]) for n in s.method.b_names)
        assert same == (c not in second), c  # an absent client's B waits for it unchanged


def test_the_global_model_is_a_and_the_head_with_b_zero_and_every_evaluation_says_so(tiny_data, tmp_path):
    s = sim(tiny_data, tmp_path)
    record = s.run_round(0)
    assert record["eval_note"] == FedSALoRA.global_model_note and record["accuracy"] is not None
    s.method.load_global(s.workspace, s.state)
    params = s.workspace.parameters_by_name()
    assert all(not params[n].any() for n in s.method.b_names)
    assert all(torch.equal(params[n], s.state.tensors[n]) for n in s.state.tensors)


def test_diagnostics_are_refused_not_computed_from_a_b_the_server_never_saw():
    with pytest.raises(ValidationError, match="keeps each client's LoRA B on the client"):
        build_method("fedsa_lora", {"diagnostics": True})
    cfg = validate_config({"methods": [{"name": "fedsa_lora", "diagnostics": True}]})
    with pytest.raises(ConfigError, match=r"field methods\[fedsa_lora\]\.diagnostics: .* diag_\* metrics"):
        cfg.methods[0].options  # read (and checked) by `fedsub run` right after loading: exit 2, one line
    # The diagnostics code itself refuses the declared client-held B, with or without the option's check.
    layers = lora_layers([A, B])
    ups = [ClientUpdate(k, Payload({A: a}), 1) for k, a in enumerate((A1, A2))]
    with pytest.raises(DiagnosticsUnavailable, match="the clients keep LoRA B"):
        lora_round_diagnostics(LoraOptions(rank=2), FedSALoRA.diagnostics, layers, ups, {"q": (torch.zeros(3, 2), A1)})
    with pytest.raises(DiagnosticsUnavailable, match="stays on the clients"):
        client_factors(
            [u.payload.tensors for u in ups], layers["q"], FedSALoRA.diagnostics, shared=[{B: torch.zeros(3, 2)}]
        )
