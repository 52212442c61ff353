"""Checkpoint files: nested state round-trips exactly, a damaged checkpoint is refused with a
one-line reason, a write killed half-way leaves the previous checkpoint intact; io honours the umask."""

import json
import math
import os
import stat

import numpy as np
import pytest
import torch

from fedsub.core.checkpoint import (
    Checkpoint,
    decode,
    encode,
    load_checkpoint,
    partition_digest,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from fedsub.core.io import atomic_write_text
from fedsub.core.types import ServerState
from fedsub.errors import CheckpointError


def sample_checkpoint(round_done=1):
    shared = torch.arange(6.0).reshape(2, 3)
    clients = {0: {"optimizer": {"state": {0: {"exp_avg": torch.ones(2), "step": torch.tensor(3.0)}},
    "param_groups": [{"lr": 0.1, "params": [0]}]},
                   "global_weights": {"w": shared}, "global_version": 2},
               2: {"global_weights": {"w": shared}, "projector": torch.randn(3, 4).mT}}  # fmt: skip
    extra = {
        "deltas": [(1, {"w": torch.ones(2, 3, dtype=torch.bfloat16)})],
        "refresh": 0,
        "ok": True,
        "none": None,
        "nan": math.nan,
    }
    server = ServerState(round_done, {"w": shared.clone()}, extra)
    return Checkpoint(
        round_done,
        server,
        clients,
        [{"round": 1, "accuracy": 0.5}],
        partition_digest([torch.tensor([0, 2]), torch.tensor([1])]),
        rng_state(),
        "abc",
        client_files={3: {"name": "client-3-00000007.safetensors", "bytes": 120, "sha256": "0" * 64}},
    )


def test_nested_state_round_trips_exactly_with_types_layout_and_sharing():
    ckpt = sample_checkpoint()
    tensors, seen = {}, {}
    structure = json.loads(json.dumps(encode({"c": ckpt.clients, "e": ckpt.server.extra}, tensors, seen)))
    back = decode(structure, tensors)
    assert set(back["c"]) == {0, 2}  # int keys stay int
    assert back["c"][0]["optimizer"]["state"][0]["step"].item() == 3.0
    assert back["c"][0]["global_weights"]["w"] is back["c"][2]["global_weights"]["w"]  # stored once, shared again
    projector = back["c"][2]["projector"]
    assert (
        torch.equal(projector, ckpt.clients[2]["projector"])
        and projector.stride() == ckpt.clients[2]["projector"].stride()
    )
    delta = back["e"]["deltas"][0]
    assert isinstance(delta, tuple) and delta[1]["w"].dtype == torch.bfloat16
    assert math.isnan(back["e"]["nan"]) and back["e"]["ok"] is True and back["e"]["none"] is None
    with pytest.raises(TypeError, match="cannot store object at .x"):
        encode({"x": object()}, {}, {})


def test_save_and_load(tmp_path):
    save_checkpoint(tmp_path, sample_checkpoint(1))
    save_checkpoint(tmp_path, sample_checkpoint(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.json",
        "state-00002.safetensors",
    ]  # the older one is gone
    loaded = load_checkpoint(tmp_path)
    assert loaded.round == 2 and loaded.fingerprint == "abc" and loaded.records == [{"round": 1, "accuracy": 0.5}]
    assert torch.equal(loaded.server.tensors["w"], torch.arange(6.0).reshape(2, 3))
    assert loaded.partition_sha256 == partition_digest([torch.tensor([0, 2]), torch.tensor([1])])
    assert loaded.partition_sha256 != partition_digest([torch.tensor([0]), torch.tensor([1, 2])])
    assert loaded.client_files == {3: {"name": "client-3-00000007.safetensors", "bytes": 120, "sha256": "0" * 64}}
    assert load_checkpoint(tmp_path / "nothing") is None


def test_rng_states_are_restored():
    state = rng_state()
    expected = (torch.rand(3), np.random.rand(3))
    restore_rng(state)
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])


@pytest.mark.parametrize(
    "damage", ["pointer-garbage", "pointer-truncated", "tensors-truncated", "tensors-missing", "tensors-flipped"]
)
def test_a_damaged_checkpoint_is_refused_in_one_line(tmp_path, damage):
    save_checkpoint(tmp_path, sample_checkpoint(1))
    pointer, tensors = tmp_path / "checkpoint.json", tmp_path / "state-00001.safetensors"
    if damage == "pointer-garbage":
        pointer.write_bytes(b"\x00\xff not json")
    elif damage == "pointer-truncated":
        pointer.write_text(pointer.read_text()[:40])
    elif damage == "tensors-truncated":
        tensors.write_bytes(tensors.read_bytes()[:100])
    elif damage == "tensors-missing":
        tensors.unlink()
    else:
        data = bytearray(tensors.read_bytes())
        data[-1] ^= 0xFF
        tensors.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path)
    message = str(err.value)
    assert (
        message.startswith(f"checkpoint {pointer} is corrupt or truncated")
        and "delete" in message
        and "\n" not in message
    )


@pytest.mark.parametrize("stage, survivor", [("tensors-half", 1), ("tensors-written", 1), ("pointer-written", 2)])
def test_a_write_killed_at_any_stage_leaves_a_complete_checkpoint(tmp_path, monkeypatch, stage, survivor):
    save_checkpoint(tmp_path, sample_checkpoint(1))

    def killed(at, round_done):
        if at == stage:
            raise KeyboardInterrupt  # stands in for SIGKILL (tested for real in tests/engines/test_sigkill_resume.py)

    monkeypatch.setattr("fedsub.core.checkpoint.crash_point", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, sample_checkpoint(2))
    assert load_checkpoint(tmp_path).round == survivor
    monkeypatch.undo()
    save_checkpoint(tmp_path, sample_checkpoint(3))  # the next save sweeps what the killed one left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "state-00003.safetensors"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode and path.read_text() == "x"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_cuda_checkpoint_on_a_machine_without_cuda_is_refused_in_one_line(tmp_path):
    save_checkpoint(tmp_path, sample_checkpoint(1))
    pointer = tmp_path / "checkpoint.json"
    reseal(pointer, pointer.read_text().replace('"device": "cpu"', '"device": "cuda:0"'))  # as written on a GPU
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path)
    message = str(err.value)
    assert (
        message.startswith(f"checkpoint {pointer}: it holds tensors on cuda:0")
        and "CUDA" in message
        and "\n" not in message
    )


def test_a_methods_typed_server_state_round_trips_by_its_registered_name():
    from fedsub.lora.adapters import FrozenFactors
    from fedsub.methods.fedgalore.state import Delta, FedGaLoreState

    p = torch.randn(2, 3)
    delta = Delta(version=1, decay=0.99, r_bar={"w": torch.ones(4, 2)}, refresh=0, projectors={"w": p})
    extra = FedGaLoreState(
        projectors={"w": p}, refresh=1, proj_sketched=True, v_step=5.0, deltas=[delta], known={0: 1, 2: 0}
    )
    tensors = {}
    structure = json.loads(json.dumps(encode({"g": extra, "f": FrozenFactors({"a": p})}, tensors, {})))
    assert structure["$dict"][0][1]["$state"] == "fedgalore"  # stored by name, not by module path
    back = decode(structure, tensors)
    g = back["g"]
    assert (
        isinstance(g, FedGaLoreState) and isinstance(g.deltas[0], Delta) and g.known == {0: 1, 2: 0}
    )  # int keys stay int
    assert g.deltas[0].projectors["w"] is g.projectors["w"] and torch.equal(
        g.projectors["w"], p
    )  # stored once, shared again
    assert (g.refresh, g.proj_sketched, g.v_step, g.v_hat) == (1, True, 5.0, {})
    assert isinstance(back["f"], FrozenFactors) and torch.equal(back["f"].tensors["a"], p)
    with pytest.raises(CheckpointError, match="server state 'gone', which no loaded method defines"):
        decode({"$state": "gone", "fields": {"$dict": []}}, {})


def test_a_view_that_is_not_dense_round_trips_with_its_strides():
    """GaLore's projector is 8 rows of a 32 x 32 Q (strides (1, 32)); stored compact, the next round's
    matmul took another kernel path and fedftg's numbers moved in the last digits."""
    q = torch.randn(32, 32)
    view = q.T[:8]  # shape (8, 32), strides (1, 32)
    tensors = {}
    node = encode({"p": view, "again": view}, tensors, {})
    back = decode(node, tensors)
    assert back["p"].stride() == (1, 32) and torch.equal(back["p"], view) and back["again"] is not None
    assert len(tensors) == 1 and tensors["t0"].numel() == 1 + 7 * 1 + 31 * 32  # the span, stored once


def reseal(pointer, text):
    """Write an edited pointer with a matching content_sha256 (what a machine that wrote it so would)."""
    from fedsub.core.checkpoint import content_digest

    body = json.loads(text)
    body["content_sha256"] = content_digest(body)
    pointer.write_text(json.dumps(body))


def test_edited_records_are_caught_by_the_content_hash(tmp_path):
    save_checkpoint(tmp_path, sample_checkpoint(1))
    pointer = tmp_path / "checkpoint.json"
    body = json.loads(pointer.read_text())
    body["records"][0]["accuracy"] = 0.99  # a better-looking history
    pointer.write_text(json.dumps(body))
    with pytest.raises(CheckpointError, match="do not match its content_sha256"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "planted, refused",
    [
        ('{"$dtype": "load"}', "it names torch dtype 'load'"),  # getattr(torch, "load") before
        ('{"$numpy": "O", "value": 1}', "it names numpy type 'O'"),
        ('{"$tensor": "t0", "device": "meta"}', "it names device 'meta'"),
    ],
)
def test_names_from_a_checkpoint_are_looked_up_not_evaluated(tmp_path, planted, refused):
    save_checkpoint(tmp_path, sample_checkpoint(1))
    pointer = tmp_path / "checkpoint.json"
    body = json.loads(pointer.read_text())
    body["structure"]["server"]["extra"] = json.loads(planted)
    reseal(pointer, json.dumps(body))
    with pytest.raises(CheckpointError, match=refused):
        load_checkpoint(tmp_path)
