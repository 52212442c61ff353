"""fedgalore: shared GaLore projectors, factored uploads, synchronised projected second moments.

FedGaLore (arXiv 2602.01746), as specified in docs/methods.md "FedGaLore – our specification"; the
client optimizer is GaLore-AdamW (GaLore, arXiv 2403.03507). Per GaLore-managed weight W (m x n,
right side P: r x n shown; the left side is the transpose):

- Projector: one P per matrix, shared by every client of a round, held ``proj_refresh_rounds``
  rounds. ``proj_source``: ``random`` (seeded from (seed, refresh index, matrix index): every
  client rebuilds it, zero bytes), ``svd`` / ``rsvd`` (the federated sketch: both names mean the
  same thing, a server without gradients can only do a randomized SVD of the summed sketch),
  ``hybrid`` (sketch for the refreshes at rounds <= ``svd_rounds``, random after). Round 0's
  projector comes from a warm-up sketch of the first clients' first ``warmup_batches`` batches
  (sketch sources; its bytes and seconds count in round 1), else it is random. Seeds: the
  method's ``seed``, by default the run seed. Sketch: in the round before a sketched refresh each client accumulates
  S_k = sum_s G_s^T Omega (n x (r+o), Omega a shared seeded m x (r+o) Gaussian) at backward time
  and uploads it; the server's new P is the top-r left basis of sum_k p_k S_k, sent down (r x n).
- Client: W_t, P and the synchronised V_hat in; E GaLore-AdamW steps (the head: AdamW at
  ``head_lr``, by default the run's train.lr); up: R (m x r) and the decay product c^E (one scalar:
  all managed matrices share lr and wd) with W_E = c^E W_t + R P exactly, V_k (m x r, ajive / mean
  only), the head, and S_k when due.
- Server: W_{t+1} = c_bar W_t + (sum_k p_k R_k) P, one m x r sum and one matmul per matrix.
  ``sync``: ``ajive`` (fedsub.linalg.moments.sync_second_moments, via sync.py),
  ``mean``, ``none`` (FedGaLore-minus: each client keeps its whole optimizer state in
  ``client.state``) or ``reset`` (every round starts from a fresh optimizer, nothing sent: what the
  LoRA baselines do). AJIVE's rules: ``ajive_samples``, ``ajive_signal_rank``, ``ajive_joint_rank``;
  ``ajive_identifiability`` (false, with a fixed joint rank, keeps every component of it),
  ``ajive_input`` (``v`` or ``sqrt``: on sqrt(V_k), squared back), ``ajive_weighting`` (``equal``
  or ``clients``: blocks stacked by n_k), ``ajive_floor`` (V_hat >= floor x V_bar instead of >= 0).
  The defaults are the original estimator; on MiniLM's m x 8 moments it finds joint rank 0 for
  almost every matrix, i.e. V_hat = V_bar (benchmarks/RESULTS.md). The last four need sync ajive.
- Bias correction (point 4): V_k is uploaded as the estimate v / (1 - beta2^t) with its step count
  t (scalar ``v_step``); the server syncs the estimates and averages t; the client installs V_hat
  with ``set_second_moment(step=t, corrected=True)``, so its correction continues from t (with one
  client: exactly the centralised optimizer, tested); the first moment restarts at zero.
- Projector change: ``moments_on_refresh`` ``reset`` (V_hat dropped / client moments zeroed) or
  ``transport`` (v <- v (Q o Q) plus the mean energy for what lies outside span(P_old), m <- m Q
  with Q = P_old P_new^T; see transport_moments).

Bytes: the downlink carries the head, the global managed matrices as factored deltas (``downlink``
``factored``, the default: c_bar, R_bar and a sketched P per round the client missed, see
downlink.py; the client keeps its own copy of the global weights) or dense (``dense``, or a
client further behind than ``downlink_history`` rounds), a sketched P every round it is in use (a
sampled client may have missed the refresh; random P costs nothing), V_hat when synchronised. R and V go up in the
optimizer's state dtype (float32 also for bf16 models), c^E and t as scalars (not counted: scalars are not tensor
bytes). The warm-up sends the head down and S_k up.

Metrics per round: ``ajive_joint_rank_mean/min/max`` over the managed matrices (identical moments
count their numerical rank), ``seconds_ajive``; ajive and mean: ``v_hat_rel_diff_mean/max``, the
relative Frobenius distance ||V_hat - V_bar|| / ||V_bar|| over the matrices (0 for mean);
``proj_refreshed`` / ``proj_sketched``: whether this aggregation installed a new projector for the
next round, and whether it came from the sketch.

The package: this module (the registered method), options.py, state.py (its typed server state),
keys.py (its payload tensor names), factored.py (update rule, sketch, sketch projector), warmup.py
(the warm-up exchange), downlink.py (the factored downlink), sync.py (the second-moment sync).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from torch import Tensor

from fedsub.core.method import FactoredUpdates, Metrics
from fedsub.core.registry import register
from fedsub.core.seeding import mix_seed
from fedsub.core.tensors import normalized_weights, weighted_sum
from fedsub.core.types import ClientContext, ClientUpdate, Payload, ServerState
from fedsub.core.validation import ScalarSpec, TensorSpec, UpdateSpec
from fedsub.core.workspace import Workspace
from fedsub.diagnostics.rounds import factored_round_diagnostics
from fedsub.methods.fedgalore import downlink
from fedsub.methods.fedgalore import sync as moment_sync
from fedsub.methods.fedgalore.factored import GradientSketch, factored_update, sketch_projector, sketch_side
from fedsub.methods.fedgalore.keys import Part, has, key, keys, model_tensors, named, parts
from fedsub.methods.fedgalore.options import FedGaLoreOptions
from fedsub.methods.fedgalore.state import Delta, FedGaLoreState
from fedsub.methods.fedgalore.warmup import SketchWarmup
from fedsub.optim.galore_model import (
    export_state,
    freeze_all_but,
    galore_optimizer,
    head_parameter_names,
    import_state,
    linear_weight_names,
)
from fedsub.optim.projector import choose_side, moment_shape, random_projector, transport_moments

SKETCH_STREAM = 0x5EC7  # separates the sketch's Omega seeds from the projector seeds


@register("fedgalore")
class FedGaLore:
    """FedGaLore (arXiv 2602.01746) with our specification's switches (docs/methods.md)."""

    Options = FedGaLoreOptions
    diagnostics = FactoredUpdates()
    global_model_note = None
    personalize = None  # a client evaluates the global model
    warmup: SketchWarmup | None  # set from the options in __init__
    client_state: frozenset[str]

    def __init__(self, options: FedGaLoreOptions):
        self.options = options
        self.warmup = SketchWarmup(self) if self.sketched(0) else None
        kept = set()
        if options.downlink == "factored":
            kept |= {"global_weights", "global_version"}  # its own copy of the global matrices
        if options.sync == "none":
            kept |= {"optimizer", "refresh"}  # its whole GaLore-AdamW state
        self.client_state = frozenset(kept)

    def prepare_model(self, workspace: Workspace) -> None:
        wanted = self.options.modules
        modules = [
            m for m in workspace.target_modules if wanted is None or any(m == s or m.endswith("." + s) for s in wanted)
        ]
        if not modules:
            raise ValueError(f"fedgalore: modules={wanted} matches none of {workspace.target_modules}")
        self.galore_names = linear_weight_names(workspace.model, modules)
        self.head_names = head_parameter_names(workspace)
        freeze_all_but(workspace, self.galore_names + self.head_names)
        params = workspace.parameters_by_name()
        self.shapes = {n: params[n].shape for n in self.galore_names}
        self.base = workspace.read(self.galore_names)  # version 0 of the global weights: every client has it

    # ------------------------------------------------------------------ projector schedule
    def random_projectors(self, refresh: int) -> dict[str, Tensor]:
        o = self.options
        return {
            n: random_projector(s, o.rank, mix_seed(o.seed, refresh, i)) for i, (n, s) in enumerate(self.shapes.items())
        }

    def sketched(self, round_index: int) -> bool:
        """Whether the projector installed at ``round_index`` comes from the sketch (round 0: the
        warm-up sketch, see warmup.py)."""
        source = self.options.proj_source
        if round_index == 0:
            return source != "random" and self.options.warmup_batches > 0
        return source in ("svd", "rsvd") or (source == "hybrid" and round_index <= self.options.svd_rounds)

    def sketch_width(self) -> int:
        o = self.options
        return o.rank + (o.rank if o.oversampling is None else o.oversampling)

    def refresh_at(self, round_index: int) -> bool:
        return round_index % self.options.proj_refresh_rounds == 0

    def init(self, workspace: Workspace) -> ServerState[FedGaLoreState]:
        tensors = workspace.read(self.galore_names + self.head_names)
        return ServerState(0, tensors, FedGaLoreState(projectors=self.random_projectors(0)))

    # ------------------------------------------------------------------ client
    def configure_train(self, state: ServerState[FedGaLoreState], client_id: int) -> Payload:
        extra = state.extra
        tensors, scalars = self.downlink_weights(state, client_id)
        if extra.proj_sketched:  # random projectors are rebuilt from the seed: no bytes
            tensors.update(named(Part.PROJECTOR, extra.projectors))
        tensors.update(named(Part.MOMENT, extra.v_hat))
        if extra.v_hat:
            scalars["v_step"] = float(extra.v_step)
        nxt = state.round + 1
        sketch = self.refresh_at(nxt) and self.sketched(nxt)
        return Payload(tensors, {**scalars, "version": state.round, "refresh": extra.refresh, "sketch": sketch})

    def downlink_weights(self, state: ServerState[FedGaLoreState], client_id: int) -> tuple[dict[str, Tensor], dict]:
        """The head and the global matrices: as the deltas this client misses, else dense."""
        chain = (
            downlink.deltas_for(state.extra, client_id, state.round) if self.options.downlink == "factored" else None
        )
        if chain is None:
            return dict(state.tensors), {}
        tensors, scalars = downlink.pack(chain, state.extra.refresh)
        return {**{n: state.tensors[n] for n in self.head_names}, **tensors}, scalars

    def client_weights(self, payload: Payload, client: ClientContext) -> dict[str, Tensor]:
        """The global weights this round starts from: sent dense, or the client's own copy moved
        along the sent deltas (kept in client.state for the next round it takes part in). In
        process, the server's own weights, which that copy equals bit for bit (ClientContext), so
        the simulator keeps no copy per client: only the version it holds."""
        dense = model_tensors(payload.tensors)
        if self.options.downlink == "dense":
            return dense
        version = int(payload.scalars["version"])
        if client.server_tensors is not None:  # sent dense or factored, the same weights
            client.state["global_version"] = version
            return {**dense, **{n: client.server_tensors[n] for n in self.galore_names}}
        if all(n in dense for n in self.galore_names):
            weights = {n: dense[n].clone() for n in self.galore_names}
        else:
            held, copy = client.state.get("global_version", 0), client.state.get("global_weights", self.base)
            weights, held = downlink.apply_deltas(
                copy,
                held,
                payload.tensors,
                payload.scalars,
                lambda j, refresh: self.delta_projectors(payload, j, refresh),
            )
            if held != version:
                raise RuntimeError(f"client {client.client_id} reached global version {held}, expected {version}")
        client.state.update(global_weights=weights, global_version=version)
        return {**dense, **weights}

    def delta_projectors(self, payload: Payload, j: int, refresh: int) -> dict[str, Tensor]:
        """Projectors of delta j: sent with it, this round's (same refresh), or rebuilt from the seed."""
        if has(payload.tensors, Part.PROJECTOR, self.galore_names[:1], delta=j):
            return parts(payload.tensors, Part.PROJECTOR, self.galore_names, delta=j)
        if refresh == int(payload.scalars["refresh"]):
            return self.client_projectors(payload)
        return self.random_projectors(refresh)

    def client_train(self, workspace: Workspace, payload: Payload, client: ClientContext) -> ClientUpdate:
        workspace.write(self.client_weights(payload, client))
        o = self.options
        optimizer, managed = galore_optimizer(
            workspace,
            self.galore_names,
            client.train,
            head_lr=o.head_lr,
            rank=o.rank,
            scale=o.scale,
            proj_type="given",
            track_update=True,
        )
        named_params = dict(zip(self.galore_names, managed))
        self.start_state(optimizer, named_params, payload, client)
        sketch = None
        if payload.scalars["sketch"]:
            sketch = GradientSketch(named_params, self.sketch_width(), mix_seed(o.seed, SKETCH_STREAM, client.round))
        metrics = workspace.train_local(client, optimizer, after_backward=sketch.accumulate if sketch else None)
        if o.sync == "none":
            client.state.update(optimizer=export_state(optimizer), refresh=int(payload.scalars["refresh"]))
        upload, scalars = self.upload(workspace, optimizer, named_params, sketch)
        return ClientUpdate(client.client_id, Payload(upload, scalars), len(client.indices), metrics)

    def client_projectors(self, payload: Payload) -> dict[str, Tensor]:
        """This round's shared projectors: sent (sketched) or rebuilt from the seed (random)."""
        if has(payload.tensors, Part.PROJECTOR, self.galore_names):
            return parts(payload.tensors, Part.PROJECTOR, self.galore_names)
        return self.random_projectors(int(payload.scalars["refresh"]))

    def start_state(self, optimizer, named_params: dict[str, Tensor], payload: Payload, client: ClientContext) -> None:
        """Install P and the starting moments: V_hat (synced), the client's own (sync none) or zeros
        (sync reset, and the first round). V_hat is a bias-corrected estimate of E[g~^2] after
        ``v_step`` steps (docs/methods.md point 4): installed as such, its correction continues from
        v_step, while the first moment restarts at zero with its own count. With one client this is
        exactly one GaLore-AdamW whose first moment restarts each round (tested)."""
        saved = client.state.get("optimizer") if self.options.sync == "none" else None
        if saved is not None:
            import_state(optimizer, saved)
        changed = saved is None or client.state.get("refresh") != int(payload.scalars["refresh"])
        policy = "reset" if saved is None else self.options.moments_on_refresh
        for name, p in self.client_projectors(payload).items():
            if changed:
                optimizer.set_projector(named_params[name], p, moments=policy)
            else:
                optimizer.reset_update_factor(named_params[name])  # same P, moments continue; R restarts at W_t
            if key(Part.MOMENT, name) in payload.tensors:
                step = float(payload.scalars["v_step"])
                optimizer.set_second_moment(
                    named_params[name], payload.tensors[key(Part.MOMENT, name)], step=step, corrected=True
                )

    def upload(self, workspace: Workspace, optimizer, named_params: dict[str, Tensor], sketch: GradientSketch | None):
        """R, V and S per matrix, the head, and as scalars the decay product c^E and V's step count.

        V is the bias-corrected estimate v / (1 - beta2^t) with t = ``v_step`` (docs/methods.md point 4):
        the raw v after E = 5 steps from zero is 1 - 0.999^5 = 0.5% of it, and installing raw v as
        an estimate made the next round's steps ~14x too large."""
        tensors, decays, steps = workspace.read(self.head_names), set(), set()
        synced = self.options.sync in ("ajive", "mean")
        for name, p in named_params.items():
            r, decay = optimizer.get_update_factor(p)
            tensors[key(Part.FACTOR, name)], decays = r.cpu(), decays | {decay}
            if synced:
                tensors[key(Part.MOMENT, name)] = optimizer.get_second_moment(p, corrected=True).cpu()
                steps.add(optimizer.second_moment_step(p))
            if sketch is not None:
                tensors[key(Part.SKETCH, name)] = sketch.sums[name].cpu()
        if len(decays) != 1 or len(steps) > 1:
            raise RuntimeError(f"managed matrices decayed or stepped differently: {decays}, {steps}")
        return tensors, {"decay": decays.pop(), **({"v_step": steps.pop()} if steps else {})}

    def update_spec(self, state: ServerState, client_id: int, payload: Payload) -> UpdateSpec:
        """The head, and per matrix R and V (r-wide moment shape) and, in a sketch round, S (see `upload`);
        the scalars decay in (0, 1] and, when V is synced, v_step >= 1."""
        o, width = self.options, self.sketch_width()
        spec = {n: TensorSpec(tuple(state.tensors[n].shape), state.tensors[n].dtype) for n in self.head_names}
        for name, shape in self.shapes.items():
            spec[key(Part.FACTOR, name)] = TensorSpec(tuple(moment_shape(shape, o.rank)))
            if o.sync in ("ajive", "mean"):
                spec[key(Part.MOMENT, name)] = TensorSpec(tuple(moment_shape(shape, o.rank)))
            if payload.scalars["sketch"]:
                spec[key(Part.SKETCH, name)] = TensorSpec(sketch_side(shape, width))
        spec["decay"] = ScalarSpec(0.0, 1.0, low_open=True)  # c^E, a product of (1 - lr x weight decay) factors
        if o.sync in ("ajive", "mean"):
            spec["v_step"] = ScalarSpec(1.0, math.inf)  # V's step count: at least the round's first step
        return spec

    # ------------------------------------------------------------------ server
    def aggregate_train(
        self, state: ServerState[FedGaLoreState], updates: Sequence[ClientUpdate]
    ) -> tuple[ServerState, Metrics]:
        weights = normalized_weights([u.num_examples for u in updates])
        uploads = [u.payload.tensors for u in updates]
        tensors = {**state.tensors, **weighted_sum(uploads, weights, self.head_names)}
        c_bar = sum(w * float(u.payload.scalars["decay"]) for w, u in zip(weights, updates))
        projectors = state.extra.projectors
        r_bar = parts(
            weighted_sum(uploads, weights, keys(Part.FACTOR, self.galore_names)), Part.FACTOR, self.galore_names
        )
        for name in self.galore_names:
            tensors[name] = factored_update(state.tensors[name], c_bar, r_bar[name], projectors[name])
        v_hat, metrics = self.sync_moments(uploads, weights)
        extra = state.extra
        if v_hat:  # the estimate's step count: the clients' (equal, when they all started from V_hat)
            extra = dataclasses.replace(
                extra, v_step=sum(w * float(u.payload.scalars["v_step"]) for w, u in zip(weights, updates))
            )
        extra = self.next_projectors(state.round + 1, extra, uploads, weights, v_hat, metrics)
        if self.options.downlink == "factored":
            sketched = state.extra.proj_sketched
            delta = Delta(state.round + 1, c_bar, r_bar, state.extra.refresh, projectors if sketched else None)
            extra = downlink.record_delta(extra, delta, [u.client_id for u in updates], self.options.downlink_history)
        # the diagnostics of R_k P, exact in r-space: P is shared and orthonormal
        metrics.update(factored_round_diagnostics(self.options, uploads, weights, keys(Part.FACTOR, self.galore_names)))
        return ServerState(state.round + 1, tensors, extra), metrics

    def sync_moments(self, uploads: list[dict], weights: list[float]) -> tuple[dict[str, Tensor], dict[str, float]]:
        """V_hat per matrix (ajive or mean) and the sync metrics (sync.py)."""
        return moment_sync.sync_moments(self.options, {n: self.shapes[n] for n in self.galore_names}, uploads, weights)

    def next_projectors(
        self, nxt: int, extra: FedGaLoreState, uploads, weights, v_hat: dict, metrics: dict
    ) -> FedGaLoreState:
        """The state for round `nxt`: its projectors (refreshed when due) and V_hat in their basis."""
        refresh = self.refresh_at(nxt)
        metrics.update(proj_refreshed=float(refresh), proj_sketched=0.0)
        if not refresh:
            return dataclasses.replace(extra, v_hat=v_hat)
        old = extra.projectors
        if self.sketched(nxt) and all(has(u, Part.SKETCH, self.galore_names[:1]) for u in uploads):
            s_bar = parts(
                weighted_sum(uploads, weights, keys(Part.SKETCH, self.galore_names)), Part.SKETCH, self.galore_names
            )
            new = {n: sketch_projector(s_bar[n], self.shapes[n], self.options.rank) for n in self.galore_names}
            metrics["proj_sketched"] = 1.0
        else:
            new = self.random_projectors(extra.refresh + 1)
        v_step = extra.v_step
        if self.options.moments_on_refresh == "transport":
            # v <- v (Q o Q) plus the mean energy for the share of the new basis outside span(P_old)
            # (transport_moments); clamped as V_hat must stay >= 0 (sqrt). Its step count continues.
            sides = {n: choose_side(s) for n, s in self.shapes.items()}
            v_hat = {n: transport_moments(v, v, old[n], new[n], sides[n])[1].clamp_min(0) for n, v in v_hat.items()}
        else:
            v_hat, v_step = {}, 0.0
        sketched = metrics["proj_sketched"] == 1.0
        return dataclasses.replace(
            extra, projectors=new, refresh=extra.refresh + 1, proj_sketched=sketched, v_hat=v_hat, v_step=v_step
        )

    def load_global(self, workspace: Workspace, state: ServerState) -> None:
        workspace.write(state.tensors)
