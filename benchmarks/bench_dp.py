"""Benchmark: final accuracy against epsilon under differential privacy, 3 noise multipliers x the
config's methods x 3 seeds, plus the same runs without DP (the reference).

    (from benchmarks/) ../.venv/bin/python bench_dp.py [--config ../configs/dp_demo.yaml] [--mode central|local]
        [--set KEY=VALUE]... [--out FILE]

`--mode central` is client-level DP-FedAvg (privacy.dp central: the clip and noise are the config's),
`local` is DP-SGD on every client (epsilon: the worst client's). Resumable: with --out, every
finished (noise, seed) cell is kept in partial-<out> (text, committed as it grows) and skipped on a
rerun; the final JSON is written when all cells are in (or, with --finished-only, from the cells
finished so far; its "cells" field says how many).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import emit, machine_info, partial_path

from fedsub.app.run import run_experiment
from fedsub.config import load_config
from fedsub.core.io import atomic_write_text

NOISE = {"no DP": None, "z=0.3": 0.3, "z=1": 1.0, "z=3": 3.0}
SEEDS = (0, 1, 2)


def run_cell(config: str, overrides: list[str], mode: str, z: float | None, seed: int, tmp: Path) -> list[dict]:
    dp = ["privacy.dp.mode=off"] if z is None else [f"privacy.dp.mode={mode}", f"privacy.dp.noise_multiplier={z}"]
    out = tmp / f"{z}-{seed}"
    summaries = run_experiment(load_config(config, [*overrides, *dp, f"seed={seed}"]), out, quiet=True)
    return [
        {"method": s["method"], "seed": seed, "accuracy": s["final_accuracy"], "epsilon": s.get("final_dp_epsilon")}
        for s in summaries
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="../configs/dp_demo.yaml")
    parser.add_argument("--mode", choices=("central", "local"), default="central")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--finished-only",
        action="store_true",
        help="run nothing: write --out from the cells partial-<out> holds (marked incomplete)",
    )
    args = parser.parse_args()
    partial = partial_path(args.out) if args.out else None
    cells = json.loads(partial.read_text()) if partial and partial.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        # seed-major: a cut-short run has every noise level for its first seeds
        for seed in () if args.finished_only else SEEDS:
            for label, z in NOISE.items():
                key = f"{label}|{seed}"
                if key in cells:
                    continue
                cells[key] = run_cell(args.config, args.overrides, args.mode, z, seed, Path(tmp))
                print(key, cells[key], flush=True)
                if partial:
                    atomic_write_text(partial, json.dumps(cells, indent=1) + "\n")
    runs: dict[str, dict[str, list]] = {}
    for key, results in cells.items():
        for r in results:
            runs.setdefault(key.split("|")[0], {}).setdefault(r["method"], []).append(r)
    table = {
        label: {m: {"mean_accuracy": statistics.fmean(c["accuracy"] for c in rs),
                    "epsilon": max((c["epsilon"] or 0.0) for c in rs) if label != "no DP" else None,
                    "runs": rs} for m, rs in methods.items()}
        for label, methods in runs.items()
    }  # fmt: skip
    done = f"{len(cells)} of {len(SEEDS) * len(NOISE)} (noise, seed) cells"
    emit({"benchmark": "dp_accuracy_epsilon", "machine": machine_info("cpu", "float32"), "config": args.config,
          "mode": args.mode, "overrides": args.overrides, "cells": done, "table": table}, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
