"""The in-process simulator: one model reused by every client, a round loop of plain phases.

sample -> configure -> train each client -> aggregate -> evaluate -> log. Client sampling and each
client's randomness are pure functions of (seed, round, client), so a run is reproducible and any
round can be replayed in isolation.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fedsub.config import ConfigError, ExperimentConfig, MethodSpec
from fedsub.core.registry import build_method
from fedsub.core.tensors import normalized_weights
from fedsub.core.types import ClientContext, ServerState, TrainSettings
from fedsub.core.workspace import Workspace
from fedsub.models import head_module_names, target_linear_names

TIMING_KEYS = ("seconds_train", "seconds_aggregate", "seconds_eval", "seconds_round", "peak_rss_mb")


@dataclass
class FederatedData:
    """The encoded global splits, the client partition and the task, shared by every method of a run."""

    task: Any  # a fedsub.tasks task (classification, generation, multiple choice, images)
    train: Any  # the task's encoded data
    test: Any
    parts: list[torch.Tensor]
    label_names: list[str]
    heterogeneity: dict[str, Any]


def prepare_data(cfg: ExperimentConfig, run_dir: Path) -> FederatedData:
    """Load and split the data, partition it over the clients (report saved), encode once."""
    from fedsub.data import load_splits, partition, save_partition_report
    from fedsub.tasks import build_task, check_input

    splits = load_splits(cfg.data, cfg.seed)
    check_input(cfg, splits.input_column)
    parts = partition(splits.train, cfg.partition, cfg.federation.num_clients, cfg.seed)
    heterogeneity = save_partition_report(run_dir, parts, splits.train, splits.label_names, cfg=cfg.partition, seed=cfg.seed)
    task = build_task(cfg, splits.input_column, len(splits.label_names))
    train, test = task.encode_dataset(splits.train), task.encode_dataset(splits.test)
    client_parts = [torch.as_tensor(np.asarray(p), dtype=torch.long) for p in parts]
    return FederatedData(task, train, test, client_parts, list(splits.label_names), heterogeneity)


def build_workspace(cfg: ExperimentConfig, method, data: FederatedData) -> Workspace:
    """A fresh base model adapted by the method (seeded: every engine and client builds the same one)."""
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    from fedsub.tasks import load_task_model, uses_causal_lm

    model = load_task_model(cfg, len(data.label_names), dtype)
    causal = cfg.task.kind in ("generation", "multiple_choice") and uses_causal_lm(cfg)
    heads = head_module_names(model, cfg.model.head_modules, required=not causal)
    targets = target_linear_names(model, cfg.model.target_modules, exclude=heads)
    workspace = Workspace(model, data.task, data.train, data.test, cfg.device, heads, targets)
    method.prepare_model(workspace)
    workspace.model.to(workspace.device)
    return workspace


def sample_clients(seed: int, round_index: int, num_clients: int, per_round: int) -> list[int]:
    """The clients of a round: a pure function of (seed, round), so resume and replay are exact."""
    if per_round >= num_clients:
        return list(range(num_clients))
    rng = np.random.default_rng([seed, round_index])
    return sorted(int(c) for c in rng.choice(num_clients, size=per_round, replace=False))


def client_seed(seed: int, round_index: int, client_id: int) -> int:
    return int(np.random.SeedSequence([seed, round_index, client_id]).generate_state(1)[0])


def train_settings(cfg: ExperimentConfig, spec: MethodSpec) -> TrainSettings:
    t = cfg.train
    return TrainSettings(
        lr=spec.lr or t.lr,
        batch_size=t.batch_size,
        local_steps=t.local_steps,
        local_epochs=t.local_epochs,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
    )


def reset_peak_rss() -> None:
    """Start a new peak-memory window, so each method of a run reports its own peak (Linux only)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM, the resident-set high-water mark
    except OSError:
        pass  # elsewhere the peak stays process-wide


def peak_rss_mb() -> float:
    """Peak resident memory since the last reset_peak_rss (process-wide where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


class Simulation:
    """Runs one method of an experiment round by round, appending one JSON line per round."""

    def __init__(self, cfg: ExperimentConfig, spec: MethodSpec, data: FederatedData, out_dir: Path):
        self.cfg, self.spec, self.data, self.out_dir = cfg, spec, data, out_dir
        reset_peak_rss()
        self.method = build_method(spec.name, spec.options)
        self.workspace = build_workspace(cfg, self.method, data)
        self.settings = train_settings(cfg, spec)
        self.client_states: dict[int, dict[str, Any]] = {}
        self.state: ServerState = self.method.init(self.workspace)

    def run(self, on_round: Callable[[dict], None] | None = None, on_client: Callable[[], None] | None = None) -> list[dict]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        records = []
        with open(self.out_dir / "metrics.jsonl", "w") as log:
            for round_index in range(self.cfg.federation.rounds):
                record = self.run_round(round_index, on_client)
                log.write(json.dumps(record) + "\n")
                log.flush()
                records.append(record)
                if on_round:
                    on_round(record)
        return records

    def run_round(self, round_index: int, on_client: Callable[[], None] | None = None) -> dict:
        fed = self.cfg.federation
        start = time.perf_counter()
        clients = sample_clients(self.cfg.seed, round_index, fed.num_clients, fed.clients_per_round)
        updates, bytes_down, seconds_train = [], 0, 0.0
        for client_id in clients:
            payload = self.method.configure_train(self.state, client_id)
            bytes_down += payload.nbytes()
            context = self.client_context(round_index, client_id)
            tic = time.perf_counter()
            updates.append(self.method.client_train(self.workspace, payload, context))
            seconds_train += time.perf_counter() - tic
            if on_client:
                on_client()
        tic = time.perf_counter()
        self.state, method_metrics = self.method.aggregate_train(self.state, updates)
        seconds_aggregate = time.perf_counter() - tic
        evaluation, seconds_eval = self.maybe_evaluate(round_index)
        weights = normalized_weights([u.num_examples for u in updates])
        return {
            "round": round_index + 1,
            "method": self.spec.key,
            **evaluation,
            "train_loss": float(sum(w * u.metrics["train_loss"] for w, u in zip(weights, updates))),
            "clients": clients,
            "bytes_up": sum(u.payload.nbytes() for u in updates),
            "bytes_down": bytes_down,
            **method_metrics,
            "seconds_train": seconds_train,
            "seconds_aggregate": seconds_aggregate,
            "seconds_eval": seconds_eval,
            "seconds_round": time.perf_counter() - start,
            "peak_rss_mb": peak_rss_mb(),
        }

    def client_context(self, round_index: int, client_id: int) -> ClientContext:
        return ClientContext(
            client_id=client_id,
            round=round_index,
            indices=self.data.parts[client_id],
            train=self.settings,
            seed=client_seed(self.cfg.seed, round_index, client_id),
            state=self.client_states.setdefault(client_id, {}),
        )

    def maybe_evaluate(self, round_index: int) -> tuple[dict[str, float | None], float]:
        fed = self.cfg.federation
        if (round_index + 1) % fed.eval_every and round_index + 1 != fed.rounds:
            return dict.fromkeys(metric_keys(self.data.task)), 0.0
        tic = time.perf_counter()
        self.method.load_global(self.workspace, self.state)
        metrics = self.workspace.evaluate(self.cfg.train.eval_batch_size)
        return metrics, time.perf_counter() - tic


def metric_keys(task) -> tuple[str, ...]:
    return tuple(getattr(task, "metric_keys", ("test_loss", "accuracy", "macro_f1")))


def summarize(records: list[dict], method: str) -> dict[str, Any]:
    """Final and best metrics, bytes and seconds per round, peak memory of one method's run.

    Generation runs (no accuracy) add final_/best_ rougeL and bleu4 and the final perplexity."""
    evaluated = [r for r in records if r.get("test_loss") is not None]
    final = evaluated[-1] if evaluated else {}
    extra = {}
    for key in ("rougeL", "bleu4", "perplexity"):
        if final.get(key) is not None:
            extra[f"final_{key}"] = final[key]
            if key != "perplexity":
                extra[f"best_{key}"] = max(r[key] for r in evaluated)
    return {
        "method": method,
        "rounds": len(records),
        "final_accuracy": final.get("accuracy"),
        "best_accuracy": max((r["accuracy"] for r in evaluated if r.get("accuracy") is not None), default=None),
        "final_macro_f1": final.get("macro_f1"),
        "best_macro_f1": max((r["macro_f1"] for r in evaluated if r.get("macro_f1") is not None), default=None),
        "final_test_loss": final.get("test_loss"),
        "bytes_up_per_round": float(np.mean([r["bytes_up"] for r in records])),
        "bytes_down_per_round": float(np.mean([r["bytes_down"] for r in records])),
        "seconds_per_round": float(np.median([r["seconds_round"] for r in records])),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in records),
        **extra,
    }
