"""The crash-safety promise end to end: `fedsub run` killed with SIGKILL in the middle of writing a
checkpoint, resumed with `--resume` and killed again at a seeded random moment mid-round, then resumed
to the end, writes the metrics.jsonl of an uninterrupted run (timing fields aside). The client-state
budget holds one client's state (0.06 MB on the tiny model), so the others live in spilled files.

The CLI runs in forked children of the test process (the same `fedsub.app.cli.main` as the console script,
without a 10-15 s interpreter start per kill); SIGKILL is real, the child gets no chance to clean up.
"""

import json
import multiprocessing
import os
import signal
import time

import numpy as np
from fedsub_fixtures import untimed_records, write_csv_experiment

from fedsub.app.run import run_experiment
from fedsub.config import load_config
from fedsub.core.checkpoint import CRASH_ENV

ROUNDS = 6
METHOD = {"name": "fedgalore", "sync": "none", "proj_refresh_rounds": 2}  # client moments, weight copies, deltas


def _cli(args, env):
    os.environ.update(env)
    from fedsub.app.cli import main

    os._exit(main(args))


def fedsub(*args, env=None):
    """`fedsub run ARGS --quiet` in a forked child process."""
    child = multiprocessing.get_context("fork").Process(target=_cli, args=(["run", *args, "--quiet"], env or {}))
    child.start()
    return child


def checkpoint_round(run_dir):
    pointer = run_dir / "fedgalore" / "checkpoint" / "checkpoint.json"
    return json.loads(pointer.read_text())["round"] if pointer.is_file() else 0


def test_sigkill_mid_checkpoint_and_mid_round_then_resume_gives_the_uninterrupted_metrics(tmp_path):
    config = write_csv_experiment(
        tmp_path, [METHOD], federation={"num_clients": 3, "clients_per_round": 2, "rounds": ROUNDS}
    )
    overrides = ["train.local_steps=6", "clients.state_memory_mb=0.1"]
    run_experiment(load_config(config, overrides), tmp_path / "ref", quiet=True)
    cut = tmp_path / "cut"
    rng = np.random.default_rng(8)

    # killed by the checkpoint writer itself, half of a tensors file on disk, at a seeded round
    crash_round = int(rng.integers(2, ROUNDS - 2))
    sets = [x for o in overrides for x in ("--set", o)]
    first = fedsub(str(config), "--out", str(cut), *sets, env={CRASH_ENV: f"tensors-half:{crash_round}"})
    first.join(timeout=120)
    assert first.exitcode == -signal.SIGKILL
    assert checkpoint_round(cut) == crash_round - 1  # the pointer still names the last complete checkpoint
    assert any(p.name.endswith(".tmp") for p in (cut / "fedgalore" / "checkpoint").iterdir())
    assert len(list((cut / "fedgalore" / "checkpoint" / "client_states").glob("client-*.safetensors"))) >= 2

    # resumed, then killed at a seeded random moment inside a later round
    second = fedsub("--resume", str(cut))
    deadline = time.monotonic() + 120
    while checkpoint_round(cut) < crash_round and second.is_alive() and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(rng.uniform(0.0, 0.2))
    second.kill()
    second.join(timeout=60)
    done = checkpoint_round(cut)
    assert second.exitcode == -signal.SIGKILL and crash_round <= done < ROUNDS, (
        f"second run reached round {done} before the kill"
    )

    run_experiment(load_config(cut / "config.yaml"), cut, quiet=True, resume=True)
    assert untimed_records(cut / "fedgalore" / "metrics.jsonl") == untimed_records(
        tmp_path / "ref" / "fedgalore" / "metrics.jsonl"
    )
    assert (cut / "fedgalore" / "summary.json").is_file() and not (cut / "fedgalore" / "checkpoint").exists()
