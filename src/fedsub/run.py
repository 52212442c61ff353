"""`fedsub run`: one experiment config -> one run directory with a sub-folder per method.

Layout: config.yaml (resolved), partition.json, label_histogram.csv, partition_heatmap.png,
<method>/metrics.jsonl, <method>/summary.json, summary.json, results.md, accuracy.png.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedsub.config import ConfigError, ExperimentConfig, config_to_dict
from fedsub.core.io import atomic_write_text
from fedsub.engines.simulation import Simulation, prepare_data, summarize
from fedsub.report import COLUMNS, markdown_table, plot_metric, table_rows


def prepare_run_dir(out: Path, overwrite: bool) -> Path:
    """Never overwrite a finished or partial run silently."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"run directory {out} exists and is not empty; pass --overwrite or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_experiment(cfg: ExperimentConfig, out: Path, *, quiet: bool = False, overwrite: bool = False, console: Console | None = None) -> list[dict[str, Any]]:
    # Logs (CI, files) get 120 columns so the results table is not cut; terminals keep their width.
    console = console or Console(stderr=True, quiet=quiet, width=None if sys.stderr.isatty() else 120)
    run_dir = prepare_run_dir(Path(out), overwrite)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    console.print(f"[bold]fedsub[/] {cfg.name}: loading data and partitioning over {cfg.federation.num_clients} clients")
    data = prepare_data(cfg, run_dir)
    summaries, curves = [], {}
    for spec in cfg.methods:
        records = run_method(cfg, spec, data, run_dir, console)
        summary = summarize(records, spec.key)
        atomic_write_text(run_dir / spec.key / "summary.json", json.dumps(summary, indent=2))
        summaries.append(summary)
        curves[spec.key] = records
    atomic_write_text(run_dir / "summary.json", json.dumps({"methods": summaries, "heterogeneity": data.heterogeneity}, indent=2))
    atomic_write_text(run_dir / "results.md", markdown_table(summaries))
    plot_metric(curves, run_dir / "accuracy.png", title=f"{cfg.name}: test accuracy per round")
    print_table(console, summaries)
    console.print(f"results in {run_dir}")
    return summaries


def run_method(cfg: ExperimentConfig, spec, data, run_dir: Path, console: Console) -> list[dict]:
    fed = cfg.federation
    console.print(f"[bold]{spec.key}[/]: {fed.rounds} rounds x {fed.clients_per_round} clients")
    simulation = Simulation(cfg, spec, data, run_dir / spec.key)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True, disable=console.quiet) as progress:
        rounds = progress.add_task(f"{spec.key} rounds", total=fed.rounds)
        clients = progress.add_task("clients", total=fed.clients_per_round)

        def on_client() -> None:
            progress.advance(clients)

        def on_round(record: dict) -> None:
            progress.advance(rounds)
            progress.reset(clients)
            console.print(round_line(record, fed.rounds))

        return simulation.run(on_round=on_round, on_client=on_client)


def round_line(record: dict, total: int) -> str:
    """One short line per round (fits an 80-column log)."""
    acc = "" if record.get("accuracy") is None else f" acc {record['accuracy']:.3f} f1 {record['macro_f1']:.3f}"
    return (
        f"  {record['method']} {record['round']}/{total}: loss {record['train_loss']:.3f}{acc}"
        f" up {record['bytes_up'] / 1e6:.1f}MB {record['seconds_round']:.1f}s"
    )


def print_table(console: Console, summaries: list[dict]) -> None:
    table = Table(title="results")
    for _, title, _ in COLUMNS:
        table.add_column(title, justify="left" if title == "method" else "right")
    for row in table_rows(summaries):
        table.add_row(*row)
    console.print(table)
