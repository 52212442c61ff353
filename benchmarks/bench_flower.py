"""Benchmark: per-round cost of Flower (in-process grid, stock and warm loopback deployments) against the simulator.

    .venv/bin/python benchmarks/bench_flower.py [--config configs/flower_loopback.yaml] [--rounds 4] [--out FILE]

The demo's workload (MiniLM, WordNet supersenses, fedit) cut to 2 clients so that a loopback
deployment (a SuperLink and 2 SuperNodes on 127.0.0.1, insecure) fits on the 2-core machine. Modes:
the simulator, Flower's message path in one process (flower-grid), a stock deployment
(`flower-supernode`: a fresh ClientApp process per message) and a warm one (`fedsub flower node`:
one worker process per node), whose nodes serve two runs of the same config in a row, and the warm
one with secure aggregation (privacy.secagg: Flower's SecAgg+, four exchanges a round instead of one).

Per mode, medians over the rounds: seconds_round as the server measures it, the slowest client's
training (`seconds_train_max`; the nodes train in parallel, the simulator's clients one after the
other), and the overhead = seconds_round - evaluation - aggregation - slowest client's training:
what the engine adds to the round's critical path (for the simulator, the other client's training).
The warm mode also reports its second run and how often each node built its model (its log).
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
from pathlib import Path

from common import emit, machine_info

from fedsub.app.run import run_experiment
from fedsub.config import load_config
from fedsub.reporting.report import read_metrics

MODES = ("simulation", "flower-grid", "flower-deployment", "flower-deployment-warm", "flower-deployment-warm-secagg")


def overrides_for(mode: str, rounds: int, address: str | None) -> list[str]:
    common = [f"federation.rounds={rounds}"]
    if mode == "simulation":
        return common + ["engine=simulation"]
    if mode == "flower-grid":
        return common + ["engine=flower", "flower.superlink=null"]
    secure = ["privacy.secagg.mode=secaggplus"] if mode.endswith("secagg") else []
    return [
        *common,
        *secure,
        "engine=flower",
        f"flower.superlink={address}",
        "flower.insecure=true",
        "flower.root_certificates=null",
        "flower.round_timeout=900",
    ]


def run_mode(config: str, mode: str, rounds: int, tmp: Path) -> dict:
    from fedsub.engines.flower.loopback import Loopback

    if not mode.startswith("flower-deployment"):
        run_experiment(load_config(config, overrides_for(mode, rounds, None)), tmp / mode, quiet=True)
        return summarize_mode(read_metrics(tmp / mode / "fedit" / "metrics.jsonl"))
    warm, twice = "warm" in mode, mode.endswith("warm")  # the warm nodes serve a second run (not for secagg)
    with Loopback(tmp / f"{mode}-loopback", nodes=2, warm=warm) as link:
        runs = []
        for k in range(2 if twice else 1):
            out = tmp / f"{mode}-{k}"
            run_experiment(load_config(config, overrides_for(mode, rounds, link.address)), out, quiet=True)
            runs.append(summarize_mode(read_metrics(out / "fedit" / "metrics.jsonl")))
        logs = [(link.workdir / f"supernode{k}.log").read_text() for k in range(2)]
    result = runs[0]
    if twice:
        result["second_run"] = runs[1]
        result["model_builds_per_node_over_both_runs"] = [len(re.findall("built the runtime of", log)) for log in logs]
    return result


def summarize_mode(records: list[dict]) -> dict:
    overhead = [
        r["seconds_round"] - r["seconds_eval"] - r["seconds_aggregate"] - r["seconds_train_max"] for r in records
    ]
    return {
        "seconds_round": [r["seconds_round"] for r in records],
        "median_seconds_round": statistics.median(r["seconds_round"] for r in records),
        "median_seconds_train_max": statistics.median(r["seconds_train_max"] for r in records),
        "median_seconds_train_summed": statistics.median(r["seconds_train"] for r in records),
        "median_seconds_eval": statistics.median(r["seconds_eval"] for r in records),
        "overhead_seconds": overhead,
        "median_overhead_seconds": statistics.median(overhead),
        "accuracy": [r["accuracy"] for r in records],
        "median_bytes_up": statistics.median(r["bytes_up"] for r in records),
        "median_bytes_down": statistics.median(r["bytes_down"] for r in records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/flower_loopback.yaml")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args()
    result = {
        "benchmark": "flower_overhead",
        "machine": machine_info("cpu", "float32"),
        "workload": {"config": args.config, "rounds": args.rounds},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            result[mode] = run_mode(args.config, mode, args.rounds, Path(tmp))
    sim = result.get("simulation", {}).get("median_seconds_round")
    for mode in MODES[1:]:
        if sim and mode in result:
            result[mode]["extra_seconds_per_round_vs_simulation"] = result[mode]["median_seconds_round"] - sim
    emit(result, args.out)


if __name__ == "__main__":
    main()
