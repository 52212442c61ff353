"""Checkpoint and resume inside one process: a run interrupted after any round and resumed from its
checkpoint logs exactly what an uninterrupted run logs (timing fields aside) and ends in the same state."""

import json

import pytest
import torch
from fedsub_fixtures import stop_at, tiny_config, untimed_records

from fedsub.engines.simulation import Simulation

# Methods with the most state to carry: client optimizer moments (fedftg, fedgalore sync none),
# per-client weight copies and a delta history (fedgalore factored downlink), merged bases (flora).
CASES = [
    ("fedit", {}),
    ("fedftg", {}),
    ("flora", {}),
    ("fedgalore", {"sync": "none", "proj_refresh_rounds": 2}),
    ("fedgalore", {"proj_refresh_rounds": 2}),
]


def make(tiny_data, path, method, rounds=3, resume=False, **sections):
    cfg = tiny_config(
        methods=[method], federation={"num_clients": 3, "clients_per_round": 2, "rounds": rounds}, **sections
    )
    return Simulation(cfg, cfg.methods[0], tiny_data, path, resume=resume)


@pytest.mark.parametrize(
    "name, options", CASES, ids=[f"{n}-{'-'.join(map(str, o.values())) or 'default'}" for n, o in CASES]
)
def test_resume_after_an_interrupt_equals_the_uninterrupted_run(tiny_data, tmp_path, monkeypatch, name, options):
    method = {"name": name, **options}
    reference = make(tiny_data, tmp_path / "ref", method)
    reference.run()
    undo = stop_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        make(tiny_data, tmp_path / "cut", method).run()
    undo()
    assert len(untimed_records(tmp_path / "cut" / "metrics.jsonl")) == 2
    resumed = make(tiny_data, tmp_path / "cut", method, resume=True)
    resumed.run()
    assert untimed_records(tmp_path / "cut" / "metrics.jsonl") == untimed_records(tmp_path / "ref" / "metrics.jsonl")
    assert resumed.state.tensors.keys() == reference.state.tensors.keys()
    assert all(torch.equal(resumed.state.tensors[n], reference.state.tensors[n]) for n in reference.state.tensors)


def test_rounds_logged_after_the_last_checkpoint_are_redone(tiny_data, tmp_path, monkeypatch):
    reference = make(tiny_data, tmp_path / "ref", "fedit", rounds=4, checkpoint={"every": 2})
    reference.run()
    undo = stop_at(monkeypatch, 3)  # rounds 1-3 logged, the checkpoint holds 2
    with pytest.raises(KeyboardInterrupt):
        make(tiny_data, tmp_path / "cut", "fedit", rounds=4, checkpoint={"every": 2}).run()
    undo()
    assert json.loads((tmp_path / "cut" / "checkpoint" / "checkpoint.json").read_text())["round"] == 2
    assert len(untimed_records(tmp_path / "cut" / "metrics.jsonl")) == 3
    make(tiny_data, tmp_path / "cut", "fedit", rounds=4, resume=True, checkpoint={"every": 2}).run()
    assert untimed_records(tmp_path / "cut" / "metrics.jsonl") == untimed_records(tmp_path / "ref" / "metrics.jsonl")


def test_checkpoint_every_zero_writes_none_and_resume_starts_over(tiny_data, tmp_path):
    sim = make(tiny_data, tmp_path / "a", "fedit", rounds=2, checkpoint={"every": 0})
    sim.run()
    assert not (tmp_path / "a" / "checkpoint").exists()
    again = make(tiny_data, tmp_path / "a", "fedit", rounds=2, resume=True, checkpoint={"every": 0})
    assert len(again.run()) == 2


def test_a_checkpoint_of_another_config_is_refused(tiny_data, tmp_path):
    from fedsub.errors import CheckpointError

    make(tiny_data, tmp_path / "a", "fedit", rounds=2).run()
    other = make(
        tiny_data, tmp_path / "a", "fedit", rounds=2, resume=True, train={"local_steps": 2, "batch_size": 4, "lr": 0.5}
    )
    with pytest.raises(CheckpointError, match="another config"):
        other.run()


def test_a_checkpoint_with_an_untyped_server_state_is_refused(tiny_data, tmp_path):
    """A checkpoint written before FedGaLore's server state was typed (extra was a dict) says so."""
    from fedsub.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    method = {"name": "fedgalore", "rank": 2}
    make(tiny_data, tmp_path / "a", method, rounds=3, checkpoint={"keep": True}).run()
    ckpt = load_checkpoint(tmp_path / "a" / "checkpoint")
    ckpt.server.extra = {"projectors": ckpt.server.extra.projectors, "refresh": ckpt.server.extra.refresh}
    ckpt.round, ckpt.records = 2, ckpt.records[:2]
    save_checkpoint(tmp_path / "a" / "checkpoint", ckpt)
    with pytest.raises(CheckpointError, match="older form than its FedGaLoreState"):
        make(tiny_data, tmp_path / "a", method, rounds=3, resume=True, checkpoint={"keep": True}).run()
