"""Update-space diagnostics per method, from finished runs: does the aggregate stay low-rank?

Reads <run dir>/<method>/metrics.jsonl for each run directory given (seeds or partitions of one
experiment pool their rounds per method) and prints a markdown table of the mean over rounds of
diag_rank_mean, diag_rank_max, diag_cancellation_ratio and diag_cos_pairwise (fedsub/diagnostics).
A rank is per round for fedgalore / fedftg / fedavg_full / flora and since W0 for the other LoRA
methods (their ΔW_k is the whole adapter). "–": the method logged no such metric.

    python benchmarks/diag_rank.py benchmarks/results/fedgalore-grid/alpha-0.5/seed-0 [more run dirs]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import mean

from fedsub.reporting.report import read_metrics

COLUMNS = ("diag_rank_mean", "diag_rank_max", "diag_cancellation_ratio", "diag_cos_pairwise")
HEADER = ["method", "runs", "rounds", "rank mean", "rank max", "cancellation ratio", "pairwise cosine"]


def method_records(run_dirs: list[Path]) -> dict[str, list[list[dict]]]:
    """method folder name -> one record list per run that has it (sorted by method)."""
    found: dict[str, list[list[dict]]] = {}
    for run in run_dirs:
        if not run.is_dir():
            raise ValueError(f"{run}: not a directory")
        files = sorted(run.glob("*/metrics.jsonl"))
        if not files:
            raise ValueError(f"{run}: no <method>/metrics.jsonl in it (is it a run directory?)")
        for path in files:
            found.setdefault(path.parent.name, []).append(read_metrics(path))
    return dict(sorted(found.items()))


def summary_row(method: str, runs: list[list[dict]]) -> list[str]:
    records = [r for run in runs for r in run]
    cells = []
    for key in COLUMNS:
        values = [float(r[key]) for r in records if r.get(key) is not None]
        cells.append(f"{mean(values):.3f}" if values else "–")
    return [method, str(len(runs)), str(len(records)), *cells]


def table(found: dict[str, list[list[dict]]]) -> str:
    rows = [summary_row(method, runs) for method, runs in found.items()]
    if all(cell == "–" for row in rows for cell in row[3:]):
        raise ValueError(
            "no diag_* metrics in these runs (they ran with diagnostics: false, or before fedsub logged them)"
        )
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.error = lambda message: sys.exit(f"error: {message}")  # one line, not usage + message
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories (each holding <method>/metrics.jsonl)")
    args = parser.parse_args(argv)
    try:
        print(table(method_records(args.run_dirs)))
    except (ValueError, OSError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
