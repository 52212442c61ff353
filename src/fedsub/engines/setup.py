"""What every engine sets up before its first round: the data, the method's workspace model, the
train settings, and the seeded draw of each round's clients that makes runs exact (each client's
own seed, like every derived seed, comes from fedsub.core.seeding).

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
from fedsub.models import ModelPlan, head_module_names, plan_model, target_linear_names
from fedsub.tasks.base import EncodedData, EncodedSubset, Task


@dataclass
class FederatedData:
    """The encoded global splits, the client partition and the task, shared by every method of a run,
    and the model they were encoded for (its tokenizer, its kind): every method's workspace loads it."""

    task: Task  # classification, generation, multiple choice or images (fedsub.tasks)
    train: EncodedData
    test: EncodedData
    parts: list[torch.Tensor]
    label_names: list[str]
    heterogeneity: dict[str, Any]
    model_plan: ModelPlan
    # federated evaluation (config federated_eval): each client's evaluation rows, indices into
    # `test` or, with held-out rows, into `train`; None when it is off
    eval_parts: list[torch.Tensor] | None = None
    eval_source: str = "test"

    def client_eval_data(self, client_id: int) -> EncodedData:
        """Client `client_id`'s own evaluation set (a view of the split its rows index)."""
        split = self.train if self.eval_source == "train" else self.test
        return EncodedSubset(split, self.eval_parts[client_id])


@dataclass
class MethodSetup:
    """One method of a run, ready to train or evaluate: the method, its workspace model, its settings."""

    method: Method
    workspace: Workspace
    settings: TrainSettings


def prepare_data(cfg: ExperimentConfig, run_dir: Path) -> FederatedData:
    """Decide the model, load and split the data, partition it over the clients (report saved), encode once."""
    # data loading and the tasks import datasets and scikit-learn (~1.5 s and ~1.9 s here), which
    # `fedsub export` and `fedsub report` (they import this module) never need
    from fedsub.data import load_splits, partition, save_partition_report  # late: start-up, see above
    from fedsub.tasks import build_task, check_input  # late: start-up, see above

    plan = plan_model(cfg)  # a bad model name fails here, before the data is read
    splits = load_splits(cfg.data, cfg.seed)
    check_input(cfg, splits.input_column)
    parts = partition(splits.train, cfg.partition, cfg.federation.num_clients, cfg.seed)
    eval_parts, eval_source = None, "test"
    if cfg.federated_eval.enabled:
        from fedsub.data.client_eval import client_eval_rows  # late: start-up, see above

        train_labels, test_labels = np.asarray(splits.train["label"]), np.asarray(splits.test["label"])
        parts, eval_parts, eval_source = client_eval_rows(
            parts, train_labels, test_labels, cfg.federated_eval, cfg.seed
        )
    heterogeneity = save_partition_report(
        run_dir, parts, splits.train, splits.label_names, cfg=cfg.partition, seed=cfg.seed
    )
    task = build_task(cfg, plan, splits.input_column, len(splits.label_names))
    train, test = task.encode_dataset(splits.train), task.encode_dataset(splits.test)
    client_parts = [torch.as_tensor(np.asarray(p), dtype=torch.long) for p in parts]
    if eval_parts is not None:
        eval_parts = [torch.as_tensor(np.asarray(p), dtype=torch.long) for p in eval_parts]
    return FederatedData(
        task, train, test, client_parts, list(splits.label_names), heterogeneity, plan, eval_parts, eval_source
    )


def build_workspace(cfg: ExperimentConfig, method, data: FederatedData) -> Workspace:
    """A fresh base model (the one `data` was encoded for) adapted by the method (seeded: every
    engine and client builds the same one). Which modules are its head and which are adapted is the
    run's choice (cfg.model); whether it must have a head is its kind's (a causal LM keeps its own)."""
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    plan = data.model_plan
    model = plan.load(len(data.label_names), cfg.seed, dtype)
    heads = head_module_names(model, cfg.model.head_modules, required=plan.needs_head)
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
