"""Shared by the benchmark scripts (run as `python benchmarks/bench_*.py`, so this folder is on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path

from fedsub.core.io import atomic_write_text


def emit(report: dict, out: str | Path | None) -> None:
    """Print the JSON report, and write it atomically to `out` when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        atomic_write_text(Path(out), text + "\n")
