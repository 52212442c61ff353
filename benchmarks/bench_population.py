"""Benchmark: peak RSS, checkpoint bytes and seconds per round against the population (issue 17).

    .venv/bin/python benchmarks/bench_population.py [--config configs/population.yaml] [--methods a,b]
        [--populations 10,200,2000] [--rounds 12] [--set k=v]... [--out results/population-cpu.json]

Every (method, population) cell is one simulated run of `--rounds` rounds in a fresh process (so its
peak RSS is its own), 10 clients per round from a population of 10, 200 or 2,000, one local step, a
checkpoint after every round. Per cell: peak RSS, the median seconds per round, the partition's
seconds, and per checkpoint the bytes it wrote (new client-state files, the server tensors, the
pointer) beside the clients trained since the previous one. Targets: peak RSS at 2,000 clients
<= 1.2x the 10-client run; seconds per round flat in the population; checkpoint bytes in proportion
to the clients trained since the last checkpoint. Finished cells are kept in partial-<out> as they
finish, and a rerun skips them. Not in `make bench` (about 30 min on the 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import emit, machine_info, partial_path

from fedsub.app.compare import select_methods
from fedsub.config import load_config
from fedsub.core.io import atomic_write_text
from fedsub.errors import ConfigError

HERE = Path(__file__).parent


def checkpoint_files(folder: Path) -> dict[str, int]:
    """Name (relative to the checkpoint folder) -> bytes of every file a checkpoint consists of."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def run_cell(config: str, overrides: list[str], method: str) -> dict:
    """One simulated run in this process (the parent starts one process per cell)."""
    import torch

    from fedsub.engines.setup import prepare_data
    from fedsub.engines.simulation import Simulation

    torch.set_num_threads(1)
    cfg = load_config(config, overrides)
    cfg = cfg.model_copy(update={"methods": select_methods(cfg, method)})
    import fedsub.data

    timing, partition = {}, fedsub.data.partition

    def timed_partition(*args, **kwargs):  # prepare_data imports it late, from fedsub.data
        tic = time.perf_counter()
        parts = partition(*args, **kwargs)
        timing["partition"] = time.perf_counter() - tic
        return parts

    fedsub.data.partition = timed_partition
    with tempfile.TemporaryDirectory() as tmp:
        tic = time.perf_counter()
        data = prepare_data(cfg, Path(tmp))
        seconds_data = time.perf_counter() - tic
        sim = Simulation(cfg, cfg.methods[0], data, Path(tmp) / method)
        written, seen = [], {}

        def on_round(record: dict) -> None:  # after the round's checkpoint
            now = checkpoint_files(sim.checkpoint_dir)
            new = {n: b for n, b in now.items() if seen.get(n) != b}  # new or rewritten files
            seen.clear()
            seen.update(now)
            written.append({"bytes": sum(new.values()), "state_files": sum("client_states/" in n for n in new)})

        records = sim.run(on_round=on_round)
    return {
        "seconds_data": seconds_data,
        "seconds_partition": timing["partition"],
        "seconds_round_median": statistics.median(r["seconds_round"] for r in records),
        "seconds_round": [r["seconds_round"] for r in records],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in records),
        "peak_rss_mb_per_round": [r["peak_rss_mb"] for r in records],
        "checkpoint_bytes": [w["bytes"] for w in written],
        "checkpoint_state_files": [w["state_files"] for w in written],
        "clients_trained": [len(r["aggregated"]) for r in records],
        "distinct_clients": len({c for r in records for c in r["clients"]}),
        "final_accuracy": records[-1].get("accuracy"),
    }


def spawn_cell(args: argparse.Namespace, method: str, population: int) -> dict:
    overrides = [f"federation.num_clients={population}", f"federation.rounds={args.rounds}", *args.set]
    command = [sys.executable, __file__, "--cell", method, "--config", args.config]
    command += [x for o in overrides for x in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"cell {method} x {population} clients failed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/population.yaml")
    parser.add_argument("--methods", help="comma-separated method keys of the config (default: all)")
    parser.add_argument("--populations", default="10,200,2000")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--set", action="append", default=[], help="extra config override (repeatable)")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell, print its JSON
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(run_cell(args.config, args.set, args.cell)))
        return
    try:
        cfg = load_config(args.config, args.set)
        methods = [m.key for m in (select_methods(cfg, args.methods) if args.methods else cfg.methods)]
        populations = [int(p) for p in args.populations.split(",")]
    except (ConfigError, ValueError) as err:
        parser.error(str(err))
    partial = partial_path(args.out) if args.out else None
    cells = json.loads(partial.read_text())["cells"] if partial and partial.is_file() else {}
    fed = cfg.federation
    workload = {"config": args.config, "rounds": args.rounds, "overrides": args.set, "populations": populations,
                "clients_per_round": fed.clients_per_round, "local_steps": cfg.train.local_steps}  # fmt: skip
    machine = machine_info("cpu", "float32")
    for method in methods:
        for population in populations:
            key = f"{method}@{population}"
            if key in cells:
                continue
            cells[key] = {"method": method, "population": population, **spawn_cell(args, method, population)}
            c = cells[key]
            print(f"{key}: peak {c['peak_rss_mb']:.0f} MB, {c['seconds_round_median']:.2f} s/round, "
                  f"checkpoints {c['checkpoint_bytes'][1:4]} B", flush=True)  # fmt: skip
            if partial:
                atomic_write_text(partial, json.dumps({"workload": workload, "cells": cells}, indent=2) + "\n")
    emit({"benchmark": "population", "machine": machine, "workload": workload, "results": list(cells.values())},
         args.out)  # fmt: skip
    if partial:
        partial.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
