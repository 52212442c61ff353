"""Benchmark: final accuracy under 0, 1 and 2 poisoned clients of 8 (each sends its change x 1e6,
`failures.poisoned`) for every aggregation rule, and for the default relative-norm screen.

    .venv/bin/python benchmarks/bench_robust.py [--config configs/robust.yaml] [--out FILE]

Rows: `mean` without any screen (what Flower's FedAvg does), `mean + screen` (the default:
validation.max_norm_relative 10), and median, trimmed_mean (trim 0.25) and norm_clip (bound: the
round's median change norm), each without the screen so that the rule alone is measured. One seed;
the poisoned clients are 3 and then 3 and 6.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from common import emit, machine_info

from fedsub.app.run import run_experiment
from fedsub.config import load_config

OFF = "validation.max_norm_relative=null"
RULES = {
    "mean": [OFF],
    "mean + screen (default)": [],
    "median": [OFF, "aggregation.rule=median"],
    "trimmed_mean": [OFF, "aggregation.rule=trimmed_mean", "aggregation.trim=0.25"],
    "norm_clip": [OFF, "aggregation.rule=norm_clip"],
}
ATTACKS = {0: "failures.poisoned=[]", 1: "failures.poisoned=[3]", 2: "failures.poisoned=[3, 6]"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/robust.yaml")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rule, overrides in RULES.items():
            rows[rule] = {}
            for poisoned, attack in ATTACKS.items():
                out = Path(tmp) / f"{len(rows)}-{poisoned}"
                summary = run_experiment(load_config(args.config, [*overrides, attack]), out, quiet=True)[0]
                last = json.loads((out / "fedit" / "metrics.jsonl").read_text().splitlines()[-1])
                rows[rule][poisoned] = {"final_accuracy": summary["final_accuracy"], "rejected": len(last["rejected"])}
                print(rule, poisoned, rows[rule][poisoned], flush=True)
    emit({"benchmark": "robust_aggregation", "machine": machine_info("cpu", "float32"), "config": args.config,
          "rows": rows}, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
