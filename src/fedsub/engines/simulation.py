"""The in-process simulator: one model reused by every client, a round loop of plain phases
(what it sets up first, shared with the other engines, is in fedsub.engines.setup).

sample -> configure -> train each client (failures dropped) -> validate -> aggregate -> evaluate ->
checkpoint -> log. Client sampling, simulated faults and each client's randomness are pure functions
of (seed, round, client), so a run is reproducible, any round can be replayed in isolation, and a run
resumed from its checkpoint writes the same metrics as one never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fedsub.config import ExperimentConfig, MethodSpec, config_to_dict, method_to_dict
from fedsub.core.checkpoint import Checkpoint, CheckpointError, load_checkpoint, restore_rng, rng_state, save_checkpoint
from fedsub.core.io import atomic_write_text
from fedsub.core.tensors import normalized_weights
from fedsub.core.types import ClientContext, ClientUpdate, Payload, ServerState
from fedsub.core.validation import payload_bytes
from fedsub.engines.failures import ClientOutcome, run_client, screen_outcomes, simulated_fault, skip_reason
from fedsub.engines.setup import FederatedData, client_seed, peak_rss_mb, reset_peak_rss, sample_clients, set_up_method

TIMING_KEYS = ("seconds_train", "seconds_aggregate", "seconds_eval", "seconds_round", "peak_rss_mb", "seconds_warmup")


class Simulation:
    """Runs one method of an experiment round by round, appending one JSON line per round.

    With `resume`, it continues from the checkpoint in `<out_dir>/checkpoint` (if any): state,
    client states, RNGs and the records so far come from there, metrics.jsonl is rewritten from
    those records (dropping lines of rounds after the checkpoint) and the remaining rounds run.
    """

    def __init__(self, cfg: ExperimentConfig, spec: MethodSpec, data: FederatedData, out_dir: Path, resume: bool = False):
        self.cfg, self.spec, self.data, self.out_dir, self.resume = cfg, spec, data, out_dir, resume
        reset_peak_rss()
        setup = set_up_method(cfg, spec, data)
        self.method, self.workspace, self.settings = setup.method, setup.workspace, setup.settings
        self.client_states: dict[int, dict[str, Any]] = {}
        self.state: ServerState = self.method.init(self.workspace)
        self.checkpoint_dir = out_dir / "checkpoint"

    def run(self, on_round: Callable[[dict], None] | None = None, on_client: Callable[[], None] | None = None) -> list[dict]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        records = self.restore() if self.resume else []
        metrics = self.out_dir / "metrics.jsonl"
        atomic_write_text(metrics, "".join(json.dumps(r) + "\n" for r in records))
        with open(metrics, "a") as log:
            for round_index in range(len(records), self.cfg.federation.rounds):
                record = self.run_round(round_index, on_client)
                records.append(record)
                self.maybe_checkpoint(round_index, records)  # before the log line: a kill between the two loses nothing
                log.write(json.dumps(record) + "\n")
                log.flush()
                if on_round:
                    on_round(record)
        return records

    def run_round(self, round_index: int, on_client: Callable[[], None] | None = None) -> dict:
        fed = self.cfg.federation
        start = time.perf_counter()
        clients = sample_clients(self.cfg.seed, round_index, fed.num_clients, fed.clients_per_round)
        warmup = self.warmup(round_index, clients)
        outcomes, sent, bytes_down = [], {}, 0
        for client_id in clients:
            sent[client_id] = self.method.configure_train(self.state, client_id)
            bytes_down += sent[client_id].nbytes()
            outcomes.append(self.train_client(round_index, client_id, sent[client_id]))
            if on_client:
                on_client()
        return self.finish_round(round_index, start, clients, outcomes, sent, bytes_down, warmup)

    def warmup(self, round_index: int, clients: list[int]) -> dict | None:
        """The method's warm-up exchange before this round's training, if it asks for one."""
        sent = {c: p for c in clients if (p := self.method.configure_warmup(self.state, c)) is not None}
        if not sent:
            return None
        outcomes = []
        for client_id, payload in sent.items():
            fault = simulated_fault(self.cfg.failures, self.cfg.seed, round_index, client_id)
            context = self.client_context(round_index, client_id)  # a copy: the warm-up keeps no state
            outcomes.append(run_client(self.cfg.failures, client_id, fault, lambda: self.method.client_warmup(self.workspace, payload, context)))
            self.workspace.model.zero_grad(set_to_none=True)
        return self.finish_warmup(outcomes, sent)

    def finish_warmup(self, outcomes: list[ClientOutcome], sent: dict[int, Payload]) -> dict:
        """Screen and aggregate the warm-up replies (any engine); what the round's record adds."""
        tic = time.perf_counter()
        accepted, dropped, rejected = screen_outcomes(outcomes, sent, self.method, self.state, None)  # a sketch is no change: no max_norm
        self.state, metrics = self.method.aggregate_warmup(self.state, accepted)
        return {
            "bytes_up": sum(payload_bytes(o.update.payload) for o in outcomes if o.update is not None),
            "bytes_down": sum(p.nbytes() for p in sent.values()),
            "dropped": [{**d, "reason": f"warm-up: {d['reason']}"} for d in dropped],
            "rejected": [{**r, "reason": f"warm-up: {r['reason']}"} for r in rejected],
            "metrics": metrics,
            "seconds": sum(o.seconds for o in outcomes) + time.perf_counter() - tic,
        }

    def finish_round(self, round_index: int, start: float, clients: list[int], outcomes: list[ClientOutcome],
                     sent: dict[int, Payload], bytes_down: int, warmup: dict | None = None) -> dict:
        """Screen the replies, aggregate (unless too few are left), evaluate, and build the round's
        record. Shared by every engine, so the same run gives the same metrics.jsonl on each.
        A warm-up's bytes, failures and metrics are added to the round's."""
        accepted, dropped, rejected = screen_outcomes(outcomes, sent, self.method, self.state, self.cfg.validation.max_norm)
        skipped = skip_reason(self.cfg.failures, len(accepted))
        tic = time.perf_counter()
        method_metrics = {}
        if skipped is None:
            self.state, method_metrics = self.method.aggregate_train(self.state, accepted)
        seconds_aggregate = time.perf_counter() - tic
        evaluation, seconds_eval = self.maybe_evaluate(round_index)
        warm = warmup or {"bytes_up": 0, "bytes_down": 0, "dropped": [], "rejected": [], "metrics": {}}
        return {
            "round": round_index + 1,
            "method": self.spec.key,
            **evaluation,
            "train_loss": mean_train_loss(accepted),
            "clients": clients,
            "bytes_up": warm["bytes_up"] + sum(payload_bytes(o.update.payload) for o in outcomes if o.update is not None),
            "bytes_down": warm["bytes_down"] + bytes_down,
            "aggregated": [u.client_id for u in accepted] if skipped is None else [],
            "dropped": warm["dropped"] + dropped,
            "rejected": warm["rejected"] + rejected,
            "skipped": skipped,
            **warm["metrics"],
            **method_metrics,
            "seconds_train": sum(o.seconds for o in outcomes),
            "seconds_aggregate": seconds_aggregate,
            "seconds_eval": seconds_eval,
            **({"seconds_warmup": warmup["seconds"]} if warmup else {}),
            "seconds_round": time.perf_counter() - start,
            "peak_rss_mb": peak_rss_mb(),
        }

    def train_client(self, round_index: int, client_id: int, payload: Payload) -> ClientOutcome:
        """One client's local round; its state changes persist only if it did not fail."""
        fault = simulated_fault(self.cfg.failures, self.cfg.seed, round_index, client_id)
        context = self.client_context(round_index, client_id)
        outcome = run_client(self.cfg.failures, client_id, fault, lambda: self.method.client_train(self.workspace, payload, context))
        if outcome.keep_state:
            self.client_states[client_id] = context.state
        elif fault != "dropout":
            # a client that raised between backward() and zero_grad() leaves gradients on the shared
            # model, which the next client's first backward() would add to its own
            self.workspace.model.zero_grad(set_to_none=True)
        return outcome

    def client_context(self, round_index: int, client_id: int) -> ClientContext:
        return ClientContext(
            client_id=client_id,
            round=round_index,
            indices=self.data.parts[client_id],
            train=self.settings,
            seed=client_seed(self.cfg.seed, round_index, client_id),
            state=dict(self.client_states.get(client_id, {})),  # a copy: committed only if the client succeeds
        )

    # ---------------------------------------------------------------- checkpoint and resume
    def fingerprint(self) -> str:
        """Identifies what a checkpoint is valid for: the config (less its bookkeeping) and the method."""
        config = {k: v for k, v in config_to_dict(self.cfg).items() if k not in ("name", "methods", "checkpoint")}
        text = json.dumps({"config": config, "method": method_to_dict(self.spec)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def maybe_checkpoint(self, round_index: int, records: list[dict]) -> None:
        every, done = self.cfg.checkpoint.every, round_index + 1
        if every == 0 or (done % every and done != self.cfg.federation.rounds):
            return
        ckpt = Checkpoint(done, self.state, self.client_states, records, self.data.parts, rng_state(), self.fingerprint())
        save_checkpoint(self.checkpoint_dir, ckpt)

    def restore(self) -> list[dict]:
        """Load the checkpoint (if any) into this simulation; the records so far."""
        ckpt = load_checkpoint(self.checkpoint_dir)
        if ckpt is None:
            return []
        where = self.checkpoint_dir
        if ckpt.fingerprint != self.fingerprint():
            raise CheckpointError(f"checkpoint {where} was written by another config or method; resume with the run's own config.yaml, or delete {where}")
        if len(ckpt.partition) != len(self.data.parts) or not all(torch.equal(a, b) for a, b in zip(ckpt.partition, self.data.parts)):
            raise CheckpointError(f"checkpoint {where}: the data or its partition changed since it was written; restore the data file, or delete {where}")
        if ckpt.round != len(ckpt.records) or ckpt.round > self.cfg.federation.rounds:
            raise CheckpointError(f"checkpoint {where}: {len(ckpt.records)} records for round {ckpt.round}; delete {where}")
        self.state, self.client_states = ckpt.server, ckpt.clients
        restore_rng(ckpt.rng)
        return ckpt.records

    def maybe_evaluate(self, round_index: int) -> tuple[dict[str, float | None], float]:
        fed = self.cfg.federation
        if (round_index + 1) % fed.eval_every and round_index + 1 != fed.rounds:
            return dict.fromkeys(metric_keys(self.data.task)), 0.0
        tic = time.perf_counter()
        self.method.load_global(self.workspace, self.state)
        metrics = self.workspace.evaluate(self.cfg.train.eval_batch_size)
        return metrics, time.perf_counter() - tic


def mean_train_loss(updates: list[ClientUpdate]) -> float | None:
    """Clients' mean train loss weighted by examples (None when no update was usable)."""
    if not updates:
        return None
    weights = normalized_weights([u.num_examples for u in updates])
    return float(sum(w * u.metrics["train_loss"] for w, u in zip(weights, updates)))


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
