"""FedGaLore's options (docs/methods.md "FedGaLore – our specification"; each open choice a switch)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FedGaLoreOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rank: int = Field(8, gt=0, description="GaLore rank r of every managed matrix")
    scale: float = Field(1.0, gt=0, description="GaLore scale (alpha) of the back-projected step")
    modules: list[str] | None = Field(None, description="suffix filter over model.target_modules; None = all of them")
    proj_source: Literal["random", "svd", "rsvd", "hybrid"] = Field(
        "hybrid",
        description="random | svd / rsvd (both: the federated gradient sketch) | hybrid (sketch until svd_rounds, "
        "then random)",
    )
    svd_rounds: int = Field(4, ge=0, description="hybrid: refreshes at rounds <= svd_rounds use the sketch")
    proj_refresh_rounds: int = Field(2, gt=0, description="a projector is held this many rounds")
    oversampling: int | None = Field(None, ge=0, description="sketch oversampling o; None = r")
    sync: Literal["ajive", "mean", "none", "reset"] = Field(
        "ajive",
        description="projected second moments: ajive / mean (synchronised by the server), none (each client keeps its "
        "own state), reset (fresh every round, nothing sent)",
    )
    moments_on_refresh: Literal["reset", "transport"] = Field("reset", description="moments when the projector changes")
    ajive_samples: int = Field(1000, gt=0, description="Monte-Carlo draws of each AJIVE bound")
    ajive_signal_rank: int | None = Field(None, gt=0, description="AJIVE per-block signal rank; None = scree elbow")
    ajive_joint_rank: int | None = Field(
        None, ge=0, description="fix AJIVE's joint rank; None = estimate it (Wedin and random-direction bounds)"
    )
    ajive_identifiability: bool = Field(
        True,
        description="AJIVE's identifiability check (drops joint components weak in some block, also from a fixed "
        "rank); false needs ajive_joint_rank, so that the fixed rank is really used",
    )
    ajive_input: Literal["v", "sqrt"] = Field(
        "v", description="AJIVE on the moments V_k (v) or on sqrt(V_k), squared back (non-negative by construction)"
    )
    ajive_weighting: Literal["equal", "clients"] = Field(
        "equal", description="AJIVE stacks the clients' moment blocks equally or weighted by their example counts"
    )
    ajive_floor: float = Field(
        0.0, ge=0, lt=1, description="floor V_hat entrywise at ajive_floor x the weighted mean V_bar instead of at 0"
    )
    seed: int | None = Field(
        None, description="seed of the shared random projectors, sketches and AJIVE draws; None = the run seed"
    )
    head_lr: float | None = Field(
        None,
        gt=0,
        description="lr of the densely trained head; None = the run's train.lr (the method's lr is GaLore's)",
    )
    warmup_batches: int = Field(
        1,
        ge=0,
        description="sketch sources: batches per round-1 client whose gradient sketch gives round 1 its projector; 0 "
        "= round 1 is random",
    )
    downlink: Literal["factored", "dense"] = Field(
        "factored", description="global matrices down as factored deltas or dense"
    )
    downlink_history: int = Field(
        8, gt=0, description="factored: rounds of deltas the server keeps; clients further behind get dense"
    )
    diagnostics: bool = Field(
        True, description="update diagnostics of the R_k every round (diag_* metrics, r-space; see fedsub/diagnostics)"
    )

    @model_validator(mode="after")
    def _coherent_ajive_rules(self) -> "FedGaLoreOptions":
        # The four AJIVE rules below are new: refusing them where they would be ignored costs no
        # existing config (ajive_samples & co. stay accepted with any sync, as before).
        defaults = {"ajive_identifiability": True, "ajive_input": "v", "ajive_weighting": "equal", "ajive_floor": 0.0}
        changed = [k for k, v in defaults.items() if getattr(self, k) != v]
        if changed and self.sync != "ajive":
            raise ValueError(
                f"{', '.join(changed)}: only used by sync: ajive, but sync is {self.sync}; drop them or set sync: ajive"
            )
        if not self.ajive_identifiability and self.ajive_joint_rank is None:
            raise ValueError(
                "ajive_identifiability: false needs a fixed ajive_joint_rank (an estimated joint rank keeps the "
                "check); set ajive_joint_rank or drop ajive_identifiability"
            )
        return self
