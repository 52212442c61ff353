"""Benchmark: per-round cost of Flower (in-process grid and a loopback deployment) against the simulator.

    .venv/bin/python benchmarks/bench_flower.py [--config configs/flower_loopback.yaml] [--rounds 3] [--out FILE]

The demo's workload (MiniLM, WordNet supersenses, fedit) cut to 2 clients so that a loopback
deployment (a SuperLink and 2 SuperNodes on 127.0.0.1, insecure) fits on the 2-core machine. Per
engine: the median round wall time as the server measures it (`seconds_round`), the clients' summed
training time (`seconds_train`, as each client reports it) and the exchange time (seconds_round minus
evaluation and aggregation: first payload out to last reply in). Flower's extra cost per round is its
median seconds_round minus the simulator's. The deployment's ClientApps start a fresh process for
every message (flwr 1.41), which is the bulk of that extra cost.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import emit, machine_info

from fedsub.app.run import run_experiment
from fedsub.config import load_config
from fedsub.reporting.report import read_metrics

MODES = ("simulation", "flower-grid", "flower-deployment")


def overrides_for(mode: str, rounds: int, address: str | None) -> list[str]:
    common = [f"federation.rounds={rounds}"]
    if mode == "simulation":
        return common + ["engine=simulation"]
    if mode == "flower-grid":
        return common + ["engine=flower", "flower.superlink=null"]
    return common + ["engine=flower", f"flower.superlink={address}", "flower.insecure=true", "flower.round_timeout=900"]


def run_mode(config: str, mode: str, rounds: int, tmp: Path) -> list[dict]:
    from fedsub.engines.flower.loopback import Loopback

    out = tmp / mode
    if mode != "flower-deployment":
        run_experiment(load_config(config, overrides_for(mode, rounds, None)), out, quiet=True)
    else:
        with Loopback(tmp / "loopback", nodes=2) as link:
            run_experiment(load_config(config, overrides_for(mode, rounds, link.address)), out, quiet=True)
    return read_metrics(out / "fedit" / "metrics.jsonl")


def summarize_mode(records: list[dict]) -> dict:
    exchange = [r["seconds_round"] - r["seconds_eval"] - r["seconds_aggregate"] for r in records]
    return {
        "seconds_round": [r["seconds_round"] for r in records],
        "median_seconds_round": statistics.median(r["seconds_round"] for r in records),
        "median_seconds_train_summed": statistics.median(r["seconds_train"] for r in records),
        "median_seconds_exchange": statistics.median(exchange),  # first payload out -> last reply in
        "accuracy": [r["accuracy"] for r in records],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/flower_loopback.yaml")
    parser.add_argument("--rounds", type=int, default=3)
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
            result[mode] = summarize_mode(run_mode(args.config, mode, args.rounds, Path(tmp)))
    sim = result.get("simulation", {}).get("median_seconds_round")
    for mode in MODES[1:]:
        if sim and mode in result:
            result[mode]["extra_seconds_per_round_vs_simulation"] = result[mode]["median_seconds_round"] - sim
    emit(result, args.out)


if __name__ == "__main__":
    main()
