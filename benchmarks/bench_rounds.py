"""Benchmark: seconds per round (split into client training, aggregation and evaluation), bytes and
peak memory per round for each method of a config; by default the issue-4 grid's nine methods.

    .venv/bin/python benchmarks/bench_rounds.py [--config configs/fedgalore_grid.yaml] [--methods a,b]
        [--rounds 3] [--repeats 3] [--device cpu|cuda] [--dtype float32|bfloat16] [--set k=v]... [--out FILE]

Each repeat is one `fedsub run` of the selected methods for `--rounds` rounds (the simulator resets
the peak-memory counter per method). Per method: the median over repeats of each run's median
seconds per round (and of its training / aggregation / evaluation / AJIVE parts), the exact bytes up
and down per round, and the largest peak RSS. Accuracy after so few rounds is not reported: the grid
is where accuracy comes from. Not in `make bench` (about 30 min on the 2-core CPU); its JSON,
results/rounds-DEVICE.json, is rendered into RESULTS.md by results_md.py like the others.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import add_device_args, check_device, emit, machine_info, partial_path

from fedsub.app.compare import select_methods
from fedsub.app.run import run_experiment
from fedsub.config import load_config
from fedsub.core.io import atomic_write_text
from fedsub.errors import ConfigError
from fedsub.reporting.report import read_metrics

PARTS = ("seconds_round", "seconds_train", "seconds_aggregate", "seconds_eval", "seconds_ajive")


def run_once(cfg, out: Path) -> dict[str, dict]:
    """One run of every method of `cfg`; per method its per-run medians, bytes and peak memory."""
    run_experiment(cfg, out, quiet=True)
    cells = {}
    for spec in cfg.methods:
        records = read_metrics(out / spec.key / "metrics.jsonl")
        cells[spec.key] = {
            **{part: statistics.median(r.get(part, 0.0) for r in records) for part in PARTS},
            "bytes_up_per_round": statistics.fmean(r["bytes_up"] for r in records),
            "bytes_down_per_round": statistics.fmean(r["bytes_down"] for r in records),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in records),
        }
    return cells


def combine(runs: list[dict[str, dict]]) -> list[dict]:
    """Medians over repeats per method (bytes are exact and the same in every repeat)."""
    rows = []
    for key in runs[0]:
        cells = [run[key] for run in runs]
        row = {"method": key, **{f"{part}_median": statistics.median(c[part] for c in cells) for part in PARTS}}
        row["seconds_round_per_repeat"] = [c["seconds_round"] for c in cells]
        row["mb_up_per_round"] = cells[0]["bytes_up_per_round"] / 1e6
        row["mb_down_per_round"] = cells[0]["bytes_down_per_round"] / 1e6
        row["peak_rss_mb"] = max(c["peak_rss_mb"] for c in cells)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/fedgalore_grid.yaml")
    parser.add_argument("--methods", help="comma-separated method keys of the config (default: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="extra config override (repeatable)")
    add_device_args(parser)
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args()
    check_device(args.device)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: must be at least 1")
    overrides = [f"federation.rounds={args.rounds}", f"device={args.device}", f"dtype={args.dtype}", *args.set]
    try:
        cfg = load_config(args.config, overrides)
        if args.methods:
            cfg = cfg.model_copy(update={"methods": select_methods(cfg, args.methods)})
    except ConfigError as err:
        parser.error(str(err))
    machine = machine_info(args.device, args.dtype)
    workload = {"config": args.config, "rounds": args.rounds, "repeats": args.repeats, "overrides": args.set,
                "clients_per_round": cfg.federation.clients_per_round,
                "local_steps": cfg.train.local_steps}  # fmt: skip
    runs = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(run_once(cfg, Path(tmp) / "run"))
        print(
            f"repeat {repeat + 1}/{args.repeats}: "
            + json.dumps({k: round(v["seconds_round"], 2) for k, v in runs[-1].items()}),
            flush=True,
        )
        if args.out:  # a repeat takes minutes: keep what is done (under a name results_md.py ignores)
            atomic_write_text(partial_path(args.out), json.dumps({"workload": workload, "runs": runs}, indent=2) + "\n")
    emit({"benchmark": "rounds", "machine": machine, "workload": workload, "results": combine(runs)}, args.out)
    if args.out:
        partial_path(args.out).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
