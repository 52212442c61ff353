"""Benchmark: the simulator's overhead on the demo workload.

    .venv/bin/python benchmarks/bench_simulator.py [--rounds 3] [--methods fedit] [--device cpu|cuda] [--out FILE]

Overhead = round wall time / (summed client-training time + evaluation time), per round; the
median over rounds and methods is reported. Everything else in a round (sampling, building
payloads, counting bytes, aggregation, logging) is the simulator's own cost. Target: <= 1.05.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from common import emit

from fedsub.config import load_config
from fedsub.report import read_metrics
from fedsub.run import run_experiment


def overhead(record: dict) -> float:
    return record["seconds_round"] / (record["seconds_train"] + record["seconds_eval"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", default="fedit,ffa_lora,fedavg_full")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args()
    cfg = load_config(args.config, [f"federation.rounds={args.rounds}", f"methods={args.methods}", f"device={args.device}"])
    with tempfile.TemporaryDirectory() as tmp:
        run_experiment(cfg, Path(tmp) / "run", quiet=True)
        per_method = {m.name: [overhead(r) for r in read_metrics(Path(tmp) / "run" / m.name / "metrics.jsonl")] for m in cfg.methods}
    result = {
        "benchmark": "simulator_overhead",
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "workload": {"config": args.config, "rounds": args.rounds, "device": args.device},
        "overhead_per_round": per_method,
        "median_overhead": statistics.median(v for values in per_method.values() for v in values),
        "target": 1.05,
    }
    result["target_met"] = result["median_overhead"] <= result["target"]
    emit(result, args.out)


if __name__ == "__main__":
    main()
