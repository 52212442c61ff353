"""The crash-safety promise end to end: `fedsub run` killed with SIGKILL in the middle of writing a
checkpoint, resumed with `--resume` and killed again at a seeded random moment mid-round, then resumed
to the end, writes the metrics.jsonl of an uninterrupted run (timing fields aside). The last resume
runs in-process (the same code as the CLI's, without a third 10 s interpreter start)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from fedsub.config import load_config
from fedsub.core.checkpoint import CRASH_ENV
from fedsub.engines.simulation import TIMING_KEYS
from fedsub.run import run_experiment
from fedsub_fixtures import write_csv_experiment

ROUNDS = 6
METHOD = {"name": "fedgalore", "sync": "none", "proj_refresh_rounds": 2}  # client moments, weight copies, deltas


def untimed(path):
    lines = path.read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS and not k.startswith("seconds_")} for line in lines]


def fedsub(*args, env=None):
    command = [sys.executable, "-m", "fedsub.cli", "run", *args, "--quiet"]
    return subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, stderr=subprocess.PIPE)


def checkpoint_round(run_dir):
    pointer = run_dir / "fedgalore" / "checkpoint" / "checkpoint.json"
    return json.loads(pointer.read_text())["round"] if pointer.is_file() else 0


def wait_for_round(run_dir, process, at_least):
    deadline = time.monotonic() + 120
    while checkpoint_round(run_dir) < at_least and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)


def test_sigkill_mid_checkpoint_and_mid_round_then_resume_gives_the_uninterrupted_metrics(tmp_path):
    config = write_csv_experiment(tmp_path, [METHOD], federation={"num_clients": 3, "clients_per_round": 2, "rounds": ROUNDS})
    overrides = ["train.local_steps=6"]
    run_experiment(load_config(config, overrides), tmp_path / "ref", quiet=True)
    cut = tmp_path / "cut"
    rng = np.random.default_rng(8)

    # killed by the checkpoint writer itself, half of a tensors file on disk, at a seeded round
    crash_round = int(rng.integers(2, ROUNDS - 2))
    first = fedsub(str(config), "--out", str(cut), "--set", overrides[0], env={CRASH_ENV: f"tensors-half:{crash_round}"})
    assert first.wait(timeout=120) == -signal.SIGKILL
    assert checkpoint_round(cut) == crash_round - 1  # the pointer still names the last complete checkpoint
    assert any(p.name.endswith(".tmp") for p in (cut / "fedgalore" / "checkpoint").iterdir())

    # resumed, then killed at a seeded random moment inside a later round
    second = fedsub("--resume", str(cut))
    wait_for_round(cut, second, crash_round)
    time.sleep(rng.uniform(0.0, 0.3))
    second.send_signal(signal.SIGKILL)
    second.wait()
    done = checkpoint_round(cut)
    assert crash_round <= done < ROUNDS, f"second run reached round {done} before the kill"

    run_experiment(load_config(cut / "config.yaml"), cut, quiet=True, resume=True)
    assert untimed(cut / "fedgalore" / "metrics.jsonl") == untimed(tmp_path / "ref" / "fedgalore" / "metrics.jsonl")
    assert (cut / "fedgalore" / "summary.json").is_file() and not (cut / "fedgalore" / "checkpoint").exists()
