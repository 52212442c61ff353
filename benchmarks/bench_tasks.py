"""Benchmark: seconds per round, peak memory and bytes per round per task, for fedit and fedgalore.

    .venv/bin/python benchmarks/bench_tasks.py [--tasks generation,multiple_choice,vision] [--rounds 2]
        [--methods fedit,fedgalore] [--device cpu|cuda] [--dtype float32|bfloat16] [--set k=v]... [--out FILE]

Runs each task's preset (configs/<task>.yaml) with its own settings, `--rounds` rounds; every
(task, method) cell in a fresh process, so the peak resident memory is that cell's alone.
Reported per cell: median seconds per round over the rounds, peak RSS (MB), mean MB up / down per
round (all clients together) and the final task metric. Not in `make bench` (minutes per cell on a CPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import add_device_args, check_device, emit, machine_info, partial_path

from fedsub.core.io import atomic_write_text

HERE = Path(__file__).parent
METRIC = {"generation": "rougeL", "multiple_choice": "accuracy", "vision": "accuracy"}


def run_cell(task: str, method: str, args: argparse.Namespace) -> dict:
    """One preset x one method in a child process; its summary.json."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable, "-m", "fedsub", "run", str(HERE.parent / "configs" / f"{task}.yaml"), "--out", tmp,
            "--quiet",
            "--set", f"federation.rounds={args.rounds}", "--set", f"device={args.device}", "--set",
            f"dtype={args.dtype}",
            "--set", f"methods={method}", *[x for item in args.set for x in ("--set", item)],
        ]  # fmt: skip
        subprocess.run(command, check=True)
        summary = json.loads((Path(tmp) / method / "summary.json").read_text())
    return {
        "task": task, "method": method, "rounds": summary["rounds"],
        "seconds_per_round": summary["seconds_per_round"], "peak_rss_mb": summary["peak_rss_mb"],
        "mb_up_per_round": summary["bytes_up_per_round"] / 1e6,
        "mb_down_per_round": summary["bytes_down_per_round"] / 1e6,
        "metric": METRIC[task], "final_metric": summary.get(f"final_{METRIC[task]}"),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="generation,multiple_choice,vision")
    parser.add_argument("--methods", default="fedit,fedgalore")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="extra override for every cell")
    add_device_args(parser)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    check_device(args.device)
    machine = machine_info(args.device, args.dtype)
    report = {
        "benchmark": "tasks",
        "machine": machine,
        "workload": {"rounds": args.rounds, "overrides": args.set},
        "cells": [],
    }
    for task in args.tasks.split(","):
        for method in args.methods.split(","):
            report["cells"].append(run_cell(task, method, args))
            print(json.dumps(report["cells"][-1]), flush=True)  # a cell takes minutes: show (and keep) each
            if args.out:
                atomic_write_text(partial_path(args.out), json.dumps(report, indent=2) + "\n")
    emit(report, args.out)
    if args.out:
        partial_path(args.out).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
