"""Accuracy against epsilon from bench_dp.py's JSON (either mode): one line per method, the no-DP
accuracy dashed; the same numbers printed as RESULTS.md's markdown table.

(from benchmarks/) ../.venv/bin/python plot_dp.py results/dp-demo-cpu.json results/dp-demo-accuracy-epsilon.png
"""

from __future__ import annotations

import json
import sys

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(source: str, target: str) -> None:
    report = json.load(open(source))
    table, mechanism = report["table"], "DP-SGD" if report.get("mode") == "local" else "DP-FedAvg"
    seeds = len(next(iter(table["no DP"].values()))["runs"])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for k, method in enumerate(sorted(table["no DP"])):
        private = [(cell[method]["epsilon"], cell[method]["mean_accuracy"]) for label, cell in table.items()
                   if label != "no DP"]  # fmt: skip
        eps, acc = zip(*sorted(private))
        ax.plot(eps, acc, "o-", color=f"C{k}", label=f"{method} ({mechanism})")
        ax.axhline(table["no DP"][method]["mean_accuracy"], color=f"C{k}", ls="--", label=f"{method}, no DP")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # the minor labels overlapped
    ax.set_xticks(eps, [f"{e:.3g}" for e in eps])
    ax.set_xlabel("epsilon (delta 1e-5)" + (", the worst client's" if mechanism == "DP-SGD" else ""))
    ax.set_ylabel(f"final test accuracy, mean of {seeds} seed{'s' * (seeds > 1)}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(target, dpi=120)
    print("\n".join(markdown_table(table)))


def markdown_table(table: dict) -> list[str]:
    """| noise | epsilon | <method> (mean; per seed) | ... |, the no-DP row first."""
    methods = sorted(table["no DP"])
    rows = [f"| noise multiplier z | epsilon | {' | '.join(f'{m} (mean; per seed)' for m in methods)} |",
            "|" + "---|" * (2 + len(methods))]  # fmt: skip
    for label, cell in table.items():
        eps = "-" if label == "no DP" else f"{cell[methods[0]]['epsilon']:.3g}"
        accs = []
        for m in methods:
            seeds = ", ".join(f"{r['accuracy']:.2f}" for r in cell[m]["runs"])
            accs.append(f"{cell[m]['mean_accuracy']:.3f} ({seeds})")
        rows.append(f"| {label.removeprefix('z=') if label != 'no DP' else 'no DP'} | {eps} | {' | '.join(accs)} |")
    return rows


if __name__ == "__main__":
    main(*sys.argv[1:3])
