"""Experiment configuration: one YAML file, validated by a schema, overridable with `--set`.

In the style of torchtune's configs: every field has a default that runs, every error names the
field and the fix. Method-specific options are validated by the schema the method registers
(see `fedsub.core.registry`), when they are first read (`MethodSpec.options`, or
`check_method_options` right after loading): validating a config imports no method (nor torch).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedsub.core.registry import method_names, method_options, unknown_method
from fedsub.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    name: str = Field(
        "minilm",
        description="'minilm' (offline all-MiniLM-L6-v2), 'smollm2' (offline SmolLM2-135M-Instruct), "
        "'efficientnet_lite0', an HF id or a local HF folder",
    )
    max_length: int = Field(
        64,
        gt=0,
        le=32768,
        description="tokens per example; longer inputs are truncated (at most the model's positions)",
    )
    target_modules: list[str] = Field(
        default_factory=lambda: ["query", "key", "value", "dense"],
        description="module-name suffixes adapted by LoRA (or trained densely by full fine-tuning)",
    )
    head_modules: list[str] | None = Field(None, description="task head modules, trained densely; None = auto")
    tiny: bool = Field(False, description="random-init tiny copy of the architecture (tests)")


class DataConfig(Strict):
    dataset: str | None = Field(
        "wordnet_supersense",
        description="builtin name (wordnet_supersense, wordnet_instructions, wordnet_choice, fashion_mnist, digits), "
        "'hf:NAME' or a .csv/.jsonl/.parquet path; with source: nodes, the server's own test file, or null for none",
    )
    source: Literal["global", "nodes"] = Field(
        "global",
        description="global: one dataset partitioned over the clients (simulation, or Flower nodes slicing it by "
        "partition-id); nodes: every Flower node reads its own file (node config data=PATH)",
    )
    labels: list[str] | None = Field(
        None, description="source: nodes: the label space every node's file is coded against (class names, in order)"
    )
    text_column: str = "text"
    label_column: str = "label"
    num_classes: int | None = Field(None, gt=1, description="keep only the N largest classes")
    max_train_per_class: int | None = Field(None, gt=0)
    max_test_per_class: int | None = Field(None, gt=0)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    val_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of each class of the train set held out (seeded, before partitioning) as a validation split",
    )
    eval_split: Literal["test", "val"] = Field(
        "test",
        description="what the global model is evaluated on: test, or val to choose hyper-parameters (needs "
        "val_fraction > 0)",
    )

    @model_validator(mode="after")
    def _val_exists(self) -> "DataConfig":
        if self.eval_split == "val" and self.val_fraction == 0:
            raise ValueError("eval_split 'val' needs a validation split: set data.val_fraction (e.g. 0.1)")
        if self.source == "global" and self.dataset is None:
            raise ValueError("data.dataset: give the dataset to partition (or data.source: nodes)")
        if self.source == "nodes":
            if not self.labels or len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
                raise ValueError(
                    "data.labels: data.source nodes needs the label space every node's file uses: 2 or more "
                    "distinct class names, e.g. [animal, artifact, feeling]"
                )
            if self.num_classes or self.max_train_per_class or self.val_fraction:
                raise ValueError(
                    "data.source: nodes reads each node's file whole; num_classes, max_train_per_class and "
                    "val_fraction apply to a global dataset only"
                )
        return self


class PartitionConfig(Strict):
    scheme: Literal["iid", "dirichlet", "shards", "quantity"] = "dirichlet"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (dirichlet, quantity)")
    min_partition_size: int = Field(2, ge=0, description="every client gets at least this many examples")
    min_size_policy: Literal["auto", "redraw", "top_up"] = Field(
        "auto",
        description="dirichlet, quantity: how min_partition_size is met: redraw (draw again, up to 100 / 1,000 "
        "times), top_up (keep the first draw, move rows from the largest clients), auto (redraw, then top_up)",
    )
    classes_per_client: int = Field(2, gt=0, description="shards: label classes per client")
    by: str | None = Field(None, description="column to partition over; default: the label column")


class FederationConfig(Strict):
    num_clients: int = Field(8, gt=0)
    clients_per_round: int = Field(8, gt=0)
    rounds: int = Field(10, gt=0)
    eval_every: int = Field(1, gt=0, description="evaluate the global model every k rounds (and the last)")

    @model_validator(mode="after")
    def _clients_fit(self) -> "FederationConfig":
        if self.clients_per_round > self.num_clients:
            raise ValueError(
                f"clients_per_round ({self.clients_per_round}) exceeds num_clients ({self.num_clients}); lower it"
            )
        return self


class TrainConfig(Strict):
    local_steps: int | None = Field(10, gt=0, description="optimizer steps per client per round")
    local_epochs: float | None = Field(None, gt=0, description="instead of local_steps: passes over the client data")
    batch_size: int = Field(16, gt=0)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    eval_batch_size: int = Field(128, gt=0)
    max_grad_norm: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_budget(self) -> "TrainConfig":
        if self.local_epochs is not None:
            self.__dict__["local_steps"] = None  # epochs win; avoid re-validating in a loop
        elif self.local_steps is None:
            raise ValueError("set local_steps or local_epochs")
        return self


class FailureConfig(Strict):
    """Simulated client faults and the round's quorum (engines/failures.py)."""

    dropout_prob: float = Field(0.0, ge=0, le=1, description="probability a sampled client drops out (never answers)")
    straggler_prob: float = Field(
        0.0, ge=0, le=1, description="probability a sampled client answers after the deadline"
    )
    deadline_s: float | None = Field(
        None, gt=0, description="wall-clock seconds of local training after which an update is too late"
    )
    poisoned: list[int] = Field(
        default_factory=list,
        description="simulated attack: these clients' replies carry their change x poison_scale (benchmarks, tests)",
    )
    poison_scale: float = Field(1e6, description="poisoned: the factor on the change a poisoned client sends")
    min_clients: int = Field(
        1, ge=1, description="fewer usable updates than this: the round is skipped (global model unchanged)"
    )


class ValidationConfig(Strict):
    """Server-side checks of every update (core/validation.py).

    Names, shapes, dtypes and finiteness are always checked.
    """

    max_norm: float | None = Field(
        None, gt=0, description="reject an update whose change of any tensor has a larger L2 norm"
    )
    max_norm_relative: float | None = Field(
        10.0,
        gt=1,
        description="reject an update whose change norm exceeds this multiple of the round's median change norm "
        "(3 or more updates; null turns it off)",
    )
    max_examples: int = Field(
        10_000_000,
        gt=0,
        description="data.source nodes: the most training rows a node may report (its FedAvg weight); a global "
        "partition's sizes are known to the server",
    )


# Which robust rules (core/robust.py) each method can take: median and trimmed_mean stand one robust
# update in for the round, exact only where the method's aggregate is the weighted mean of its uploads;
# norm_clip clips each client's change and keeps them all. The others need every client's own update
# in their server maths (FLoRA stacks factors; FlexLoRA, FedSVD and SVD redistribution take an SVD of
# the sum of products; Subspace-Reg orthonormalises B; FedGaLore syncs V across clients through AJIVE),
# so they refuse every rule but mean.
_MEAN_OF_UPLOADS = ("fedit", "ffa_lora", "fedavg_full", "fedsa_lora", "fedftg")
ROBUST_RULES: dict[str, tuple[str, ...]] = {
    name: ("median", "trimmed_mean", "norm_clip", "krum", "multi_krum") for name in _MEAN_OF_UPLOADS
}


# FedSVD's server averages the uploaded B and then takes an SVD of mean(B) A: the noisy mean goes in
# before the SVD, which is post-processing (tested against plain FedSVD without noise)
# FlexLoRA, svd_redistribute and Subspace-Reg take an SVD of the sum of B_k A_k: the noise goes into that
# sum, before the SVD (fedsub.lora.private)
DP_PRODUCTS = ("flexlora", "svd_redistribute", "subspace_reg")
DP_SERVES = (*_MEAN_OF_UPLOADS, "fedsvd", *DP_PRODUCTS)
# why the other methods refuse privacy.dp (one line each, in the refusal)
DP_REFUSALS = {
    "flora": "FLoRA stacks each client's factors, so the server needs every one, not their (noisy) sum",
    "fedgalore": "its server syncs every client's own V through AJIVE (not a sum)",
}


# why secure aggregation refuses a method beyond DP's reasons (one line each, in the refusal)
SECAGG_REFUSALS = {
    "fedsvd": "it sends A and sums only B: the secure sum of a subset of what was sent is not built",
    "flexlora": "its server sums the products B_k A_k, not the uploads: a secure sum of products is not built",
    "svd_redistribute": "its server sums the products B_k A_k, not the uploads: a secure sum of products is not built",
    "subspace_reg": "its server sums the products B_k A_k, not the uploads: a secure sum of products is not built",
    "fedgalore": "its server syncs every client's own V through AJIVE and refreshes projectors from their "
    "sketches (not one sum)",
}


def refuse_unserved(methods, serves, what: str, reasons: dict[str, str], fix: str = "") -> None:
    """One line for the first method `what` (the field and its mechanism) cannot serve: the method's
    own reason (default: its server needs every client's update) and the methods it does serve."""
    for spec in methods:
        if spec.name not in serves:
            reason = reasons.get(spec.name, "its server needs every client's own update")
            raise ValueError(
                f"{what} cannot serve method {spec.key}: {reason}; it serves {', '.join(serves)}"
                + (f"; {fix}" if fix else "")
            )


class AggregationConfig(Strict):
    """How the round's accepted updates are combined before the method aggregates (core/robust.py)."""

    rule: Literal["mean", "median", "trimmed_mean", "norm_clip", "krum", "multi_krum"] = Field(
        "mean",
        description="mean (each method's own), median, trimmed_mean, norm_clip, krum, multi_krum (README, "
        "'Robust aggregation')",
    )
    trim: float = Field(0.1, ge=0, lt=0.5, description="trimmed_mean: the share dropped at each end per coordinate")
    clip_norm: float | None = Field(None, gt=0, description="norm_clip: a fixed bound on each client's change norm")
    clip_quantile: float = Field(
        0.5, gt=0, le=1, description="norm_clip without clip_norm: the bound is this quantile of the round's norms"
    )
    krum_f: int = Field(1, ge=0, description="krum / multi_krum: attackers tolerated (needs n > 2f + 2 updates)")
    multi_krum_keep: int | None = Field(None, gt=0, description="multi_krum: updates kept and averaged (default n - f)")


class DPConfig(Strict):
    """Client-level differential privacy (core/privacy.py; README, "Differential privacy")."""

    mode: Literal["off", "central", "local"] = Field(
        "off",
        description="central: DP-FedAvg (clip each client's change, Gaussian noise on the sum); local: DP-SGD on "
        "every client (clip each example's gradient, noise on the batch's sum); off",
    )
    clip_norm: float = Field(
        1.0,
        gt=0,
        description="C: central: each client's change is clipped to this L2 norm (adaptive: start); "
        "local: each example's gradient",
    )
    noise_multiplier: float = Field(
        1.0, gt=0, description="z: the noise's std is z x C on the sum of clipped changes (local: gradients)"
    )
    noise_source: Literal["auto", "run", "os"] = Field(
        "auto",
        description="local: run = seeded by the run (reproducible), os = OS entropy (the server cannot regenerate "
        "it); auto = run in the simulator, os on Flower",
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="epsilon is reported at this delta")
    adaptive: bool = Field(False, description="C follows target_quantile of the change norms (Andrew et al. 2021)")
    target_quantile: float = Field(0.5, gt=0, lt=1, description="adaptive: the share of clients meant to be within C")
    clip_lr: float = Field(0.2, gt=0, description="adaptive: eta, the step of log C per round")

    @field_validator("mode", mode="before")
    @classmethod
    def _off_is_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false


class SecAggConfig(Strict):
    """Secure aggregation on Flower: Flower's SecAgg+ protocol (engines/flower/secagg.py; README,
    "Secure aggregation")."""

    mode: Literal["off", "secaggplus"] = Field(
        "off", description="secaggplus: the server learns only the sum of the clients' changes (engine: flower)"
    )
    num_shares: float = Field(
        1.0,
        gt=0,
        description="each client's secrets go to this many clients (a float <= 1: that share of the "
        "round's clients; 1.0 = all, SecAgg's full graph)",
    )
    reconstruction_threshold: float = Field(
        0.67, gt=0, description="shares needed to rebuild a secret (a float <= 1: that share of num_shares)"
    )
    clipping_range: float = Field(
        1.0, gt=0, description="each coordinate of (weight x change) is clipped to +-this before quantisation"
    )
    quantization_range: int = Field(2**22, gt=1, description="integers each clipped coordinate is quantised into")
    modulus_range: int = Field(2**32, gt=1, description="the masks' modulus (a power of 2 above quantization_range)")
    max_weight: float | None = Field(
        None, gt=0, description="the weight a client's rows are divided by; None = the largest client's rows"
    )


class PrivacyConfig(Strict):
    dp: DPConfig = DPConfig()
    secagg: SecAggConfig = SecAggConfig()


class CheckpointConfig(Strict):
    every: int = Field(1, ge=0, description="checkpoint every k rounds (and after the last); 0 = never")
    keep: bool = Field(False, description="keep a method's checkpoint after it finishes")


class ClientsConfig(Strict):
    """How the simulator keeps its clients' states (engines/client_store.py)."""

    state_memory_mb: float = Field(
        256,
        gt=0,
        description="client states held in memory (most recently used first); the rest are spilled to "
        "<run>/client_states and loaded when their client is sampled",
    )


class FederatedEvalConfig(Strict):
    """Each client evaluates the global model (a personalised method: its own model) on its own
    held-out data; the server logs every client's metrics and their weighted aggregate (README,
    "Federated evaluation")."""

    enabled: bool = Field(False, description="evaluate on the clients' own data every evaluated round")
    clients: Literal["sampled", "all"] = Field("sampled", description="the round's sampled clients, or every client")
    data: Literal["test_partition", "holdout"] = Field(
        "test_partition",
        description="test_partition: the test set split over the clients following their train label mix; "
        "holdout: a share of each client's own train rows, held out of its training",
    )
    holdout_fraction: float = Field(0.2, gt=0, lt=1, description="holdout: the share of each client's rows held out")


class FlowerConfig(Strict):
    """`engine: flower`: where the run goes and how long a round may wait (see README, "Flower")."""

    superlink: str | None = Field(
        None,
        description="SuperLink address host:port to submit to (flower-superlink --host/--port); None = the in-process "
        "grid",
    )
    insecure: bool = Field(False, description="plain HTTP to the SuperLink, no TLS (local tests only)")
    root_certificates: str | None = Field(
        None, description="CA certificate (PEM) the SuperLink's TLS certificate is signed by"
    )
    round_timeout: float = Field(
        600.0, gt=0, description="seconds a round waits for replies; a dead client costs at most this"
    )
    startup_timeout: float = Field(
        120.0, ge=0, description="seconds the server waits for num_clients SuperNodes before round 1"
    )
    run_timeout: float | None = Field(
        None, gt=0, description="seconds `fedsub run` follows a submitted run before stopping it; None = no limit"
    )

    @field_validator("superlink")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        host, _, port = (value or "").rpartition(":")
        if value is not None and not (host and port.isdigit()):
            raise ValueError(f"{value!r} is not host:port; give the SuperLink's address, e.g. 127.0.0.1:9091")
        return value


TaskKind = Literal["classification", "generation", "multiple_choice", "image_classification"]


class TaskConfig(Strict):
    """What is learned and how it is scored (see fedsub.tasks); the options of other kinds are ignored."""

    kind: TaskKind = Field(
        "classification", description="classification | generation | multiple_choice | image_classification"
    )
    max_new_tokens: int = Field(32, gt=0, description="generation: greedy tokens generated per held-out prompt")
    eval_generate: int | None = Field(
        64, gt=0, description="generation: held-out prompts generated per evaluation (None = all)"
    )
    response_column: str = Field(
        "response", description="generation: column of the target text (data.text_column: the instruction)"
    )
    choices_column: str = Field(
        "choices", description="multiple_choice: column of the endings (a list, or one string joined by \\x1f)"
    )
    image_size: int | None = Field(
        None, gt=7, description="image_classification: resize images to this side; None = the model's own"
    )


class MethodSpec(Strict):
    """One method of the run: its registered name, optional train overrides, and its own options
    (every other key of the entry, kept as given until `options` reads them)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    name: str
    label: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.+-]+$",
        description="results name (default: the method name); lets variants of one method share a run",
    )
    lr: float | None = Field(None, gt=0, description="overrides train.lr for this method")

    @field_validator("name")
    @classmethod
    def _known_method(cls, name: str) -> str:
        if name not in method_names():  # the registry's names: no method is imported for this
            raise ValueError(unknown_method(name))
        return name

    @property
    def key(self) -> str:
        """Its name in results and run directories: the label, else the method name."""
        return self.label or self.name

    @property
    def options(self) -> BaseModel:
        """The method's own options, validated by the schema it registered (this imports the method's
        module, and only it); ConfigError naming the field (methods[fedit].rank) if they are wrong.
        A new object on each read: change an option on the spec (spec.rank = 4), not on the result."""
        try:
            return method_options(self.name).model_validate(self.model_extra or {})
        except ValidationError as err:
            raise ConfigError(describe_error(err, self.model_extra or {}, within=f"methods[{self.name}]")) from None


class ExperimentConfig(Strict):
    name: str = "experiment"
    seed: int = 0
    device: str = Field("cpu", description="cpu, cuda or cuda:N")
    dtype: Literal["float32", "bfloat16"] = "float32"
    engine: Literal["simulation", "flower"] = Field(
        "simulation",
        description="simulation: one process; flower: Flower ServerApp/ClientApps (pip install 'fedsub[flower]')",
    )
    flower: FlowerConfig = FlowerConfig()
    task: TaskConfig = TaskConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    partition: PartitionConfig = PartitionConfig()
    federation: FederationConfig = FederationConfig()
    train: TrainConfig = TrainConfig()
    failures: FailureConfig = FailureConfig()
    validation: ValidationConfig = ValidationConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    clients: ClientsConfig = ClientsConfig()
    federated_eval: FederatedEvalConfig = FederatedEvalConfig()
    aggregation: AggregationConfig = AggregationConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    methods: list[MethodSpec] = Field(default_factory=lambda: [MethodSpec(name="fedit")], min_length=1)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", value):
            raise ValueError(f"{value!r} is not cpu, cuda or cuda:N")
        return value

    @field_validator("methods", mode="before")
    @classmethod
    def _names_as_specs(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _unique_methods(self) -> "ExperimentConfig":
        keys = [m.key for m in self.methods]
        if len(set(keys)) != len(keys):
            raise ValueError(f"methods: each method once per run (give variants a distinct label), got {keys}")
        if self.failures.min_clients > self.federation.clients_per_round:
            raise ValueError(
                f"failures.min_clients ({self.failures.min_clients}) exceeds federation.clients_per_round"
                f" ({self.federation.clients_per_round}); no round could aggregate, lower it"
            )
        return self

    @model_validator(mode="after")
    def _robust_rule_fits(self) -> "ExperimentConfig":
        rule = self.aggregation.rule
        if rule != "mean":
            serves = [name for name, rules in ROBUST_RULES.items() if rule in rules]
            refuse_unserved(self.methods, serves, f"aggregation.rule: {rule}", {}, "use rule: mean for it")
        bad = [c for c in self.failures.poisoned if not 0 <= c < self.federation.num_clients]
        if bad:
            raise ValueError(f"failures.poisoned: client {bad[0]} is not one of the {self.federation.num_clients}")
        return self

    @model_validator(mode="after")
    def _dp_fits(self) -> "ExperimentConfig":
        if self.privacy.dp.mode == "off":
            return self
        if self.privacy.dp.mode == "local":
            return self._local_dp_fits()
        refuse_unserved(self.methods, DP_SERVES, "privacy.dp: central DP", DP_REFUSALS)
        if self.aggregation.rule != "mean":
            raise ValueError(
                f"privacy.dp: central DP with aggregation.rule {self.aggregation.rule}; the noisy clipped mean is "
                f"already bounded per client, use rule: mean"
            )
        dp, m = self.privacy.dp, self.federation.clients_per_round
        if dp.adaptive and dp.noise_multiplier >= m / 10:  # the count's noise m / 20 must leave the sum some
            raise ValueError(
                f"privacy.dp.noise_multiplier: {dp.noise_multiplier:g} is too large for adaptive clipping with "
                f"{m} clients per round (needs < {m / 10:.3g}: the clipping count's own noise spends the rest); "
                f"lower it, raise clients_per_round, or set privacy.dp.adaptive: false"
            )
        return self

    def _local_dp_fits(self) -> "ExperimentConfig":
        """DP-SGD serves every method (what a client uploads is computed from its noisy gradients), but
        not what would read raw gradients or clip them twice."""
        dp = self.privacy.dp
        if dp.adaptive:
            raise ValueError("privacy.dp.adaptive: adaptive clipping is for mode central (local clips examples at C)")
        if self.train.max_grad_norm is not None:
            raise ValueError(
                "train.max_grad_norm: under privacy.dp local each example's gradient is clipped at clip_norm; "
                "remove train.max_grad_norm"
            )
        for spec in self.methods:
            options = spec.options
            if getattr(options, "warmup_batches", 0) and getattr(options, "proj_source", "random") != "random":
                raise ValueError(
                    f"privacy.dp: local DP cannot serve method {spec.key} with warmup_batches "
                    f"{options.warmup_batches}: its warm-up sketch reads raw gradients outside DP-SGD; "
                    f"set methods.{spec.key}.warmup_batches: 0"
                )
        return self

    @model_validator(mode="after")
    def _secagg_fits(self) -> "ExperimentConfig":
        sa = self.privacy.secagg
        if sa.mode == "off":
            return self
        if self.engine != "flower":
            raise ValueError(
                "privacy.secagg: secure aggregation runs on engine: flower (the simulator holds every update)"
            )
        refuse_unserved(
            self.methods, _MEAN_OF_UPLOADS, "privacy.secagg: secure aggregation", {**DP_REFUSALS, **SECAGG_REFUSALS}
        )
        if self.aggregation.rule != "mean":
            raise ValueError(
                f"privacy.secagg: aggregation.rule {self.aggregation.rule} needs each client's update, which secure "
                f"aggregation hides from the server; use rule: mean"
            )
        if self.privacy.dp.mode == "central":
            raise ValueError(
                "privacy.secagg: central DP clips each client's change at the server, which secure aggregation hides; "
                "use privacy.dp.mode local (DP-SGD on the clients) with it"
            )
        if self.failures.deadline_s is not None or self.failures.straggler_prob:
            raise ValueError(
                "failures.deadline_s: a secure round waits for each of its four stages up to flower.round_timeout; "
                "a per-client deadline (and simulated stragglers) needs each reply on its own; remove them"
            )
        if self.failures.poisoned:
            raise ValueError(
                "failures.poisoned: the attack is simulated on the server's copy of each update, which secure "
                "aggregation hides; remove it or privacy.secagg"
            )
        if self.federation.clients_per_round < 2:
            raise ValueError(
                "privacy.secagg: a sum over one client is that client's update; set clients_per_round >= 2"
            )
        if sa.modulus_range <= sa.quantization_range or sa.modulus_range & (sa.modulus_range - 1):
            raise ValueError("privacy.secagg.modulus_range: must be a power of 2 above quantization_range")
        if sa.modulus_range > 2**32:
            raise ValueError("privacy.secagg.modulus_range: Flower's SecAgg+ needs it at most 2**32")
        if sa.num_shares > 1 and (sa.num_shares != int(sa.num_shares) or sa.num_shares < 3):
            raise ValueError("privacy.secagg.num_shares: a share of the clients (<= 1.0) or a whole number >= 3")
        if sa.reconstruction_threshold > 1 and sa.reconstruction_threshold != int(sa.reconstruction_threshold):
            raise ValueError("privacy.secagg.reconstruction_threshold: a share (<= 1.0) or a whole number")
        return self

    @model_validator(mode="after")
    def _nodes_bring_their_data(self) -> "ExperimentConfig":
        if self.data.source != "nodes":
            return self
        if self.engine != "flower":
            raise ValueError("data.source: nodes needs engine: flower (each node reads its own file)")
        if self.task.kind != "classification":
            raise ValueError(f"data.source: nodes supports task.kind classification, not {self.task.kind}")
        if self.data.dataset is None and not self.federated_eval.enabled:
            raise ValueError(
                "data.dataset: with data.source nodes and no server test file, nothing evaluates the model; "
                "set federated_eval.enabled: true or give data.dataset"
            )
        return self

    @model_validator(mode="after")
    def _flower_fits(self) -> "ExperimentConfig":
        fl = self.flower
        if fl.insecure and fl.root_certificates:
            raise ValueError(
                "flower.insecure: true with flower.root_certificates set; choose one (TLS with the CA certificate, "
                "or insecure for local tests), as Flower's own CLI does"
            )
        if fl.superlink and not fl.insecure and not fl.root_certificates:
            raise ValueError(
                "flower.root_certificates: a SuperLink over TLS needs the CA certificate; set it, or "
                "flower.insecure=true for local tests"
            )
        return self


# ---------------------------------------------------------------- loading and overrides


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """Read YAML, apply `key=value` overrides, validate. Raises ConfigError with a one-line message."""
    raw = read_yaml(Path(path))
    for item in overrides:
        apply_override(raw, item)
    return validate_config(raw, source=str(path))


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass the path of a YAML file (see configs/)")
    try:
        raw = yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except DuplicateKey as err:
        raise ConfigError(f"config file {path} line {err.line}: key {err.key!r} given twice; keep one") from None
    except (UnicodeDecodeError, OSError) as err:
        raise ConfigError(
            f"config file {path}: cannot read it as UTF-8 text ({type(err).__name__}); is it a YAML file?"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


class DuplicateKey(Exception):
    def __init__(self, key: Any, line: int):
        self.key, self.line = key, line


class UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error: YAML keeps the last
    silently, so a config with `lr:` twice trained with whichever came second."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply `a.b.c=value` (value parsed as YAML) to the nested dict; list elements by index."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.lr=1e-4")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    *parents, leaf = key.split(".")
    node: Any = raw
    for part in parents:
        node = _child(node, part, key)
    if isinstance(node, list):
        node[_index(node, leaf, key)] = value
    else:
        node[leaf] = value


def _child(node: Any, part: str, key: str) -> Any:
    if isinstance(node, dict) and part == "methods" and isinstance(node.get(part), str):
        # `--set methods=fedit,ffa_lora --set methods.0.rank=4`: the names become a list to index
        node[part] = [{"name": n.strip()} for n in node[part].split(",") if n.strip()]
    if isinstance(node, list):
        child = node[_index(node, part, key)]
        if isinstance(child, str):  # a method given by name only
            child = node[_index(node, part, key)] = {"name": child}
        return child
    if not isinstance(node, dict):
        raise ConfigError(f"--set {key}: {part!r} is inside a value, not a section")
    child = node.setdefault(part, {})
    if not isinstance(child, (dict, list)):
        raise ConfigError(f"--set {key}: {part!r} is a value ({child!r}), not a section; set {part} itself")
    return child


def _index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {key}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def validate_config(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """The config's schema, methods' own options aside (see `check_method_options`)."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{source}: {describe_error(err, raw)}") from None


def check_method_options(cfg: ExperimentConfig, source: str = "config") -> ExperimentConfig:
    """Validate every method's own options now (importing those methods' modules, no others): what
    `fedsub run` does right after loading, so a bad option fails in one line before any data is read."""
    for spec in cfg.methods:
        try:
            spec.options
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
    return cfg


def describe_error(err: ValidationError, raw: dict[str, Any], within: str = "") -> str:
    """The first validation error as 'field a.b: reason' (+ how many more); `within` prefixes the
    path of an error in a part of the config (a method's options: methods[fedit])."""
    first = err.errors()[0]
    path = ".".join([within, *(str(p) for p in first["loc"])] if within else [str(p) for p in first["loc"]])
    path = _method_path(path, raw)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key; check the spelling (fedsub methods lists each method's options)"
    more = len(err.errors()) - 1
    suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    # a cross-field check (a model validator) has no path of its own: its message starts with the field
    return f"field {path}: {message}{suffix}" if path else f"{message}{suffix}"


def _method_path(path: str, raw: dict[str, Any]) -> str:
    """Name a method entry by its name rather than its index: methods.1 -> methods[fedit]."""
    parts = path.split(".")
    if len(parts) >= 2 and parts[0] == "methods" and parts[1].isdigit():
        entries = raw.get("methods") or []
        entry = entries[int(parts[1])] if isinstance(entries, list) and int(parts[1]) < len(entries) else None
        name = entry if isinstance(entry, str) else (entry or {}).get("name") if isinstance(entry, dict) else None
        if name:
            parts[:2] = [f"methods[{name}]"]
    return ".".join(parts)


def config_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The resolved config as plain data (method options included), for the run directory."""
    data = cfg.model_dump(mode="json")
    data["methods"] = [method_to_dict(m) for m in cfg.methods]
    return data


def method_to_dict(spec: MethodSpec) -> dict[str, Any]:
    data = {"name": spec.name, **({"label": spec.label} if spec.label else {}), "lr": spec.lr}
    data.update(spec.options.model_dump(mode="json"))
    return data
