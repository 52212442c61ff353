"""`fedsub run`: one experiment config -> one run directory with a sub-folder per method.

Layout: config.yaml (resolved), partition.json, label_histogram.csv, partition_heatmap.png,
<method>/metrics.jsonl, <method>/final_model.safetensors, <method>/summary.json, summary.json,
results.md, accuracy.png. A method is finished when its summary.json exists (written last), so
`run_into` can add methods to an existing run directory and skip the finished ones
(`fedsub compare` does; `fedsub run` starts from an empty directory). While a method runs,
<method>/checkpoint/ holds its latest checkpoint; `fedsub run --resume DIR` (`run_experiment(..., resume=True)`)
continues every unfinished method from there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import yaml
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from fedsub.app.console import make_console, progress_bars
from fedsub.config import (
    ExperimentConfig,
    MethodSpec,
    check_method_options,
    config_to_dict,
    load_config,
    method_to_dict,
)
from fedsub.core.checkpoint import checkpoint_round
from fedsub.core.io import atomic_write_text
from fedsub.engines.engine import make_engine
from fedsub.engines.rounds import summarize
from fedsub.engines.setup import FederatedData, prepare_data
from fedsub.errors import ConfigError
from fedsub.reporting.report import columns_for, markdown_table, plot_metric, read_metrics, table_rows
from fedsub.reporting.tblog import RoundBoard


def prepare_run_dir(out: Path, overwrite: bool) -> Path:
    """Never overwrite a finished or partial run silently."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"run directory {out} exists and is not empty; pass --overwrite or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def resume_dir(out: Path) -> Path:
    """A run directory that `--resume` can continue: it exists and holds the run's config.yaml."""
    if not (Path(out) / "config.yaml").is_file():
        raise ConfigError(
            f"--resume {out}: no config.yaml there, so not a fedsub run directory; pass the directory a run wrote"
        )
    return Path(out)


def run_experiment(
    cfg: ExperimentConfig,
    out: Path,
    *,
    quiet: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    tensorboard: bool = False,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Run `cfg` into a new (or, with overwrite, emptied) `out`; with resume, continue the run in `out`."""
    check_method_options(cfg)  # a bad method option fails before the run directory is touched
    check_device(cfg.device)
    console = console or make_console(quiet)
    created = not Path(out).exists()
    run_dir = resume_dir(Path(out)) if resume else prepare_run_dir(Path(out), overwrite)
    try:
        with progress_bars(console) as progress:
            summaries = run_into(cfg, run_dir, console, progress, tensorboard=tensorboard, resume=resume)
    except ConfigError:
        if not resume:
            forget_untrained_run(run_dir, created)
        raise
    print_table(console, summaries)
    console.print(f"results in {run_dir}")
    return summaries


def check_device(device: str) -> None:
    """A CUDA device this torch cannot use is one line, before anything is written (torch's own
    message is an AssertionError traceback from deep inside the first .to())."""
    if device.startswith("cuda"):
        import torch  # late: start-up; only a CUDA config pays for it here

        index = int(device.split(":")[1]) if ":" in device else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise ConfigError(
                f"field device: {device} requested but torch {torch.__version__} sees {seen} CUDA devices; "
                f"use device: cpu or a CUDA build of torch"
            )


def forget_untrained_run(run_dir: Path, created: bool) -> None:
    """Bad input found before any method trained: remove what this run wrote (config.yaml, the
    partition report), so the corrected rerun needs no --overwrite. A folder the user made stays."""
    if any(p.is_dir() for p in run_dir.iterdir()):
        return  # a method started: its directory may hold work worth keeping
    if created:
        shutil.rmtree(run_dir)
    else:
        for path in run_dir.iterdir():
            path.unlink()


def is_finished(run_dir: Path, key: str) -> bool:
    return (Path(run_dir) / key / "summary.json").is_file()


def run_into(
    cfg: ExperimentConfig,
    run_dir: Path,
    console: Console,
    progress: Progress,
    *,
    tensorboard: bool = False,
    on_method: Callable[[MethodSpec], None] | None = None,
    on_method_done: Callable[[MethodSpec], None] | None = None,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Run cfg's unfinished methods into `run_dir` (data prepared once, only if one is left), then
    rewrite the run's summary.json, results.md and accuracy.png over every finished method.
    With `resume`, an unfinished method continues from its checkpoint (else it starts over)."""
    recorded = record_config(cfg, run_dir)
    data: FederatedData | None = None
    for spec in cfg.methods:
        if is_finished(run_dir, spec.key):
            continue
        if data is None:
            console.print(
                f"[bold]fedsub[/] {cfg.name}: loading data and partitioning over {cfg.federation.num_clients} clients"
            )
            data = prepare_data(cfg, run_dir)
        if on_method:
            on_method(spec)
        run_method(cfg, spec, data, run_dir, console, progress, tensorboard=tensorboard, resume=resume)
        if on_method_done:
            on_method_done(spec)
    return write_run_summary(recorded, run_dir, data)


def record_config(cfg: ExperimentConfig, run_dir: Path) -> ExperimentConfig:
    """Write the resolved config into the run directory. An existing one must match apart from its
    methods (same key = same method and options); the methods are merged, existing ones first."""
    path = Path(run_dir) / "config.yaml"
    if path.is_file():
        cfg = merge_methods(load_config(path), cfg, run_dir)
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return cfg


def merge_methods(existing: ExperimentConfig, cfg: ExperimentConfig, run_dir: Path) -> ExperimentConfig:
    old, new = config_to_dict(existing), config_to_dict(cfg)
    for key in ("name", "methods"):
        old.pop(key), new.pop(key)
    if old != new:
        field, was, now = first_difference(old, new)
        raise ConfigError(
            f"run directory {run_dir}: its config.yaml has {field}={was!r}, this run {now!r}; use another --out or "
            f"the same config"
        )
    by_key = {m.key: m for m in existing.methods}
    for spec in cfg.methods:
        if spec.key in by_key and method_to_dict(by_key[spec.key]) != method_to_dict(spec):
            field, was, now = first_difference(method_to_dict(by_key[spec.key]), method_to_dict(spec))
            raise ConfigError(
                f"run directory {run_dir}: method {spec.key} there has {field}={was!r}, this run {now!r}; give this "
                f"variant another label or use another --out"
            )
    merged = list(existing.methods) + [m for m in cfg.methods if m.key not in by_key]
    return existing.model_copy(update={"methods": merged})


def first_difference(old: Any, new: Any, prefix: str = "") -> tuple[str, Any, Any]:
    """The first dotted field where two nested dicts differ, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            if old.get(key) != new.get(key):
                return first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
    return prefix.rstrip("."), old, new


def write_run_summary(cfg: ExperimentConfig, run_dir: Path, data: FederatedData | None) -> list[dict[str, Any]]:
    finished = [spec.key for spec in cfg.methods if is_finished(run_dir, spec.key)]
    summaries = [json.loads((run_dir / key / "summary.json").read_text()) for key in finished]
    curves = {key: read_metrics(run_dir / key / "metrics.jsonl") for key in finished}
    report = run_dir / "partition.json"  # data.source nodes: written by the ServerApp from the nodes' reports
    heterogeneity = (data.heterogeneity if data else None) or (
        json.loads(report.read_text())["summary"] if report.is_file() else {}
    )
    atomic_write_text(
        run_dir / "summary.json", json.dumps({"methods": summaries, "heterogeneity": heterogeneity}, indent=2)
    )
    atomic_write_text(run_dir / "results.md", markdown_table(summaries))
    plot_metric(curves, run_dir / "accuracy.png", title=f"{cfg.name}: test accuracy per round")
    return summaries


def run_method(
    cfg: ExperimentConfig,
    spec: MethodSpec,
    data: FederatedData,
    run_dir: Path,
    console: Console,
    progress: Progress,
    *,
    tensorboard: bool = False,
    resume: bool = False,
) -> dict:
    """Train one method, save its final global model, then its summary.json (which marks it finished)."""
    fed = cfg.federation
    method_dir = run_dir / spec.key
    console.print(f"[bold]{spec.key}[/]: {fed.rounds} rounds x {fed.clients_per_round} clients")
    engine = make_engine(cfg, spec, data, method_dir, resume)
    done = checkpoint_round(engine.checkpoint_dir) if resume else 0
    if done:
        console.print(f"  {spec.key}: resuming after round {done} from {engine.checkpoint_dir}")
    rounds = progress.add_task(f"{spec.key} rounds", total=fed.rounds, completed=done)
    clients = progress.add_task("clients", total=fed.clients_per_round)
    board = open_board(method_dir) if tensorboard else None

    def on_client() -> None:
        progress.advance(clients)

    def on_round(record: dict) -> None:
        progress.advance(rounds)
        progress.reset(clients)
        console.print(round_line(record, fed.rounds))
        if board:
            board.log(record)

    try:
        records = engine.run(on_round=on_round, on_client=on_client)
    finally:
        progress.remove_task(rounds)
        progress.remove_task(clients)
        if board:
            board.close()
    engine.save_final_model(data.label_names)
    summary = summarize(records, spec.key)
    atomic_write_text(method_dir / "summary.json", json.dumps(summary, indent=2))
    if not cfg.checkpoint.keep:  # finished: the model and metrics are the result
        shutil.rmtree(engine.checkpoint_dir, ignore_errors=True)
    return summary


def open_board(method_dir: Path) -> RoundBoard:
    return RoundBoard(method_dir / "tensorboard")


def round_line(record: dict, total: int) -> str:
    """One short line per round (fits an 80-column log)."""
    acc = "" if record.get("accuracy") is None else f" acc {record['accuracy']:.3f} f1 {record['macro_f1']:.3f}"
    if record.get("rougeL") is not None:  # generation
        acc = f" rougeL {record['rougeL']:.3f} bleu {record['bleu4']:.1f} ppl {record['perplexity']:.1f}"
    if record.get("fed_accuracy") is not None:  # federated evaluation: the clients' own data
        acc += f" fed {record['fed_accuracy']:.3f} worst {record['fed_accuracy_worst']:.3f}"
    loss = "-" if record.get("train_loss") is None else f"{record['train_loss']:.3f}"
    lost = len(record.get("dropped", [])) + len(record.get("rejected", []))
    faults = (f" {lost} lost" if lost else "") + (f" skipped: {record['skipped']}" if record.get("skipped") else "")
    return (
        f"  {record['method']} {record['round']}/{total}: loss {loss}{acc}"
        f" up {record['bytes_up'] / 1e6:.1f}MB {record['seconds_round']:.1f}s{faults}"
    )


def print_table(console: Console, summaries: list[dict]) -> None:
    table = Table(title="results")
    for _, title, _ in columns_for(summaries):
        table.add_column(title, justify="left" if title == "method" else "right")
    for row in table_rows(summaries):
        table.add_row(*row)
    console.print(table)
