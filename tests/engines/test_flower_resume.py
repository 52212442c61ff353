"""engine: flower resumes a killed ServerApp from its checkpoint, on the in-process grid.

The checkpoint holds the server state, the records and the RNGs; client state stays on the nodes,
and a resumed Flower run starts its nodes empty. So: methods whose clients hold no state resume to
the uninterrupted metrics.jsonl (timing fields aside), and a checkpoint taken while clients held
state on their nodes is refused in one line (the simulator, which checkpoints client states, resumes
those exactly: test_resume.py).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal

import pytest

pytest.importorskip("flwr")

from fedsub_fixtures import one_line_error, tiny_config, untimed_records, write_csv_experiment  # noqa: E402

from fedsub.app.cli import main  # noqa: E402
from fedsub.app.run import run_experiment  # noqa: E402
from fedsub.config import load_config  # noqa: E402
from fedsub.core.checkpoint import CRASH_ENV  # noqa: E402
from fedsub.engines.rounds import RoundLoop  # noqa: E402
from fedsub.errors import CheckpointError  # noqa: E402

STATELESS = ["fedit", {"name": "fedgalore", "rank": 2, "downlink": "dense", "sync": "mean", "proj_refresh_rounds": 2}]
STATEFUL = {"name": "fedgalore", "rank": 2, "sync": "none"}  # each client keeps its optimizer moments


def flower_config(method, rounds=3):
    return tiny_config(engine="flower", methods=[method], flower={"round_timeout": 5, "startup_timeout": 0},
                       federation={"num_clients": 3, "clients_per_round": 2, "rounds": rounds})  # fmt: skip


def local(tiny_data, path, method, resume=False):
    from fedsub.engines.flower.engine import FlowerLocal

    cfg = flower_config(method)
    return FlowerLocal(cfg, cfg.methods[0], tiny_data, path, resume=resume)


def stop_at(monkeypatch, round_index):
    """RoundLoop.run_round (both engines' round) raises KeyboardInterrupt at `round_index` (0-based)."""
    original = RoundLoop.run_round

    def run_round(self, clients, index, on_client=None):
        if index == round_index:
            raise KeyboardInterrupt
        return original(self, clients, index, on_client)

    monkeypatch.setattr(RoundLoop, "run_round", run_round)
    return lambda: monkeypatch.setattr(RoundLoop, "run_round", original)


@pytest.mark.parametrize("method", STATELESS, ids=["fedit", "fedgalore-dense-mean"])
def test_a_resumed_flower_run_logs_the_uninterrupted_metrics(tiny_data, tmp_path, monkeypatch, method):
    reference = local(tiny_data, tmp_path / "ref", method)
    reference.run()
    undo = stop_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        local(tiny_data, tmp_path / "cut", method).run()
    undo()
    assert len(untimed_records(tmp_path / "cut" / "metrics.jsonl")) == 2
    pointer = json.loads((tmp_path / "cut" / "checkpoint" / "checkpoint.json").read_text())
    assert pointer["round"] == 2 and pointer["clients_on_nodes"] == []  # no node held state
    resumed = local(tiny_data, tmp_path / "cut", method, resume=True)
    assert [r["round"] for r in resumed.run()] == [1, 2, 3]
    assert untimed_records(tmp_path / "cut" / "metrics.jsonl") == untimed_records(tmp_path / "ref" / "metrics.jsonl")
    assert all((resumed.state.tensors[n] == reference.state.tensors[n]).all() for n in reference.state.tensors)


def test_resuming_a_checkpoint_with_client_state_on_the_nodes_is_refused(tiny_data, tmp_path, monkeypatch):
    undo = stop_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        local(tiny_data, tmp_path / "fedgalore", STATEFUL).run()
    undo()
    where = tmp_path / "fedgalore" / "checkpoint"
    clients = json.loads((where / "checkpoint.json").read_text())["clients_on_nodes"]
    assert clients and clients == sorted(clients)  # the clients that trained in rounds 1-2
    with pytest.raises(CheckpointError) as refused:
        local(tiny_data, tmp_path / "fedgalore", STATEFUL, resume=True).run()
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and f"delete {where} to rerun fedgalore from round 1" in message
    assert f"(clients {', '.join(map(str, clients))})" in message and "engine: simulation" in message

    # a deployment refuses before submitting anything (nothing listens at the address)
    from fedsub.engines.flower.deploy import FlowerDeployment

    cfg = flower_config(STATEFUL).model_copy(
        update={
            "flower": flower_config(STATEFUL).flower.model_copy(update={"superlink": "127.0.0.1:9", "insecure": True})
        }
    )
    with pytest.raises(CheckpointError, match="keeps client state on the Flower nodes"):
        FlowerDeployment(cfg, cfg.methods[0], tmp_path / "fedgalore", resume=True).run()


def test_fedsub_run_resume_refuses_node_state_in_one_line(tmp_path, monkeypatch, capsys):
    config = write_csv_experiment(
        tmp_path, [STATEFUL], engine="flower", flower={"round_timeout": 5, "startup_timeout": 0}
    )
    out = tmp_path / "run"
    undo = stop_at(monkeypatch, 1)
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 130
    undo()
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--quiet"]) == 2
    assert "fedgalore keeps client state on the Flower nodes" in one_line_error(capsys)


def test_the_deployed_server_app_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """server_main, the ServerApp of a deployment, resumes when the run config says so."""
    from flwr.app import Context, RecordDict

    from fedsub.engines.flower.apps import client_app, server_main
    from fedsub.engines.flower.client import CONFIG_KEY, METHOD_KEY, OUT_KEY, RESUME_KEY
    from fedsub.engines.flower.grid import LocalGrid
    from fedsub.engines.flower.server import run_config_text

    config = write_csv_experiment(tmp_path, ["fedit"], federation={"num_clients": 3, "clients_per_round": 2,
                                                                         "rounds": 3},
                                  engine="flower", flower={"round_timeout": 5, "startup_timeout": 0})  # fmt: skip
    cfg = load_config(config)

    def serve(out, resume=False):
        run_config = {CONFIG_KEY: run_config_text(cfg), METHOD_KEY: "fedit", OUT_KEY: str(out), RESUME_KEY: resume}
        server_main(
            LocalGrid(client_app, 3, run_config),
            Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config=run_config),
        )

    serve(tmp_path / "ref")
    undo = stop_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        serve(tmp_path / "cut")
    undo()
    serve(tmp_path / "cut", resume=True)
    assert untimed_records(tmp_path / "cut" / "fedit" / "metrics.jsonl") == untimed_records(
        tmp_path / "ref" / "fedit" / "metrics.jsonl"
    )
    assert (tmp_path / "cut" / "fedit" / "final_model.safetensors").is_file()


def _cli(args, env):
    os.environ.update(env)
    os._exit(main(args))


def test_fedsub_run_killed_mid_checkpoint_resumes_to_the_uninterrupted_metrics(tmp_path):
    """SIGKILL (the process, its in-process nodes with it) half-way through round 2's checkpoint."""
    config = write_csv_experiment(tmp_path, ["fedit"], federation={"num_clients": 3, "clients_per_round": 2,
                                                                         "rounds": 3},
                                  engine="flower", flower={"round_timeout": 5, "startup_timeout": 0})  # fmt: skip
    run_experiment(load_config(config), tmp_path / "ref", quiet=True)
    cut = tmp_path / "cut"
    args = ["run", str(config), "--out", str(cut), "--quiet"]
    child = multiprocessing.get_context("fork").Process(target=_cli, args=(args, {CRASH_ENV: "tensors-half:2"}))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == -signal.SIGKILL
    assert json.loads((cut / "fedit" / "checkpoint" / "checkpoint.json").read_text())["round"] == 1
    assert main(["run", "--resume", str(cut), "--quiet"]) == 0
    assert untimed_records(cut / "fedit" / "metrics.jsonl") == untimed_records(
        tmp_path / "ref" / "fedit" / "metrics.jsonl"
    )
    assert (cut / "fedit" / "summary.json").is_file() and not (cut / "fedit" / "checkpoint").exists()
