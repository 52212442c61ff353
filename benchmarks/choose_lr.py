"""Choose each method's learning rate from a validation sweep: the lr with the best final-round accuracy.

    .venv/bin/python benchmarks/choose_lr.py benchmarks/results/lr-sweep-a/results.csv \
        benchmarks/results/lr-sweep-b/results.csv

The sweep's methods are labelled `<method>_lr<value>` (configs/fedgalore_lr_sweep.yaml), and it runs on
`data.eval_split: val`, so `final_accuracy` there is validation accuracy: the test split is never looked at.
Ties go to the higher best-round accuracy, then to the smaller lr (the safer step). Prints a markdown
table per alpha and seed: every lr's final (best) validation accuracy and the chosen one in bold.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
from collections import defaultdict

LABEL = re.compile(r"^(?P<method>.+)_lr(?P<lr>[0-9.]+(?:e-?[0-9]+)?)$")


def read_sweep(paths: list[str]) -> dict[tuple[str, str], dict[str, dict[float, tuple[float, float]]]]:
    """(alpha, seed) -> method -> lr -> (final accuracy, best accuracy)."""
    sweep: dict = defaultdict(lambda: defaultdict(dict))
    for path in paths:
        with open(path) as handle:
            for row in csv.DictReader(handle):
                match = LABEL.match(row["method"])
                if match and row.get("final_accuracy"):
                    cell = sweep[(row["alpha"], row["seed"])][match["method"]]
                    cell[float(match["lr"])] = (float(row["final_accuracy"]), float(row["best_accuracy"]))
    return sweep


def choose(per_lr: dict[float, tuple[float, float]]) -> float:
    return max(per_lr, key=lambda lr: (per_lr[lr][0], per_lr[lr][1], -lr))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="+", help="results.csv of sweep grids (fedsub compare / fedsub report)")
    args = parser.parse_args()
    for path in args.csv:
        if not os.path.isfile(path):
            parser.error(f"{path}: no such file; pass the results.csv that fedsub compare / fedsub report wrote")
    sweep = read_sweep(args.csv)
    if not sweep:
        parser.error("no method labelled <method>_lr<value> with a final_accuracy in " + ", ".join(args.csv))
    for (alpha, seed), methods in sorted(sweep.items()):
        width = max(len(per_lr) for per_lr in methods.values())  # lrs of the method with the most
        print(f"\nalpha {alpha}, seed {seed}: final (best) validation accuracy per lr; chosen in bold\n")
        print("| method | " + " | ".join(["lr", "val acc"] * width) + " | chosen lr |")
        print("|---|" + "---|" * (2 * width + 1))
        for method, per_lr in methods.items():
            chosen = choose(per_lr)
            cells = []
            for lr in sorted(per_lr):
                text = f"{per_lr[lr][0]:.4f} ({per_lr[lr][1]:.4f})"
                cells += [f"{lr:g}", f"**{text}**" if lr == chosen else text]
            cells += [""] * (2 * width - len(cells))
            print(f"| {method} | " + " | ".join(cells) + f" | {chosen:g} |")


if __name__ == "__main__":
    main()
