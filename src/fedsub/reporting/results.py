"""Results of many runs: a `fedsub compare` grid or any `fedsub run` directories (`fedsub report`).

Made of cells (see cells.py: one finished method of one run directory). Written into the output folder:
results.csv (one row per cell, the summary's numbers at full precision), results.md (per method and
alpha: mean ± sample std over seeds) and the plots of `fedsub.reporting.grid_plots`. A grid of generation runs
(no accuracy) is reported by ROUGE-L and BLEU-4 instead of accuracy and macro-F1.
"""

from __future__ import annotations

import csv
import io
import os
import statistics
from pathlib import Path

from rich.table import Table

from fedsub.core.io import atomic_write_text
from fedsub.reporting.cells import Cell, collect_cells, groups, is_generation
from fedsub.reporting.grid_plots import write_plots

SUMMARY_FIELDS = [
    "rounds", "final_accuracy", "best_accuracy", "final_macro_f1", "best_macro_f1", "final_test_loss",
    "bytes_up_per_round", "bytes_down_per_round", "seconds_per_round", "peak_rss_mb",
    "final_rougeL", "best_rougeL", "final_bleu4", "best_bleu4", "final_perplexity",
]  # fmt: skip
SPREAD_FIELDS = [  # (summary key, column title): mean ± std over seeds
    ("final_accuracy", "final acc"), ("best_accuracy", "best acc"),
    ("final_macro_f1", "final macro-F1"), ("best_macro_f1", "best macro-F1"),
]  # fmt: skip
GENERATION_SPREAD_FIELDS = [
    ("final_rougeL", "final ROUGE-L"), ("best_rougeL", "best ROUGE-L"),
    ("final_bleu4", "final BLEU-4"), ("best_bleu4", "best BLEU-4"),
]  # fmt: skip
MEAN_FIELDS = [  # (summary key, column title, scale): mean over seeds
    ("bytes_up_per_round", "MB up/round", 1e-6), ("bytes_down_per_round", "MB down/round", 1e-6),
    ("seconds_per_round", "s/round", 1.0), ("peak_rss_mb", "peak MB", 1.0),
]  # fmt: skip


FEDERATED_SPREAD_FIELDS = [  # when federated evaluation ran (federated_eval): the clients' own data
    ("final_fed_accuracy", "fed acc"), ("final_fed_accuracy_worst", "worst client"),
]  # fmt: skip


def federated(cells: list[Cell]) -> bool:
    return any(c.summary.get("final_fed_accuracy") is not None for c in cells)


def spread_fields(cells: list[Cell]) -> list[tuple[str, str]]:
    if is_generation(cells):
        return GENERATION_SPREAD_FIELDS
    return SPREAD_FIELDS + (FEDERATED_SPREAD_FIELDS if federated(cells) else [])


def summary_fields(cells: list[Cell]) -> list[str]:
    return SUMMARY_FIELDS + ([key for key, _ in FEDERATED_SPREAD_FIELDS] if federated(cells) else [])


def header(cells: list[Cell]) -> list[str]:
    return ["method", "alpha"] + [t for _, t in spread_fields(cells)] + [t for _, t, _ in MEAN_FIELDS] + ["seeds"]


# ---------------------------------------------------------------- tables


def results_csv(cells: list[Cell], out: Path) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    fields = summary_fields(cells)
    writer.writerow(["method", "alpha", "seed", *fields, "run_dir"])
    for c in cells:
        values = ["" if c.summary.get(f) is None else repr(c.summary[f]) for f in fields]
        writer.writerow([c.method, c.alpha, c.seed, *values, Path(os.path.relpath(c.run_dir, out)).as_posix()])
    return buffer.getvalue()


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1; None for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summary_rows(cells: list[Cell]) -> list[list[str]]:
    rows = []
    for (method, alpha), group in groups(cells).items():
        row = [method, alpha]
        for key, _ in spread_fields(cells):
            values = [c.summary[key] for c in group if c.summary.get(key) is not None]
            mean, std = mean_std(values) if values else (None, None)
            row.append("-" if mean is None else f"{mean:.4f}" + ("" if std is None else f" ± {std:.4f}"))
        for key, _, scale in MEAN_FIELDS:
            values = [c.summary[key] * scale for c in group if c.summary.get(key) is not None]
            row.append(f"{statistics.fmean(values):.2f}" if values else "-")
        row.append(str(len(group)))
        rows.append(row)
    return rows


def results_markdown(cells: list[Cell]) -> str:
    metrics = "ROUGE-L and BLEU-4" if is_generation(cells) else "accuracy and macro-F1"
    columns = header(cells)
    lines = [
        "# Results",
        "",
        f"Per method and partition alpha: {metrics} as mean ± sample std (ddof 1) over the seeds;",
        "MB (10^6 bytes) per round over all clients of a round, s/round (each run's median round) and peak",
        "resident MB (each method's own peak) as means over the seeds. One row per cell: results.csv.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(cells)]
    return "\n".join(lines) + "\n"


def write_results(dirs: list[Path], out: Path) -> list[Cell]:
    """Write results.csv, results.md and the plots into `out` from every finished cell below `dirs`."""
    cells = collect_cells([Path(d) for d in dirs])
    out = Path(out)
    atomic_write_text(out / "results.csv", results_csv(cells, out))
    atomic_write_text(out / "results.md", results_markdown(cells))
    write_plots(cells, out)
    return cells


def print_results(console, cells: list[Cell]) -> None:
    table = Table(title="results (mean ± std over seeds)")
    for title in header(cells):
        table.add_column(title, justify="left" if title in ("method", "alpha") else "right")
    for row in summary_rows(cells):
        table.add_row(*row)
    console.print(table)
