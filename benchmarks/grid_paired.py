"""Per-seed final accuracy of a compare grid and the paired difference to a reference method.

    .venv/bin/python benchmarks/grid_paired.py benchmarks/results/fedgalore-grid/results.csv [--ref fedgalore]

Seeds fix the partition, so methods of one seed see the same clients: the paired difference (method
minus reference, per seed) is the fairer comparison than two means with their own spreads. Reads the
results.csv that `fedsub compare` / `fedsub report` write; prints a markdown table per alpha.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
from collections import defaultdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--ref", default="fedgalore")
    args = parser.parse_args()
    if not os.path.isfile(args.csv):
        parser.error(f"{args.csv}: no such file; pass the results.csv that fedsub compare / fedsub report wrote")
    acc: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    with open(args.csv) as handle:
        for row in csv.DictReader(handle):
            if row.get("final_accuracy"):  # generation runs have none
                acc[row["alpha"]][row["method"]][int(row["seed"])] = float(row["final_accuracy"])
    methods_seen = {m for per_alpha in acc.values() for m in per_alpha}
    if args.ref not in methods_seen:
        parser.error(
            f"--ref {args.ref}: no such method with a final_accuracy in {args.csv}; it has "
            f"{', '.join(sorted(methods_seen)) or 'none'}"
        )
    for alpha, methods in sorted(acc.items()):
        seeds = sorted({s for per_seed in methods.values() for s in per_seed})
        print(f"\nalpha {alpha}\n")
        print(
            "| method | "
            + " | ".join(f"seed {s}" for s in seeds)
            + f" | mean | {args.ref} minus method, per seed | mean difference |"
        )
        print("|---|" + "---|" * (len(seeds) + 3))
        ref = methods.get(args.ref, {})
        for method, per_seed in methods.items():
            cells = [f"{per_seed[s]:.4f}" if s in per_seed else "-" for s in seeds]
            diffs = [ref[s] - per_seed[s] for s in seeds if s in per_seed and s in ref]
            shown = ", ".join(f"{d:+.4f}" for d in diffs) if method != args.ref else ""
            mean_diff = f"{statistics.mean(diffs):+.4f}" if diffs and method != args.ref else ""
            print(
                f"| {method} | "
                + " | ".join(cells)
                + f" | {statistics.mean(per_seed.values()):.4f} | {shown} | {mean_diff} |"
            )


if __name__ == "__main__":
    main()
