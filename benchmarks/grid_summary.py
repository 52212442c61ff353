"""Summarise compare grids into one JSON that results_md.py renders into RESULTS.md.

    python benchmarks/grid_summary.py benchmarks/results/grid-a benchmarks/results/grid-b \
        --name fedgalore-i15 --ref fedgalore --note "code 1234abc, OMP_NUM_THREADS=1, two cells at a time"

Reads each grid's cells (alpha-A/seed-S/<method>/metrics.jsonl, as `fedsub compare` and
benchmarks/run_cells.sh leave them; several grids pool their cells, a cell found twice must agree) and
writes results/grid-NAME.json: per cell the final and best accuracy, bytes per round, and the mean over
rounds of the update-space diagnostics (diag_rank_mean, diag_cancellation_ratio, diag_cos_pairwise)
and of fedgalore's sync metrics (ajive_joint_rank_mean, v_hat_rel_diff_mean) where logged. Only
finished cells (a summary.json beside metrics.jsonl) count. results_md.py then prints, per alpha, the
per-seed accuracy, the paired difference to --ref and the means; a partial grid says how many cells.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

from common import emit, machine_info

from fedsub.reporting.report import read_metrics

CELL = re.compile(r"alpha-(?P<alpha>[^/]+)/seed-(?P<seed>-?\d+)$")
ROUND_MEANS = (
    "diag_rank_mean",
    "diag_cancellation_ratio",
    "diag_cos_pairwise",
    "ajive_joint_rank_mean",
    "v_hat_rel_diff_mean",
)


def cell_summary(method_dir: Path) -> dict:
    records = read_metrics(method_dir / "metrics.jsonl")
    accuracy = [r["accuracy"] for r in records if r.get("accuracy") is not None]
    if not accuracy:
        raise ValueError(
            f"{method_dir}: no accuracy in metrics.jsonl (a generation grid? this script reads classification)"
        )
    out = {
        "rounds": len(records), "final_accuracy": accuracy[-1], "best_accuracy": max(accuracy),
        "mb_up_per_round": statistics.mean(r["bytes_up"] for r in records) / 1e6,
        "mb_down_per_round": statistics.mean(r["bytes_down"] for r in records) / 1e6,
    }  # fmt: skip
    for key in ROUND_MEANS:
        values = [float(r[key]) for r in records if r.get(key) is not None]
        if values:
            out[key] = statistics.mean(values)
    return out


def collect(grids: list[Path]) -> list[dict]:
    cells: dict[tuple, dict] = {}
    for grid in grids:
        if not grid.is_dir():
            raise ValueError(f"{grid}: not a directory (a fedsub compare --out folder)")
        for summary in sorted(grid.glob("alpha-*/seed-*/*/summary.json")):
            match = CELL.search(str(summary.parent.parent.relative_to(grid)))
            if not match:
                continue
            key = (summary.parent.name, float(match["alpha"]), int(match["seed"]))
            cell = {"method": key[0], "alpha": key[1], "seed": key[2], **cell_summary(summary.parent)}
            if key in cells and cells[key]["final_accuracy"] != cell["final_accuracy"]:
                raise ValueError(
                    f"{key}: two grids disagree ({cells[key]['final_accuracy']} vs {cell['final_accuracy']})"
                )
            cells[key] = cell
    if not cells:
        raise ValueError("no finished cells (alpha-A/seed-S/<method>/summary.json) in " + ", ".join(map(str, grids)))
    return [cells[k] for k in sorted(cells, key=lambda k: (k[1], k[2], k[0]))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.error = lambda message: sys.exit(f"error: {message}")
    parser.add_argument("grids", nargs="+", type=Path)
    parser.add_argument("--name", required=True, help="results/grid-NAME.json")
    parser.add_argument("--ref", default="fedgalore", help="the method the paired differences are taken against")
    parser.add_argument(
        "--methods", help="comma-separated: the methods and row order to report (default: all, as found)"
    )
    parser.add_argument(
        "--seeds",
        help="comma-separated: the seeds the grid is planned for (default: the seeds found); "
        "seeds not run yet show as `–` and count as missing cells",
    )
    parser.add_argument(
        "--alphas", help="comma-separated: the alphas the grid is planned for (default: the alphas found)"
    )
    parser.add_argument("--note", default="", help="how the cells ran (code commit, threads, parallel cells)")
    args = parser.parse_args(argv)
    try:
        cells = collect(args.grids)
    except (ValueError, OSError) as error:
        sys.exit(f"error: {error}")
    order = args.methods.split(",") if args.methods else list(dict.fromkeys(c["method"] for c in cells))
    cells = [c for c in cells if c["method"] in order]
    if args.ref not in {c["method"] for c in cells}:
        sys.exit(f"error: --ref {args.ref}: no finished cell of that method")
    machine = machine_info("cpu", "float32")
    machine.pop("threads"), machine.pop("load_avg_1m_start")  # the cells ran earlier, under their own settings
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else sorted({c["seed"] for c in cells})
    alphas = [float(x) for x in args.alphas.split(",")] if args.alphas else sorted({c["alpha"] for c in cells})
    report = {"machine": machine, "grids": [str(g) for g in args.grids], "ref": args.ref, "methods": order,
              "seeds": seeds, "alphas": alphas, "note": args.note, "cells": cells}  # fmt: skip
    emit(report, Path(__file__).parent / "results" / f"grid-{args.name}.json")


if __name__ == "__main__":
    main()
