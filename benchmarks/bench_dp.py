"""Benchmark: final accuracy against epsilon under client-level DP-FedAvg, 3 noise multipliers x the
config's methods x 3 seeds, plus the same runs without DP (the reference).

    .venv/bin/python benchmarks/bench_dp.py [--config configs/dp.yaml] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import emit, machine_info

from fedsub.app.run import run_experiment
from fedsub.config import load_config

NOISE = {"no DP": None, "z=0.3": 0.3, "z=1": 1.0, "z=3": 3.0}
SEEDS = (0, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/dp.yaml")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cells: dict[str, dict[str, list]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, z in NOISE.items():
            for seed in SEEDS:
                dp = ["privacy.dp.mode=off"] if z is None else [f"privacy.dp.noise_multiplier={z}"]
                out = Path(tmp) / f"{label}-{seed}"
                for s in run_experiment(load_config(args.config, [*dp, f"seed={seed}"]), out, quiet=True):
                    cell = cells.setdefault(label, {}).setdefault(s["method"], [])
                    cell.append({"seed": seed, "accuracy": s["final_accuracy"], "epsilon": s.get("final_dp_epsilon")})
                    print(label, seed, s["method"], cell[-1], flush=True)
    table = {
        label: {m: {"mean_accuracy": statistics.fmean(c["accuracy"] for c in runs), "epsilon": runs[0]["epsilon"],
                    "runs": runs} for m, runs in methods.items()}
        for label, methods in cells.items()
    }  # fmt: skip
    emit({"benchmark": "dp_accuracy_epsilon", "machine": machine_info("cpu", "float32"), "config": args.config,
          "table": table}, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
