"""The privacy parts of the round loop (config `privacy`): the DP-FedAvg release and its accountant
(privacy.dp central), each client's DP-SGD accountant (privacy.dp local), and the screen of a round
that went through secure aggregation (privacy.secagg). Composed into RoundLoop, which stays the one
readable round; the maths is in core/privacy.py, core/dp_sgd.py and lora/private.py."""

from __future__ import annotations

from fedsub.config import DP_PRODUCTS, ExperimentConfig, MethodSpec
from fedsub.core import privacy
from fedsub.core.seeding import derive_seed, torch_generator
from fedsub.core.types import ClientUpdate, Payload, TrainSettings
from fedsub.engines.failures import ClientOutcome, skip_reason
from fedsub.engines.setup import FederatedData
from fedsub.lora.private import product_release

DP_STREAM = 0xD1FF  # the DP noise's own stream of (seed, round)


class RoundPrivacy:
    """What a run carries for privacy between rounds: central DP's clip C and releases so far, local
    DP's steps per client. Both follow from the records, so `restore` rebuilds them on resume."""

    def __init__(self, cfg: ExperimentConfig, spec: MethodSpec, data: FederatedData, settings: TrainSettings):
        self.cfg, self.spec, self.data, self.settings = cfg, spec, data, settings
        self.clip, self.releases = cfg.privacy.dp.clip_norm, 0  # central: C now, rounds released
        self.steps: dict[int, int] = {}  # local: DP-SGD steps each client has taken so far

    def release(self, round_index: int, updates: list[ClientUpdate], sent: dict[int, Payload]) -> privacy.Release:
        """The round's DP-FedAvg release (core/privacy.py), its noise seeded by (seed, round)."""
        dp = self.cfg.privacy.dp
        generator = torch_generator(derive_seed(self.cfg.seed, round_index, DP_STREAM))
        noise = (self.clip, dp.noise_multiplier, self.cfg.federation.clients_per_round, generator)
        adaptive = {"adaptive": dp.adaptive, "target_quantile": dp.target_quantile, "clip_lr": dp.clip_lr}
        if self.spec.name in DP_PRODUCTS:  # the noise goes into the sum of B_k A_k, before the method's SVD
            release = product_release(updates, sent, *noise, **adaptive)
        else:
            release = privacy.private_mean(updates, sent[updates[0].client_id].tensors, *noise, **adaptive)
        self.clip, self.releases = release.next_clip_norm, self.releases + 1
        return release

    def central_fields(self, release: privacy.Release | None) -> dict:
        """dp_* of a round: epsilon so far at privacy.dp.delta, the clip used and the next one."""
        dp, fed = self.cfg.privacy.dp, self.cfg.federation
        rate = fed.clients_per_round / fed.num_clients
        return {
            "dp_released": release is not None,
            "dp_epsilon": privacy.epsilon(dp.noise_multiplier, rate, self.releases, dp.delta),
            "dp_clip_norm": release.clip_norm if release else self.clip,
            "dp_next_clip_norm": self.clip,
            "dp_clipped_share": release.clipped_share if release else None,
        }

    def local_fields(self, clients: list[int]) -> dict:
        """privacy.dp local: every sampled client is counted as having taken its DP-SGD steps (a client
        that failed may not have: an upper bound); dp_epsilon is the worst client's, each client's own
        accountant at its rate q = batch_size / n over its steps so far."""
        for c in clients:
            rows = self.data.train_size(c)
            if rows:
                self.steps[c] = self.steps.get(c, 0) + self.settings.steps_for(rows)
        dp = self.cfg.privacy.dp
        worst = max(
            (privacy.epsilon(dp.noise_multiplier, min(1.0, self.settings.batch_size / rows), steps, dp.delta)
             for c, steps in self.steps.items() if (rows := self.data.train_size(c))),
            default=0.0,
        )  # fmt: skip
        return {"dp_epsilon": worst, "dp_clients_spent": len(self.steps)}

    def restore(self, records: list[dict]) -> None:
        """After a resume: C and the releases from the records (central), each client's steps from the
        rounds it was sampled in (local)."""
        mode = self.cfg.privacy.dp.mode
        if mode == "central" and records:
            self.clip = float(records[-1].get("dp_next_clip_norm", self.clip))
            self.releases = sum(1 for r in records if r.get("dp_released"))
        if mode == "local":
            for record in records:
                self.local_fields(record["clients"])

    def screen_secure(self, outcomes: list[ClientOutcome], secure) -> tuple[list, list, list, str | None]:
        """A secure round's accepted (counts and metrics only: each was screened before it was summed,
        engines/flower/secagg.ScreenedGrid), dropped and rejected clients, and why the round is skipped
        (the protocol halted, or too few are left)."""
        accepted = [o.update for o in outcomes if o.update is not None]
        dropped = [{"client": o.client_id, "reason": o.reason} for o in outcomes if not (o.update or o.malformed)]
        rejected = [{"client": o.client_id, "reason": o.reason} for o in outcomes if o.malformed]
        return accepted, dropped, rejected, secure.reason or skip_reason(self.cfg.failures, len(accepted))
