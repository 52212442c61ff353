"""The simulator's client-state store (engines/client_store.py): a memory budget, states spilled to
safetensors and loaded back exactly, checkpoints that write only what changed, refusals in one line."""

import pytest
import torch
from fedsub_fixtures import stop_at, tiny_config, untimed_records

from fedsub.engines.client_store import STATE_OVERHEAD, ClientStateStore, state_bytes
from fedsub.engines.simulation import Simulation
from fedsub.errors import CheckpointError, ConfigError

KB = 1024


def state(value: float, n: int = 256) -> dict:
    """A state of n float32 (1 KB at n=256) plus the kinds of value a method keeps."""
    return {"m": torch.full((n,), value), "step": 3, "nested": {0: torch.tensor([value], dtype=torch.bfloat16)}}


def test_state_bytes_counts_each_storage_once_plus_the_overhead():
    shared = torch.zeros(256)
    assert state_bytes({"a": shared, "b": shared[:10], "c": [torch.zeros(4, dtype=torch.int64)]}) == (
        1024 + 32 + STATE_OVERHEAD
    )


def test_states_past_the_budget_are_spilled_least_recently_used_first_and_load_back_exactly(tmp_path):
    size = state_bytes(state(0.0))
    store = ClientStateStore(tmp_path, budget_bytes=2 * size)
    for c in range(3):
        store.put(c, state(float(c)))
    assert list(store.memory) == [1, 2] and store.in_memory_bytes == 2 * size  # 0 was the least recently used
    assert [f.name for f in tmp_path.iterdir()] == [store.files[0].name]
    store[1]  # 1 is used again: 2 is now the oldest in memory
    back = store[0]  # loading 0 spills 2
    assert list(store.memory) == [1, 0] and 2 in store.files and len(store) == 3 and 2 in store
    assert torch.equal(back["m"], torch.zeros(256)) and back["step"] == 3
    assert back["nested"][0].dtype == torch.bfloat16 and list(back["nested"]) == [0]
    assert torch.equal(store[2]["m"], torch.full((256,), 2.0))
    assert 7 not in store and sorted(store) == [0, 1, 2]


def test_a_checkpoint_writes_only_the_states_changed_since_the_last_and_old_files_go_after_the_next(tmp_path):
    store = ClientStateStore(tmp_path, budget_bytes=100 * KB)
    for c in range(4):
        store.put(c, state(float(c)))
    first = store.manifest()
    one_file = store.written_bytes // 4
    store.committed_to(first)
    assert sorted(first) == [0, 1, 2, 3] and len(list(tmp_path.iterdir())) == 4
    store.put(2, state(20.0))  # only client 2 trained since
    second = store.manifest()
    assert store.written_bytes == 5 * one_file  # one more file
    assert {c: second[c] for c in (0, 1, 3)} == {c: first[c] for c in (0, 1, 3)} and second[2] != first[2]
    assert (tmp_path / first[2]["name"]).is_file()  # the committed checkpoint still needs it
    store.committed_to(second)
    assert not (tmp_path / first[2]["name"]).exists() and len(list(tmp_path.iterdir())) == 4


def test_a_state_replaced_before_any_checkpoint_leaves_no_file_behind(tmp_path):
    store = ClientStateStore(tmp_path, budget_bytes=state_bytes(state(0.0)))
    store.put(0, state(0.0))
    store.put(1, state(1.0))  # spills 0
    spilled = store.files[0].name
    store.put(0, state(5.0))  # 0 trained again: its spilled file is stale and no checkpoint holds it
    assert not (tmp_path / spilled).exists() and torch.equal(store[0]["m"], torch.full((256,), 5.0))


def test_restore_reads_states_from_the_manifest_and_refuses_a_missing_or_altered_file_in_one_line(tmp_path):
    store = ClientStateStore(tmp_path, budget_bytes=100 * KB)
    store.put(0, state(1.5))
    store.put(1, state(2.5))
    manifest = store.manifest()
    resumed = ClientStateStore(tmp_path, budget_bytes=100 * KB)
    resumed.restore(manifest, tmp_path / "ckpt")
    assert torch.equal(resumed[1]["m"], torch.full((256,), 2.5)) and resumed.serial == store.serial

    path = tmp_path / manifest[0]["name"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # same size, one bit changed
    path.write_bytes(bytes(data))
    altered = ClientStateStore(tmp_path, budget_bytes=100 * KB)
    altered.restore(manifest, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=f"client state file {path} changed since it was written") as err:
        altered[0]
    assert "\n" not in str(err.value)

    path.unlink()
    with pytest.raises(CheckpointError, match=f"client 0's state file {path} is missing; restore the file") as err:
        ClientStateStore(tmp_path, budget_bytes=100 * KB).restore(manifest, tmp_path / "ckpt")
    assert "\n" not in str(err.value) and (tmp_path / manifest[1]["name"]).is_file()  # nothing else touched


def test_a_budget_smaller_than_one_state_is_refused_naming_the_field(tmp_path):
    store = ClientStateStore(tmp_path, budget_bytes=KB)
    with pytest.raises(ConfigError, match=r"clients.state_memory_mb: 0.000976562 MB is less than one client's"):
        store.put(4, state(0.0))


# ---------------------------------------------------------------- in the simulator


def make(tiny_data, path, method, resume=False, memory_mb=256.0):
    cfg = tiny_config(
        methods=[method],
        federation={"num_clients": 3, "clients_per_round": 2, "rounds": 4},
        clients={"state_memory_mb": memory_mb},
    )
    return Simulation(cfg, cfg.methods[0], tiny_data, path, resume=resume)


@pytest.mark.parametrize("method", [{"name": "fedgalore", "sync": "none"}, {"name": "fedftg"}])
def test_a_run_whose_states_spill_equals_one_that_holds_them_all_and_resumes_exactly(
    tiny_data, tmp_path, monkeypatch, method
):
    """Budget: one client's state. Every other state lives on disk and is loaded when sampled; the
    resume runs with twice the budget (bookkeeping: the checkpoint accepts it)."""
    reference = make(tiny_data, tmp_path / "ref", method)
    reference.run()
    one = max(state_bytes(reference.client_states[c]) for c in reference.client_states) / 2**20
    undo = stop_at(monkeypatch, 3)
    spilled = make(tiny_data, tmp_path / "cut", method, memory_mb=one)
    with pytest.raises(KeyboardInterrupt):
        spilled.run()
    assert len(spilled.client_states.memory) == 1 and len(spilled.client_states.files) >= 2
    undo()
    resumed = make(tiny_data, tmp_path / "cut", method, resume=True, memory_mb=2 * one)  # a budget may change
    resumed.run()
    assert untimed_records(tmp_path / "cut" / "metrics.jsonl") == untimed_records(tmp_path / "ref" / "metrics.jsonl")
    assert all(torch.equal(resumed.state.tensors[n], reference.state.tensors[n]) for n in reference.state.tensors)
    for c in reference.client_states:
        ours, theirs = resumed.client_states[c]["optimizer"]["state"], reference.client_states[c]["optimizer"]["state"]
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[i]["exp_avg_sq"], theirs[i]["exp_avg_sq"]) for i in ours if "exp_avg_sq" in ours[i])


def test_a_run_with_a_missing_state_file_on_resume_is_refused_in_one_line_and_keeps_its_files(tiny_data, tmp_path):
    method = {"name": "fedftg"}
    make(tiny_data, tmp_path / "run", method).run()
    folder = tmp_path / "run" / "checkpoint" / "client_states"
    files = sorted(folder.iterdir())
    files[0].unlink()
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match=f"state file {files[0]} is missing") as err:
        make(tiny_data, tmp_path / "run", method, resume=True).run()
    assert "\n" not in str(err.value)
    assert sorted(folder.iterdir()) == files[1:] and (tmp_path / "run" / "metrics.jsonl").read_text() == metrics


def test_each_checkpoint_writes_the_states_of_the_clients_trained_since_the_last_one(tiny_data, tmp_path):
    sim = make(tiny_data, tmp_path / "run", {"name": "fedftg"})
    serials, seen = [], set()

    def on_round(record):
        seen.update(record["clients"])
        files = {p.name for p in (tmp_path / "run" / "checkpoint" / "client_states").iterdir()}
        serials.append((sim.client_states.serial, len(record["clients"]), len(files) == len(seen)))

    sim.run(on_round=on_round)
    written = [b - a for (a, _, _), (b, _, _) in zip([(0, 0, 0)] + serials, serials)]
    assert written == [n for _, n, _ in serials] == [2, 2, 2, 2]  # files written = clients of the round
    assert all(one_file_per_client for *_, one_file_per_client in serials)
