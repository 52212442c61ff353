"""The cells of many runs: one finished method (its summary.json exists) of one run directory, named
by (method key, alpha, seed) from the run's config.yaml; what the tables (results.py) and the plots
(grid_plots.py) of `fedsub compare` and `fedsub report` are made of."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedsub.errors import ConfigError

ALPHA_SCHEMES = ("dirichlet", "quantity")  # the partition schemes that read partition.alpha


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
        raise ConfigError(
            f"{root}: no run directory (a folder with config.yaml) inside; pass a fedsub compare or run directory"
        )
    return runs


def read_cells(run_dir: Path) -> list[Cell]:
    """The finished methods of one run directory, in the order of its config."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    partition = cfg.get("partition") or {}
    alpha = f"{float(partition.get('alpha', 0.5)):g}" if partition.get("scheme", "dirichlet") in ALPHA_SCHEMES else "-"
    keys = [m.get("label") or m["name"] for m in cfg.get("methods") or []]
    finished = [k for k in keys if (run_dir / k / "summary.json").is_file()]
    return [
        Cell(k, alpha, int(cfg.get("seed", 0)), run_dir, json.loads((run_dir / k / "summary.json").read_text()))
        for k in finished
    ]


def collect_cells(dirs: list[Path]) -> list[Cell]:
    """Every finished cell below `dirs`, sorted by method (first seen), alpha, seed; no duplicates."""
    cells, seen = [], {}
    for root in dirs:
        for run_dir in find_run_dirs(root):
            for cell in read_cells(run_dir):
                key = (cell.method, cell.alpha, cell.seed)
                if key in seen:
                    raise ConfigError(
                        f"method {cell.method}, alpha {cell.alpha}, seed {cell.seed} is in both {seen[key]} and "
                        f"{run_dir}; report them separately"
                    )
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


def is_generation(cells: list["Cell"]) -> bool:
    """Every cell a generation run (ROUGE-L, no accuracy): the tables and plots use its metrics."""
    return bool(cells) and all(c.summary.get("final_rougeL") is not None for c in cells)
