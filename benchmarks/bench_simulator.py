"""Benchmark: the simulator's overhead on the demo workload.

    .venv/bin/python benchmarks/bench_simulator.py [--rounds 3] [--methods fedit] [--device cpu|cuda]
        [--dtype float32|bfloat16] [--out FILE]

Overhead = round wall time / (summed client-training time + evaluation time), per round; the
median over rounds and methods is reported. Everything else in a round (sampling, building
payloads, counting bytes, aggregation, logging) is the simulator's own cost. Target: <= 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import add_device_args, check_device, emit, machine_info

from fedsub.app.run import run_experiment
from fedsub.config import load_config
from fedsub.reporting.report import read_metrics


def overhead(record: dict) -> float:
    return record["seconds_round"] / (record["seconds_train"] + record["seconds_eval"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", default="fedit,ffa_lora,fedavg_full")
    add_device_args(parser)
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args()
    check_device(args.device)
    overrides = [
        f"federation.rounds={args.rounds}",
        f"methods={args.methods}",
        f"device={args.device}",
        f"dtype={args.dtype}",
    ]
    cfg = load_config(args.config, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        run_experiment(cfg, Path(tmp) / "run", quiet=True)
        per_method = {
            m.key: [overhead(r) for r in read_metrics(Path(tmp) / "run" / m.key / "metrics.jsonl")] for m in cfg.methods
        }
    result = {
        "benchmark": "simulator_overhead",
        "machine": machine_info(args.device, args.dtype),
        "workload": {"config": args.config, "rounds": args.rounds, "device": args.device, "dtype": args.dtype},
        "overhead_per_round": per_method,
        "median_overhead": statistics.median(v for values in per_method.values() for v in values),
        "target": 1.05,
    }
    result["target_met"] = result["median_overhead"] <= result["target"]
    emit(result, args.out)


if __name__ == "__main__":
    main()
