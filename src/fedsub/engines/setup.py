"""What every engine sets up before its first round: the data, the method's workspace model, the
train settings, and the seeded draw of each round's clients that makes runs exact (each client's
own seed, like every derived seed, comes from fedsub.core.seeding).

Shared by the simulator, the Flower ServerApp and ClientApps, and the export (which rebuilds a run's
starting model), so none of them imports another engine for it.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsub.config import ExperimentConfig, MethodSpec
from fedsub.core.method import Method
from fedsub.core.registry import build_method
from fedsub.core.seeding import derive_rng
from fedsub.core.types import LocalDP, TrainSettings
from fedsub.core.workspace import Workspace
from fedsub.errors import ConfigError
from fedsub.models import ModelPlan, head_module_names, plan_model, target_linear_names
from fedsub.tasks.base import EncodedData, EncodedSubset, NoRows, Task


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
    # data.source nodes, on the server: what each node reported of its own data (num_examples,
    # eval_examples, label_counts), filled when the nodes are discovered
    node_reports: dict[int, dict[str, Any]] = field(default_factory=dict)
    source: str = "global"  # data.source: "nodes" when the clients' rows live on their nodes only

    def train_size(self, client_id: int) -> int | None:
        """The client's training rows as the server knows them: its partition, or what its own-data
        node reported (None: unknown); an update's num_examples must say exactly this."""
        if client_id in self.node_reports:
            return int(self.node_reports[client_id]["num_examples"])
        if self.source == "nodes":  # a node that never reported usable data: nothing to check against
            return None
        return len(self.parts[client_id]) if 0 <= client_id < len(self.parts) else None

    def eval_size(self, client_id: int) -> int | None:
        """How many evaluation rows the client holds (None: the server does not know)."""
        if client_id in self.node_reports:
            return int(self.node_reports[client_id]["eval_examples"])
        if self.eval_parts is None or client_id >= len(self.eval_parts):
            return None
        return len(self.eval_parts[client_id])

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
    """Decide the model, load and split the data, partition it over the clients (report saved), encode once.
    With data.source nodes the server holds no training data: prepare_server_data."""
    if cfg.data.source == "nodes":
        return prepare_server_data(cfg)
    # data loading and the tasks import datasets and scikit-learn (~1.5 s and ~1.9 s here), which
    # `fedsub export` and `fedsub report` (they import this module) never need
    from fedsub.data import save_partition_report  # late: start-up, see above
    from fedsub.tasks import build_task  # late: start-up, see above

    plan = plan_model(cfg)  # a bad model name fails here, before the data is read
    splits, parts = partition_global(cfg)
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


def partition_global(cfg: ExperimentConfig):
    """The global dataset's splits and the client partition (row indices into splits.train), as
    every engine and `fedsub flower split` see them."""
    from fedsub.data import load_splits, partition  # late: start-up, see prepare_data
    from fedsub.tasks import check_input  # late: start-up, see prepare_data

    splits = load_splits(cfg.data, cfg.seed)
    check_input(cfg, splits.input_column)
    return splits, partition(splits.train, cfg.partition, cfg.federation.num_clients, cfg.seed)


def nodes_task(cfg: ExperimentConfig):
    """data.source nodes: the model plan and text task of the declared label space, and `encode(path,
    where)`, a party's own file encoded for it (both sides of an own-data federation build these)."""
    from fedsub.data.node_files import load_labelled_file  # late: start-up, see prepare_data
    from fedsub.tasks import build_task  # late: start-up, see prepare_data

    plan = plan_model(cfg)
    task = build_task(cfg, plan, "text", len(cfg.data.labels))
    return plan, task, lambda path, where: task.encode_dataset(load_labelled_file(cfg.data, path, where))


def prepare_server_data(cfg: ExperimentConfig) -> FederatedData:
    """data.source nodes, the server's side: the task and model plan of the declared label space, its
    own test file (data.dataset) or no test rows, no training rows; the partition report is written
    from what the nodes report (fedsub.engines.flower.server)."""
    plan, task, encode = nodes_task(cfg)
    test = encode(cfg.data.dataset, "data.dataset") if cfg.data.dataset else NoRows()
    parts = [torch.empty(0, dtype=torch.long) for _ in range(cfg.federation.num_clients)]
    return FederatedData(task, NoRows(), test, parts, list(cfg.data.labels), {}, plan, source="nodes")


def prepare_node_data(cfg: ExperimentConfig, client_id: int, files: dict[str, str]) -> FederatedData:
    """data.source nodes, node `client_id`'s side: its own file `files["data"]` whole, in file order, as
    that client's partition; for federated evaluation, held-out rows of it (federated_eval.data
    holdout, the same draw as the simulator's) or its own test file `files["test"]` (test_partition)."""
    from fedsub.data.client_eval import hold_out  # late: start-up, see prepare_data

    where = f"node {client_id}"
    if "data" not in files:
        raise ConfigError(f"{where}: data.source is nodes but its node config has no data=PATH (its own file)")
    plan, task, encode = nodes_task(cfg)
    train = encode(files["data"], f"{where} data={files['data']}")
    parts = [np.empty(0, dtype=np.int64) for _ in range(cfg.federation.num_clients)]
    parts[client_id] = np.arange(len(train))
    test, eval_parts, eval_source = NoRows(), None, "test"
    fe = cfg.federated_eval
    if fe.enabled and fe.data == "holdout":
        parts, eval_parts = hold_out(parts, fe.holdout_fraction, cfg.seed)
        eval_source = "train"
    elif fe.enabled:
        if "test" not in files:
            raise ConfigError(
                f"{where}: federated_eval.data test_partition needs its own held-out file (node config test=PATH); "
                f"or set federated_eval.data: holdout"
            )
        test = encode(files["test"], f"{where} test={files['test']}")
        eval_parts = [np.empty(0, dtype=np.int64) for _ in parts]
        eval_parts[client_id] = np.arange(len(test))
    as_tensors = lambda rows: [torch.as_tensor(r, dtype=torch.long) for r in rows]  # noqa: E731
    return FederatedData(
        task, train, test, as_tensors(parts), list(cfg.data.labels), {}, plan,
        as_tensors(eval_parts) if eval_parts is not None else None, eval_source, source="nodes",
    )  # fmt: skip


def build_workspace(cfg: ExperimentConfig, method, data: FederatedData) -> Workspace:
    """A fresh base model (the one `data` was encoded for) adapted by the method (seeded: every
    engine and client builds the same one). Which modules are its head and which are adapted is the
    run's choice (cfg.model); whether it must have a head is its kind's (a causal LM keeps its own)."""
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    plan = data.model_plan
    model = plan.load(len(data.label_names), cfg.seed, dtype)
    heads = head_module_names(model, cfg.model.head_modules, required=plan.needs_head)
    targets = target_linear_names(model, cfg.model.target_modules, exclude=heads)
    check_fits(cfg, method, model, targets)
    workspace = Workspace(model, data.task, data.train, data.test, cfg.device, heads, targets)
    method.prepare_model(workspace)
    workspace.model.to(workspace.device)
    return workspace


def check_fits(cfg: ExperimentConfig, method, model: torch.nn.Module, targets: list[str]) -> None:
    """Settings the model cannot honour are one line each: a LoRA / GaLore rank above the smaller side
    of an adapted matrix (rank 1000 on a 32 x 32 matrix made fedsvd upload 15x fedit's bytes), and a
    max_length beyond the model's position embeddings (an index error deep in the first forward)."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and cfg.model.max_length > positions:
        raise ConfigError(
            f"field model.max_length: {cfg.model.max_length} > {positions}, the positions of {cfg.model.name}; lower it"
        )
    options = getattr(method, "options", None)
    ranks = [getattr(options, "rank", None), *(getattr(options, "client_ranks", None) or [])]
    ranks = [r for r in ranks if isinstance(r, int)]
    if not ranks or not targets:
        return
    modules = dict(model.named_modules())
    matrices = [t for t in targets if getattr(getattr(modules[t], "weight", None), "ndim", 0) == 2]
    if not matrices:  # e.g. a Conv2d target: the method's own refusal names it
        return
    side, name = min((min(modules[t].weight.shape), t) for t in matrices)
    if max(ranks) > side:
        raise ConfigError(
            f"method {method.name}: rank {max(ranks)} > {side}, the smaller side of the adapted matrix {name}; "
            f"lower rank (or client_ranks) to at most {side}"
        )


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
        dp=local_dp(cfg),
    )


def local_dp(cfg: ExperimentConfig) -> LocalDP | None:
    """privacy.dp local's client settings; the noise comes from the OS on Flower unless told otherwise."""
    dp = cfg.privacy.dp
    if dp.mode != "local":
        return None
    source = dp.noise_source if dp.noise_source != "auto" else ("os" if cfg.engine == "flower" else "run")
    return LocalDP(dp.clip_norm, dp.noise_multiplier, os_noise=source == "os")


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
