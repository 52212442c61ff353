"""Results of many runs: a `fedsub compare` grid or any `fedsub run` directories (`fedsub report`).

A cell is one finished method (its summary.json exists) of one run directory, named by
(method key, alpha, seed) from the run's config.yaml. Written into the output folder:
results.csv (one row per cell, the summary's numbers at full precision), results.md (per method and
alpha: mean ± sample std over seeds) and the plots of `fedsub.grid_plots`. A grid of generation runs
(no accuracy) is reported by ROUGE-L and BLEU-4 instead of accuracy and macro-F1.
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedsub.core.io import atomic_write_text
from fedsub.errors import ConfigError

ALPHA_SCHEMES = ("dirichlet", "quantity")  # the partition schemes that read partition.alpha
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


def is_generation(cells: list["Cell"]) -> bool:
    """Every cell a generation run (ROUGE-L, no accuracy): the tables and plots use its metrics."""
    return bool(cells) and all(c.summary.get("final_rougeL") is not None for c in cells)


def spread_fields(cells: list["Cell"]) -> list[tuple[str, str]]:
    return GENERATION_SPREAD_FIELDS if is_generation(cells) else SPREAD_FIELDS


def header(cells: list["Cell"]) -> list[str]:
    return ["method", "alpha"] + [t for _, t in spread_fields(cells)] + [t for _, t, _ in MEAN_FIELDS] + ["seeds"]


@dataclass(frozen=True)
class Cell:
    method: str
    alpha: str  # partition.alpha as "%g"; "-" for schemes without one
    seed: int
    run_dir: Path
    summary: dict[str, Any]

    @property
    def method_dir(self) -> Path:
        return self.run_dir / self.method


def find_run_dirs(root: Path) -> list[Path]:
    """`root` and every folder below it holding a config.yaml (run directories), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such directory; pass a fedsub compare or run directory")
    runs = sorted(p.parent for p in root.rglob("config.yaml"))
    if not runs:
        raise ConfigError(f"{root}: no run directory (a folder with config.yaml) inside; pass a fedsub compare or run directory")
    return runs


def read_cells(run_dir: Path) -> list[Cell]:
    """The finished methods of one run directory, in the order of its config."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    partition = cfg.get("partition") or {}
    alpha = f"{float(partition.get('alpha', 0.5)):g}" if partition.get("scheme", "dirichlet") in ALPHA_SCHEMES else "-"
    keys = [m.get("label") or m["name"] for m in cfg.get("methods") or []]
    finished = [k for k in keys if (run_dir / k / "summary.json").is_file()]
    return [Cell(k, alpha, int(cfg.get("seed", 0)), run_dir, json.loads((run_dir / k / "summary.json").read_text())) for k in finished]


def collect_cells(dirs: list[Path]) -> list[Cell]:
    """Every finished cell below `dirs`, sorted by method (first seen), alpha, seed; no duplicates."""
    cells, seen = [], {}
    for root in dirs:
        for run_dir in find_run_dirs(root):
            for cell in read_cells(run_dir):
                key = (cell.method, cell.alpha, cell.seed)
                if key in seen:
                    raise ConfigError(f"method {cell.method}, alpha {cell.alpha}, seed {cell.seed} is in both {seen[key]} and {run_dir}; report them separately")
                seen[key] = run_dir
                cells.append(cell)
    if not cells:
        raise ConfigError(f"no finished method (<method>/summary.json) in {', '.join(map(str, dirs))}")
    order = {m: i for i, m in enumerate(dict.fromkeys(c.method for c in cells))}
    return sorted(cells, key=lambda c: (order[c.method], alpha_order(c.alpha), c.seed))


def alpha_order(alpha: str) -> float:
    return -1.0 if alpha == "-" else float(alpha)


def groups(cells: list[Cell]) -> dict[tuple[str, str], list[Cell]]:
    """Cells by (method, alpha), in the cells' order."""
    out: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        out.setdefault((cell.method, cell.alpha), []).append(cell)
    return out


# ---------------------------------------------------------------- tables


def results_csv(cells: list[Cell], out: Path) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "alpha", "seed", *SUMMARY_FIELDS, "run_dir"])
    for c in cells:
        values = ["" if c.summary.get(f) is None else repr(c.summary[f]) for f in SUMMARY_FIELDS]
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
    from fedsub.grid_plots import write_plots

    cells = collect_cells([Path(d) for d in dirs])
    out = Path(out)
    atomic_write_text(out / "results.csv", results_csv(cells, out))
    atomic_write_text(out / "results.md", results_markdown(cells))
    write_plots(cells, out)
    return cells


def print_results(console, cells: list[Cell]) -> None:
    from rich.table import Table

    table = Table(title="results (mean ± std over seeds)")
    for title in header(cells):
        table.add_column(title, justify="left" if title in ("method", "alpha") else "right")
    for row in summary_rows(cells):
        table.add_row(*row)
    console.print(table)
