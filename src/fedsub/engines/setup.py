"""What every engine sets up before its first round: the data, the method's workspace model, the
train settings, and the seeded draws (which clients, which seed per client) that make runs exact.

Shared by the simulator, the Flower ServerApp and ClientApps, and the export (which rebuilds a run's
starting model), so none of them imports another engine for it.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsub.config import ExperimentConfig, MethodSpec
from fedsub.core.method import Method
from fedsub.core.registry import build_method
from fedsub.core.seeding import derive_rng
from fedsub.core.types import TrainSettings
from fedsub.core.workspace import Workspace
from fedsub.models import head_module_names, target_linear_names
from fedsub.tasks.base import EncodedData, Task


@dataclass
class FederatedData:
    """The encoded global splits, the client partition and the task, shared by every method of a run."""

    task: Task  # classification, generation, multiple choice or images (fedsub.tasks)
    train: EncodedData
    test: EncodedData
    parts: list[torch.Tensor]
    label_names: list[str]
    heterogeneity: dict[str, Any]


@dataclass
class MethodSetup:
    """One method of a run, ready to train or evaluate: the method, its workspace model, its settings."""

    method: Method
    workspace: Workspace
    settings: TrainSettings


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


def set_up_method(cfg: ExperimentConfig, spec: MethodSpec, data: FederatedData) -> MethodSetup:
    """The method built from its spec, with its workspace and train settings (server and clients alike)."""
    method = build_method(spec.name, spec.options, run_seed=cfg.seed)
    return MethodSetup(method, build_workspace(cfg, method, data), train_settings(cfg, spec))


def sample_clients(seed: int, round_index: int, num_clients: int, per_round: int) -> list[int]:
    """The clients of a round: a pure function of (seed, round), so resume and replay are exact."""
    if per_round >= num_clients:
        return list(range(num_clients))
    rng = derive_rng(seed, round_index)
    return sorted(int(c) for c in rng.choice(num_clients, size=per_round, replace=False))


def train_settings(cfg: ExperimentConfig, spec: MethodSpec) -> TrainSettings:
    t = cfg.train
    return TrainSettings(
        lr=spec.lr or t.lr,
        batch_size=t.batch_size,
        local_steps=t.local_steps,
        local_epochs=t.local_epochs,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        head_lr=t.lr,
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
