"""The one round loop every engine drives: the server side of a method's run, written once.

sample -> warm-up (if the method asks) -> configure -> exchange -> screen -> aggregate -> evaluate ->
checkpoint -> log. An engine supplies only `Clients`: how a round's payloads reach the clients and
their replies come back (function calls on one shared model in the simulator, Messages to ClientApps
under Flower). Client sampling, simulated faults and each client's seed are pure functions of
(seed, round, client), and a checkpoint holds everything else the server carries (state, records,
RNGs, and references to the client states the engine holds), so a run resumed from its checkpoint writes the
metrics.jsonl of a run never interrupted, on either engine.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from fedsub.config import (
    AggregationConfig,
    ExperimentConfig,
    MethodSpec,
    PrivacyConfig,
    config_to_dict,
    method_to_dict,
)
from fedsub.core import robust
from fedsub.core.checkpoint import (
    Checkpoint,
    load_checkpoint,
    partition_digest,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from fedsub.core.io import atomic_write_text
from fedsub.core.method import Warmup
from fedsub.core.tensors import normalized_weights
from fedsub.core.types import ClientUpdate, Payload, ServerState, Tensors
from fedsub.core.validation import payload_bytes
from fedsub.engines import fed_eval
from fedsub.engines.failures import ClientOutcome, screen_outcomes, simulated_fault, skip_reason
from fedsub.engines.privacy import RoundPrivacy
from fedsub.engines.setup import FederatedData, MethodSetup, peak_rss_mb, sample_clients
from fedsub.errors import CheckpointError
from fedsub.tasks.base import Task

TIMING_KEYS = (
    "seconds_train",
    "seconds_train_max",
    "seconds_fed_eval",
    "seconds_aggregate",
    "seconds_eval",
    "seconds_round",
    "peak_rss_mb",
    "seconds_warmup",
)
TRAIN, WARMUP = "train", "train.warmup"  # the kinds of exchange (Flower's message types)

RoundFn = Callable[[int, Callable[[], None] | None], dict]


@dataclass
class Exchange:
    """One exchange of a round: what each reachable client is sent, and the fault simulated for it."""

    round: int
    kind: str  # TRAIN or WARMUP
    payloads: dict[int, Payload]
    faults: dict[int, str | None]
    server_tensors: Tensors | None = None  # the server's global tensors, for in-process clients (ClientContext)


@dataclass
class ClientStates:
    """The clients' part of a checkpoint: the files of the states the engine holds (the simulator's
    store, engines/client_store.py), states held inline (checkpoints of format 1), and the clients
    whose state stays on their own nodes (Flower's context.state), which it cannot hold."""

    files: dict[int, dict[str, Any]] = field(default_factory=dict)
    held: dict[int, dict[str, Any]] = field(default_factory=dict)
    on_nodes: list[int] = field(default_factory=list)


class Clients(Protocol):
    """The engine's part of a round: reaching the clients. Everything else is the RoundLoop's."""

    def connect(self) -> None:
        """Before the first round (Flower: wait for the nodes, learn which partition each holds)."""

    def unreachable(self, clients: list[int]) -> dict[int, str]:
        """The sampled clients that cannot be sent anything this round, each with the reason."""

    def exchange(self, exchange: Exchange, on_client: Callable[[], None] | None = None) -> dict[int, ClientOutcome]:
        """Deliver every payload, collect the replies: one outcome per payload (an update, or why none)."""

    def saved_states(self) -> ClientStates:
        """What a checkpoint keeps of the clients (the simulator writes the states that changed here)."""

    def checkpoint_written(self, saved: ClientStates) -> None:
        """The checkpoint holding `saved` is committed (the simulator may now delete older state files)."""

    def restore_states(self, saved: ClientStates, where: Path) -> None:
        """Put the clients back as `saved` says; CheckpointError (naming `where`) if they cannot be."""


class RoundLoop:
    """The server of one method's run: its state, its records, its checkpoint, whatever the engine.

    `run(clients)` appends one JSON line per round to `<out_dir>/metrics.jsonl`. With `resume`, it
    continues from the checkpoint in `<out_dir>/checkpoint` (if any): state, client states, RNGs and
    the records so far come from there, metrics.jsonl is rewritten from those records (dropping lines
    of rounds after the checkpoint) and the remaining rounds run.
    """

    def __init__(self, cfg: ExperimentConfig, spec: MethodSpec, data: FederatedData, setup: MethodSetup, out_dir: Path):
        self.cfg, self.spec, self.data, self.out_dir = cfg, spec, data, out_dir
        self.method, self.workspace = setup.method, setup.workspace
        self.state: ServerState = self.method.init(self.workspace)
        self.checkpoint_dir = out_dir / "checkpoint"
        self.partition_sha256 = partition_digest(data.parts)  # the run's partition never changes
        self.privacy = RoundPrivacy(cfg, spec, data, setup.settings)  # privacy.dp / privacy.secagg's parts

    def run(self, clients: Clients, on_round: Callable[[dict], None] | None = None,
            on_client: Callable[[], None] | None = None,
            resume: bool = False, play_round: RoundFn | None = None) -> list[dict]:  # fmt: skip
        """All rounds left. `play_round(index, on_client)` plays one (default: `run_round` with
        `clients`); the simulator passes its own method, so a test can interrupt it at any round."""
        play_round = play_round or (lambda index, progress: self.run_round(clients, index, progress))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        records = self.restore(clients) if resume else []  # before connecting: a refusal needs no nodes
        metrics = self.out_dir / "metrics.jsonl"
        atomic_write_text(metrics, "".join(json.dumps(r) + "\n" for r in records))
        clients.connect()
        with open(metrics, "a") as log:
            for round_index in range(len(records), self.cfg.federation.rounds):
                record = play_round(round_index, on_client)
                records.append(record)
                self.maybe_checkpoint(
                    clients, round_index, records
                )  # before the log line: a kill between the two loses nothing
                log.write(json.dumps(record) + "\n")
                log.flush()
                if on_round:
                    on_round(record)
        return records

    def run_round(self, clients: Clients, round_index: int, on_client: Callable[[], None] | None = None) -> dict:
        fed = self.cfg.federation
        start = time.perf_counter()
        sampled = sample_clients(self.cfg.seed, round_index, fed.num_clients, fed.clients_per_round)
        away = clients.unreachable(sampled)
        warmup = self.warmup(clients, round_index, sampled, away)
        sent = {c: self.method.configure_train(self.state, c) for c in sampled if c not in away}
        secure = None
        if self.cfg.privacy.secagg.mode != "off":  # the server gets the mean change, never an update
            outcomes, secure = self.secure_exchange(clients, round_index, sent, sampled, away)
        else:
            outcomes = self.poison(self.exchange(clients, round_index, TRAIN, sent, sampled, away, on_client), sent)
        record = self.finish_round(round_index, start, sampled, outcomes, sent, warmup, secure)
        if self.cfg.federated_eval.enabled:
            tic = time.perf_counter()
            record.update(self.federated_evaluate(clients, round_index, sampled))
            record["seconds_fed_eval"] = time.perf_counter() - tic
            record["seconds_round"] = time.perf_counter() - start
        return record

    def federated_evaluate(self, clients: Clients, round_index: int, sampled: list[int]) -> dict:
        """Each evaluating client scores the global (or its personalised) model on its own rows
        (engines/fed_eval.py); on a round without evaluation, the same fields, null."""
        if not self.evaluates(round_index):
            return fed_eval.empty(self.data.task)
        fe = self.cfg.federated_eval
        candidates = sampled if fe.clients == "sampled" else list(range(self.cfg.federation.num_clients))
        asked = fed_eval.evaluating_clients(self.data, candidates)
        away = clients.unreachable(asked)
        payload = Payload(dict(self.state.tensors))  # what every method's load_global writes
        sent = {c: payload for c in asked if c not in away}
        replies = clients.exchange(
            Exchange(round_index, fed_eval.EVALUATE, sent, dict.fromkeys(sent), self.state.tensors)
        )
        outcomes = [replies[c] if c in replies else ClientOutcome(c, None, away[c]) for c in asked]
        return {**fed_eval.summarize(outcomes, self.data), "bytes_down_eval": payload.nbytes() * len(sent)}

    def exchange(self, clients: Clients, round_index: int, kind: str, sent: dict[int, Payload], sampled: list[int],
                 away: dict[int, str], on_client: Callable[[], None] | None = None) -> list[ClientOutcome]:  # fmt: skip
        """Send `sent` with the configured simulated faults; one outcome per client of `sampled`, in
        that order (an unreachable client's says why)."""
        faults = {c: simulated_fault(self.cfg.failures, self.cfg.seed, round_index, c) for c in sent}
        replies = clients.exchange(Exchange(round_index, kind, sent, faults, self.state.tensors), on_client)
        return [replies[c] if c in replies else ClientOutcome(c, None, away[c]) for c in sampled]

    def secure_exchange(self, clients: Clients, round_index: int, sent: dict[int, Payload], sampled: list[int],
                        away: dict[int, str]) -> tuple[list[ClientOutcome], Any]:  # fmt: skip
        """exchange's twin under privacy.secagg (engine flower only): the outcomes carry example counts
        and metrics, the second value the protocol's mean change (engines/flower/secagg.SecureRound)."""
        faults = {c: simulated_fault(self.cfg.failures, self.cfg.seed, round_index, c) for c in sent}
        replies, secure = clients.secure_exchange(Exchange(round_index, TRAIN, sent, faults, self.state.tensors))
        return [replies[c] if c in replies else ClientOutcome(c, None, away[c]) for c in sampled], secure

    def warmup(
        self, clients: Clients, round_index: int, sampled: list[int], away: dict[int, str] | None = None
    ) -> dict | None:
        """The method's warm-up exchange before this round's training, if it declares one and asks."""
        exchange = self.method.warmup
        if exchange is None:
            return None
        away = away or {}
        asked = {c: p for c in sampled if (p := exchange.configure(self.state, c)) is not None}
        if not asked:
            return None
        sent = {c: p for c, p in asked.items() if c not in away}
        outcomes = self.exchange(clients, round_index, WARMUP, sent, list(asked), away)
        return self.finish_warmup(exchange, outcomes, sent)

    def finish_warmup(self, exchange: Warmup, outcomes: list[ClientOutcome], sent: dict[int, Payload]) -> dict:
        """Screen and aggregate the warm-up replies; what the round's record adds."""
        tic = time.perf_counter()
        expected = partial(exchange.update_spec, self.state)
        accepted, dropped, rejected = screen_outcomes(
            outcomes, sent, expected, None, self.data.train_size
        )  # a sketch is no change: no max_norm
        self.state, metrics = exchange.aggregate(self.state, accepted)
        return {
            "bytes_up": sum(payload_bytes(o.update.payload) for o in outcomes if o.update is not None),
            "bytes_down": sum(p.nbytes() for p in sent.values()),
            "dropped": [{**d, "reason": f"warm-up: {d['reason']}"} for d in dropped],
            "rejected": [{**r, "reason": f"warm-up: {r['reason']}"} for r in rejected],
            "metrics": metrics,
            "seconds": sum(o.seconds for o in outcomes) + time.perf_counter() - tic,
        }

    def finish_round(self, round_index: int, start: float, clients: list[int], outcomes: list[ClientOutcome],
                     sent: dict[int, Payload], warmup: dict | None = None, secure=None) -> dict:  # fmt: skip
        """Screen the replies, aggregate (unless too few are left), evaluate, and build the round's
        record. A warm-up's bytes, failures and metrics are added to the round's. `secure`: the round
        went through secure aggregation, whose mean change is all there is to aggregate."""
        expected = partial(self.method.update_spec, self.state)
        v, dp = self.cfg.validation, self.cfg.privacy.dp
        # under DP the clip bounds every client's influence; a data-dependent screen would break the accounting
        relative = None if dp.mode == "central" else v.max_norm_relative
        if secure is None:
            accepted, dropped, rejected = screen_outcomes(
                outcomes, sent, expected, v.max_norm, self.data.train_size, relative
            )
            skipped = skip_reason(self.cfg.failures, len(accepted))
        else:
            accepted, dropped, rejected, skipped = self.privacy.screen_secure(outcomes, secure)
        tic = time.perf_counter()
        method_metrics = {}
        if skipped is None and secure is not None:
            base = sent[accepted[0].client_id].tensors  # the same global tensors went to every client
            mean = robust.scaled(ClientUpdate(accepted[0].client_id, Payload(base), 1, {}), base, 1.0, secure.mean)
            self.state, method_metrics = self.method.aggregate_train(self.state, [mean])
        elif skipped is None and dp.mode == "central":
            release = self.privacy.release(round_index, accepted, sent)
            self.state, method_metrics = self.method.aggregate_train(self.state, [release.update])
            method_metrics = {**method_metrics, **self.privacy.central_fields(release)}
        elif skipped is None:
            self.state, method_metrics = self.method.aggregate_train(self.state, self.robust(accepted, sent))
        elif dp.mode == "central":  # nothing released this round: no privacy spent
            method_metrics = self.privacy.central_fields(None)
        if dp.mode == "local":
            method_metrics = {**method_metrics, **self.privacy.local_fields(clients)}
        seconds_aggregate = time.perf_counter() - tic
        evaluation, seconds_eval = self.maybe_evaluate(round_index)
        warm = warmup or {"bytes_up": 0, "bytes_down": 0, "dropped": [], "rejected": [], "metrics": {}}
        return {
            "round": round_index + 1,
            "method": self.spec.key,
            **evaluation,
            "train_loss": mean_train_loss(accepted),
            "clients": clients,
            "bytes_up": warm["bytes_up"] + (secure.bytes_up if secure else upload_bytes(outcomes)),
            "bytes_down": warm["bytes_down"]
            + (secure.bytes_down if secure else sum(p.nbytes() for p in sent.values())),
            "aggregated": [u.client_id for u in accepted] if skipped is None else [],
            "dropped": warm["dropped"] + dropped,
            "rejected": warm["rejected"] + rejected,
            "skipped": skipped,
            **({"secagg_clipped": secure.clipped} if secure else {}),
            **warm["metrics"],
            **method_metrics,
            "seconds_train": sum(o.seconds for o in outcomes),
            "seconds_train_max": max((o.seconds for o in outcomes), default=0.0),  # a parallel round's critical path
            "seconds_aggregate": seconds_aggregate,
            "seconds_eval": seconds_eval,
            **({"seconds_warmup": warmup["seconds"]} if warmup else {}),
            "seconds_round": time.perf_counter() - start,
            "peak_rss_mb": peak_rss_mb(),
        }

    def robust(self, updates: list[ClientUpdate], sent: dict[int, Payload]) -> list[ClientUpdate]:
        """The updates as aggregation.rule hands them to the method (core/robust.py); mean: unchanged."""
        agg = self.cfg.aggregation
        if agg.rule == "median":
            return [robust.median(updates)]
        if agg.rule == "trimmed_mean":
            return [robust.trimmed_mean(updates, agg.trim)]
        if agg.rule in ("krum", "multi_krum"):
            base = {u.client_id: sent[u.client_id].tensors for u in updates}
            keep = 1 if agg.rule == "krum" else agg.multi_krum_keep or max(len(updates) - agg.krum_f, 1)
            return robust.krum(updates, base, agg.krum_f, min(keep, len(updates)))
        if agg.rule == "norm_clip":
            base = {u.client_id: sent[u.client_id].tensors for u in updates}
            norms = [robust.change_norm(u, base[u.client_id]) for u in updates]
            return robust.norm_clip(updates, base, robust.clip_bound(norms, agg.clip_norm, agg.clip_quantile))
        return updates

    def poison(self, outcomes: list[ClientOutcome], sent: dict[int, Payload]) -> list[ClientOutcome]:
        """failures.poisoned: those clients' replies carry their change x poison_scale (a simulated attack,
        applied where the reply arrives, so both engines see the same)."""
        for o in outcomes:
            if o.update is not None and o.client_id in self.cfg.failures.poisoned:
                o.update = robust.scaled(o.update, sent[o.client_id].tensors, self.cfg.failures.poison_scale)
        return outcomes

    def evaluates(self, round_index: int) -> bool:
        """Every federation.eval_every rounds, and the last."""
        fed = self.cfg.federation
        return not (round_index + 1) % fed.eval_every or round_index + 1 == fed.rounds

    def maybe_evaluate(self, round_index: int) -> tuple[dict[str, float | None], float]:
        if not self.evaluates(round_index) or len(self.data.test) == 0:  # no test file on the server: null
            return dict.fromkeys(metric_keys(self.data.task)), 0.0
        tic = time.perf_counter()
        self.method.load_global(self.workspace, self.state)
        metrics = self.workspace.evaluate(self.cfg.train.eval_batch_size)
        if self.method.global_model_note is not None:  # what the evaluated global model leaves out
            metrics = {**metrics, "eval_note": self.method.global_model_note}
        return metrics, time.perf_counter() - tic

    # ---------------------------------------------------------------- checkpoint and resume
    def fingerprint(self) -> str:
        """Identifies what a checkpoint is valid for: the config (less its bookkeeping) and the method."""
        # bookkeeping that changes no number: a resume may raise the state budget or checkpoint less often
        bookkeeping = ("name", "methods", "checkpoint", "clients")
        if not self.cfg.federated_eval.enabled:  # off changes no number: checkpoints from before it still resume
            bookkeeping += ("federated_eval",)
        if self.cfg.aggregation == AggregationConfig():  # the same for the default rule (mean)
            bookkeeping += ("aggregation",)
        if self.cfg.privacy == PrivacyConfig():  # and for DP off
            bookkeeping += ("privacy",)
        config = {k: v for k, v in config_to_dict(self.cfg).items() if k not in bookkeeping}
        # fields added later, at defaults that (as good as) change no number: older checkpoints keep resuming
        if not self.cfg.failures.poisoned:
            config["failures"] = {k: v for k, v in config["failures"].items() if k not in ("poisoned", "poison_scale")}
        defaults = {"max_norm_relative": 10.0, "max_examples": 10_000_000}
        config["validation"] = {k: v for k, v in config["validation"].items() if defaults.get(k, object()) != v}
        text = json.dumps({"config": config, "method": method_to_dict(self.spec)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def maybe_checkpoint(self, clients: Clients, round_index: int, records: list[dict]) -> None:
        every, done = self.cfg.checkpoint.every, round_index + 1
        if every == 0 or (done % every and done != self.cfg.federation.rounds):
            return
        saved = clients.saved_states()
        ckpt = Checkpoint(
            done,
            self.state,
            saved.held,
            records,
            self.partition_sha256,
            rng_state(),
            self.fingerprint(),
            saved.on_nodes,
            saved.files,
        )
        save_checkpoint(self.checkpoint_dir, ckpt)
        clients.checkpoint_written(saved)

    def restore(self, clients: Clients) -> list[dict]:
        """Load the checkpoint (if any) into this run and its clients; the records so far."""
        ckpt = load_checkpoint(self.checkpoint_dir)
        if ckpt is None:
            return []
        where = self.checkpoint_dir
        if ckpt.fingerprint != self.fingerprint():
            raise CheckpointError(
                f"checkpoint {where} was written by another config or method; resume with the run's own config.yaml, "
                f"or delete {where}"
            )
        if ckpt.partition_sha256 != self.partition_sha256:
            raise CheckpointError(
                f"checkpoint {where}: the data or its partition changed since it was written; restore the data file, "
                f"or delete {where}"
            )
        if ckpt.round != len(ckpt.records) or ckpt.round > self.cfg.federation.rounds:
            raise CheckpointError(
                f"checkpoint {where}: {len(ckpt.records)} records for round {ckpt.round}; delete {where}"
            )
        fresh = self.state.extra  # the method's typed server state, as its init gives it
        if fresh is not None and type(ckpt.server.extra) is not type(fresh):
            raise CheckpointError(
                f"checkpoint {where} holds this method's server state in an older form than its "
                f"{type(fresh).__name__}; delete {where} to restart it from round 1"
            )
        clients.restore_states(ClientStates(ckpt.client_files, ckpt.clients, ckpt.clients_on_nodes), where)
        self.state = ckpt.server
        restore_rng(ckpt.rng)
        self.privacy.restore(ckpt.records)
        return ckpt.records


def upload_bytes(outcomes: list[ClientOutcome]) -> int:
    return sum(payload_bytes(o.update.payload) for o in outcomes if o.update is not None)


def mean_train_loss(updates: list[ClientUpdate]) -> float | None:
    """Clients' mean train loss weighted by examples (None when no update was usable)."""
    if not updates:
        return None
    weights = normalized_weights([u.num_examples for u in updates])
    return float(sum(w * u.metrics["train_loss"] for w, u in zip(weights, updates)))


def metric_keys(task: Task) -> tuple[str, ...]:
    return tuple(task.metric_keys)


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
    if records and records[-1].get("dp_epsilon") is not None:  # privacy.dp: the budget spent by the end
        extra["final_dp_epsilon"] = records[-1]["dp_epsilon"]
    for key, value in final.items():  # federated evaluation's aggregates, when it ran (fed_accuracy, ..._worst)
        if key.startswith("fed_") and key not in ("fed_eval", "fed_eval_dropped"):
            extra[f"final_{key}"] = value
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
