"""Record a partition in a run directory: manifest, label histogram, heatmap, heterogeneity summary."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from fedsub.config import PartitionConfig
from fedsub.core.io import atomic_write_bytes, atomic_write_text
from fedsub.data.partition import group_codes

ANNOTATE_MAX_CELLS = 400  # beyond this many cells the numbers are unreadable at any font size


def save_partition_report(
    run_dir: Path,
    parts: list[np.ndarray],
    dataset: datasets.Dataset,
    label_names: list[str] | None = None,
    column: str = "label",
    cfg: PartitionConfig | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Write partition.json, label_histogram.csv and partition_heatmap.png into `run_dir`
    (each atomically) and return the heterogeneity summary.

    `label_names[c]` names value c of `column` (the int "label" column); for any other column pass
    None and the sorted distinct values name the classes. `cfg` and `seed`, when given, are recorded
    as the scheme in partition.json.
    """
    run_dir = Path(run_dir)
    codes, names = _classes(dataset, column, label_names)
    hist = label_histogram(parts, codes, len(names))
    summary = heterogeneity_summary(hist)
    ids = _ids(dataset)
    manifest = {
        "scheme": _scheme(cfg, seed, column, len(parts)),
        "summary": summary,
        "clients": {str(k): ids[rows].tolist() for k, rows in enumerate(parts)},
    }
    atomic_write_text(run_dir / "partition.json", json.dumps(manifest, indent=1) + "\n")
    atomic_write_text(run_dir / "label_histogram.csv", histogram_csv(hist, names))
    atomic_write_bytes(run_dir / "partition_heatmap.png", heatmap_png(hist, names))
    return summary


def save_histogram_report(
    run_dir: Path, hist: np.ndarray, names: list[str], scheme: dict[str, Any], clients: dict[str, Any]
) -> dict[str, Any]:
    """The same three files from a (clients, classes) histogram alone, when no party holds the rows
    (data.source nodes: each node reports its counts); `clients` is what partition.json lists per client."""
    summary = heterogeneity_summary(hist)
    manifest = {"scheme": scheme, "summary": summary, "clients": clients}
    atomic_write_text(Path(run_dir) / "partition.json", json.dumps(manifest, indent=1) + "\n")
    atomic_write_text(Path(run_dir) / "label_histogram.csv", histogram_csv(hist, names))
    atomic_write_bytes(Path(run_dir) / "partition_heatmap.png", heatmap_png(hist, names))
    return summary


def label_histogram(parts: list[np.ndarray], codes: np.ndarray, num_classes: int) -> np.ndarray:
    """(clients, classes) counts."""
    return np.stack([np.bincount(codes[rows], minlength=num_classes) for rows in parts]).astype(np.int64)


def effective_classes(hist: np.ndarray) -> np.ndarray:
    """exp(entropy) of each client's label distribution: 1 = one class, C = uniform over C
    (Hill number of order 1); 0 for an empty client."""
    sizes = hist.sum(axis=1, keepdims=True)
    p = np.divide(hist, sizes, out=np.zeros(hist.shape), where=sizes > 0)
    entropy = -np.sum(p * np.log(np.where(p > 0, p, 1.0)), axis=1)
    return np.where(sizes[:, 0] > 0, np.exp(entropy), 0.0)


def heterogeneity_summary(hist: np.ndarray) -> dict[str, Any]:
    """Per-client sizes and effective classes, their means, and the classes present per client."""
    eff = effective_classes(hist)
    sizes = hist.sum(axis=1)
    return {
        "num_clients": int(hist.shape[0]),
        "num_classes": int(hist.shape[1]),
        "num_examples": int(sizes.sum()),
        "sizes": sizes.tolist(),
        "classes_present": (hist > 0).sum(axis=1).tolist(),
        "effective_classes": [round(float(e), 4) for e in eff],
        "mean_effective_classes": round(float(eff.mean()), 4),
        "global_effective_classes": round(float(effective_classes(hist.sum(axis=0, keepdims=True))[0]), 4),
    }


def histogram_csv(hist: np.ndarray, names: list[str]) -> str:
    """One row per client: client, count per class, total."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["client", *names, "total"])
    for k, row in enumerate(hist):
        writer.writerow([k, *row.tolist(), int(row.sum())])
    return out.getvalue()


def heatmap_png(hist: np.ndarray, names: list[str]) -> bytes:
    """Clients x classes heatmap; counts written in the cells when there are few of them.
    Uses the Agg canvas directly (no pyplot), so it neither needs a display nor changes the
    process-wide matplotlib backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # late: start-up, matplotlib takes ~0.7 s to import
    from matplotlib.figure import Figure  # late: as above

    n_clients, n_classes = hist.shape
    fig = Figure(figsize=(min(2.5 + 0.35 * n_classes, 30), min(1.5 + 0.3 * n_clients, 30)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(hist, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="examples")
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    if n_classes <= 60:
        ax.set_xticks(range(n_classes), names, rotation=90, fontsize=7)
    if n_clients <= 60:
        ax.set_yticks(range(n_clients), [str(k) for k in range(n_clients)], fontsize=7)
    if hist.size <= ANNOTATE_MAX_CELLS:
        _annotate(ax, hist)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def _annotate(ax: Any, hist: np.ndarray) -> None:
    threshold = hist.max() / 2 if hist.size else 0
    for (k, c), count in np.ndenumerate(hist):
        if count:
            ax.text(
                c, k, str(count), ha="center", va="center", fontsize=6, color="black" if count > threshold else "white"
            )


def _classes(dataset: datasets.Dataset, column: str, label_names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Int codes of `column` and the class names. With `label_names` the column must already hold
    codes 0..len-1 (the "label" column); otherwise codes follow the sorted distinct values."""
    if label_names is not None:
        codes = np.asarray(dataset.select_columns([column]).with_format("arrow")[:].column(0), dtype=np.int64)
        return codes, list(label_names)
    codes = group_codes(dataset, column)
    values = dataset.unique(column)
    return codes, [str(v) for v in sorted(values)]


def _ids(dataset: datasets.Dataset) -> np.ndarray:
    """The "id" of every row as str (the row index if the dataset has no "id" column)."""
    if "id" not in dataset.column_names:
        return np.arange(len(dataset)).astype(str).astype(object)
    values = dataset.select_columns(["id"]).with_format("arrow")[:].column(0).to_pylist()
    return np.array([str(v) for v in values], dtype=object)


def _scheme(cfg: PartitionConfig | None, seed: int | None, column: str, num_clients: int) -> dict[str, Any]:
    scheme: dict[str, Any] = cfg.model_dump(mode="json") if cfg is not None else {}
    scheme.update(num_clients=num_clients, column=(cfg.by if cfg and cfg.by else column), seed=seed)
    return scheme
