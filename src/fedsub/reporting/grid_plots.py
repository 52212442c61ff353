"""Plots of a grid of runs (see fedsub.reporting.results): one panel per partition alpha.

- accuracy_rounds.png: test accuracy per round, per method the mean over seeds and a min-max band;
- accuracy_bytes.png: mean accuracy against cumulative bytes (up + down, mean over seeds), log x;
- partition_heatmaps.png: every run's partition_heatmap.png, a row per alpha, a column per seed.
A grid of generation runs plots ROUGE-L instead: rougeL_rounds.png and rougeL_bytes.png.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedsub.reporting.cells import Cell, alpha_order, groups, is_generation
from fedsub.reporting.report import pyplot, read_metrics, save_figure

TITLES = {"accuracy": "test accuracy", "rougeL": "test ROUGE-L"}


def seed_curves(group: list[Cell], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rounds evaluated in every seed, and per seed (rows) the metric and cumulative bytes there."""
    per_seed = [{r["round"]: r for r in read_metrics(c.method_dir / "metrics.jsonl")} for c in group]
    rounds = sorted(set.intersection(*({k for k, r in recs.items() if r.get(metric) is not None} for recs in per_seed)))
    values = [[recs[k][metric] for k in rounds] for recs in per_seed]
    sent = [
        [sum(r["bytes_up"] + r["bytes_down"] for j, r in recs.items() if j <= k) for k in rounds] for recs in per_seed
    ]
    return np.array(rounds), np.array(values, dtype=float), np.array(sent, dtype=float)


def panels(cells: list[Cell], title: str):
    plt = pyplot()
    alphas = sorted({c.alpha for c in cells}, key=alpha_order)
    fig, axes = plt.subplots(1, len(alphas), figsize=(5 * len(alphas), 4), dpi=110, sharey=True, squeeze=False)
    fig.suptitle(title)
    return fig, dict(zip(alphas, axes[0]))


def colors(cells: list[Cell]) -> dict[str, str]:
    methods = list(dict.fromkeys(c.method for c in cells))
    return {m: f"C{i % 10}" for i, m in enumerate(methods)}


def metric_rounds(cells: list[Cell], metric: str, path: Path) -> None:
    fig, axes = panels(cells, f"{TITLES[metric]} per round: mean over seeds, band = min-max")
    color = colors(cells)
    for (method, alpha), group in groups(cells).items():
        rounds, values, _ = seed_curves(group, metric)
        ax = axes[alpha]
        ax.plot(rounds, values.mean(0), color=color[method], marker="o", markersize=3, label=f"{method} ({len(group)})")
        if len(group) > 1:
            ax.fill_between(rounds, values.min(0), values.max(0), color=color[method], alpha=0.2)
        ax.xaxis.get_major_locator().set_params(integer=True)
    finish(fig, axes, "round", TITLES[metric], save_to=path)


def metric_bytes(cells: list[Cell], metric: str, path: Path) -> None:
    fig, axes = panels(cells, f"{TITLES[metric]} vs cumulative bytes (up + down), mean over seeds")
    color = colors(cells)
    for (method, alpha), group in groups(cells).items():
        _, values, sent = seed_curves(group, metric)
        axes[alpha].plot(
            sent.mean(0) / 1e6, values.mean(0), color=color[method], marker="o", markersize=3, label=method
        )
    for ax in axes.values():
        ax.set_xscale("log")
    finish(fig, axes, "cumulative MB (up + down, all clients)", TITLES[metric], save_to=path)


def finish(fig, axes: dict, xlabel: str, ylabel: str, save_to: Path) -> None:
    for alpha, ax in axes.items():
        ax.set_title("no alpha (scheme without one)" if alpha == "-" else f"alpha {alpha}")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    first = next(iter(axes.values()))
    first.set_ylabel(ylabel)
    first.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, save_to)


def partition_heatmaps(cells: list[Cell], path: Path) -> None:
    plt = pyplot()
    runs = {(c.alpha, c.seed): c.run_dir for c in cells}
    alphas = sorted({a for a, _ in runs}, key=alpha_order)
    seeds = sorted({s for _, s in runs})
    fig, axes = plt.subplots(
        len(alphas), len(seeds), figsize=(4.5 * len(seeds), 3.5 * len(alphas)), dpi=110, squeeze=False
    )
    for i, alpha in enumerate(alphas):
        for j, seed in enumerate(seeds):
            ax, image = axes[i][j], runs.get((alpha, seed), Path("-")) / "partition_heatmap.png"
            ax.set_axis_off()
            ax.set_title(f"alpha {alpha}, seed {seed}", fontsize=9)
            if image.is_file():
                ax.imshow(plt.imread(image))
            else:
                ax.text(0.5, 0.5, "no partition_heatmap.png", ha="center", va="center")
    fig.tight_layout()
    save_figure(fig, path)


def write_plots(cells: list[Cell], out: Path) -> None:
    metric = "rougeL" if is_generation(cells) else "accuracy"
    metric_rounds(cells, metric, Path(out) / f"{metric}_rounds.png")
    metric_bytes(cells, metric, Path(out) / f"{metric}_bytes.png")
    partition_heatmaps(cells, Path(out) / "partition_heatmaps.png")
