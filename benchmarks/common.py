"""Shared by the benchmark scripts (run as `python benchmarks/bench_*.py`, so this folder is on sys.path)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from fedsub.core.io import atomic_write_text

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16"}
LIBRARIES = ("torch", "transformers", "peft", "numpy", "scipy")


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """--device cpu|cuda and --dtype float32|bfloat16 (fp32 / bf16 accepted), the same in every script."""
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", type=lambda s: DTYPE_ALIASES.get(s, s), choices=sorted(DTYPES))


def check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda, but torch sees no CUDA device (torch " + torch.__version__ + ")")


def load_avg() -> float | None:
    # The machine may be shared: timings under load differ by 10-100x, so the load is reported.
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine_info(device: str, dtype: str) -> dict:
    """What RESULTS.md prints beside every table: machine, library versions, device, load, date."""
    info = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "memory_gib": _memory_gib(), "python": platform.python_version(),
        **{name: _version(name) for name in LIBRARIES},
        "threads": torch.get_num_threads(), "device": device, "dtype": dtype,
        "load_avg_1m_start": load_avg(), "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _version(name: str) -> str | None:
    try:
        return torch.__version__ if name == "torch" else version(name)
    except PackageNotFoundError:
        return None


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def emit(report: dict, out: str | Path | None) -> None:
    """Print the JSON report, and write it atomically to `out` when given."""
    if "machine" in report and "load_avg_1m_start" in report["machine"]:
        report["machine"]["load_avg_1m_end"] = load_avg()
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        atomic_write_text(Path(out), text + "\n")


def partial_path(out: Path) -> Path:
    """Where a long benchmark keeps its finished cells until it ends: a name results_md.py ignores,
    so an interrupted run is never rendered as a complete table."""
    return Path(out).with_name(f"partial-{Path(out).name}")
