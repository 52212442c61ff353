"""Tables and plots from run directories (one folder per method holding metrics.jsonl)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from fedsub.core.io import atomic_write_bytes

COLUMNS = [
    ("method", "method", "{}"),
    ("final_accuracy", "final acc", "{:.4f}"),
    ("best_accuracy", "best acc", "{:.4f}"),
    ("final_macro_f1", "macro-F1", "{:.4f}"),
    ("bytes_up_per_round", "MB up/round", "{:.2f}"),
    ("bytes_down_per_round", "MB down/round", "{:.2f}"),
    ("seconds_per_round", "s/round", "{:.2f}"),
]
MB_COLUMNS = {"bytes_up_per_round", "bytes_down_per_round"}
GENERATION_COLUMNS = (
    [  # generation runs have no accuracy: ROUGE-L (0..1), BLEU-4 (0..100), perplexity
        ("method", "method", "{}"),
        ("final_rougeL", "final ROUGE-L", "{:.4f}"),
        ("best_rougeL", "best ROUGE-L", "{:.4f}"),
        ("final_bleu4", "BLEU-4", "{:.2f}"),
        ("final_perplexity", "perplexity", "{:.2f}"),
    ]
    + COLUMNS[4:]
)


FEDERATED_COLUMNS = [  # federated evaluation ran: the clients' own data, weighted, and the worst client
    ("final_fed_accuracy", "fed acc", "{:.4f}"),
    ("final_fed_accuracy_worst", "worst client", "{:.4f}"),
]


def columns_for(summaries: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    if summaries and all("final_rougeL" in s for s in summaries):
        return GENERATION_COLUMNS
    columns = COLUMNS
    if any(s.get("final_fed_accuracy") is not None for s in summaries):
        columns = columns[:4] + FEDERATED_COLUMNS + columns[4:]
    if any(s.get("final_dp_epsilon") is not None for s in summaries):  # privacy.dp: the budget spent
        columns = columns[:4] + [("final_dp_epsilon", "epsilon", "{:.2f}")] + columns[4:]
    return columns


def table_rows(summaries: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for summary in summaries:
        row = []
        for key, _, fmt in columns_for(summaries):
            value = summary.get(key)
            if value is None:
                row.append("-")
            else:
                row.append(fmt.format(value / 1e6 if key in MB_COLUMNS else value))
        rows.append(row)
    return rows


def markdown_table(summaries: list[dict[str, Any]]) -> str:
    header = [title for _, title, _ in columns_for(summaries)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(summaries)]
    return "\n".join(lines) + "\n"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl; a torn last line (a crash mid-write) is ignored."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def plot_metric(curves: dict[str, list[dict[str, Any]]], path: Path, metric: str = "accuracy", title: str = "") -> None:
    """Metric vs round, one line per method; written atomically as PNG. Runs without accuracy
    (generation) plot ROUGE-L instead."""
    if metric == "accuracy" and not any(r.get("accuracy") is not None for rs in curves.values() for r in rs):
        metric, title = "rougeL", title.replace("accuracy", "ROUGE-L")
    fig, ax = pyplot().subplots(figsize=(6, 4), dpi=110)
    for method, records in curves.items():
        points = [(r["round"], r[metric]) for r in records if r.get(metric) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=method)
    ax.set_xlabel("round")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(title or f"test {metric} per round")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed). Imported on first use
    (~0.7 s here): `fedsub run` writes its plot after training, and reading records needs none."""
    import matplotlib  # late: start-up, see the docstring

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # late: as above, and only after the backend is set

    return plt


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure atomically as PNG and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    pyplot().close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
