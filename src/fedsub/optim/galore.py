"""GaLore-AdamW with tensor-only, exportable state.

GaLore (Zhao et al. 2024, "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection",
arXiv 2403.03507) runs Adam on a rank-r projection of each selected weight's gradient and projects
the normalised step back. The official implementation keeps the projector inside a Python object, so
its state cannot be exported, resumed or handed to another client. Here everything is a tensor in
``optimizer.state[p]``:

- ``step``: steps taken (CPU float32 scalar, as torch AdamW); drives the refresh schedule;
- ``m_step`` / ``v_step``: steps counted in each moment's bias correction (``v_step = inf``: none);
- ``exp_avg`` / ``exp_avg_sq``: Adam moments of the projected gradient (m x r right, r x n left);
- ``projector``: P (r x n right side, m x r left side), absent until built or set;
- ``update_R`` / ``update_decay`` (``track_update`` only): R and the product of decay factors.

Moments, projector and R are float32 for 16-bit parameters (float64 parameters keep float64):
their memory is small (max(m, n) x r) and bf16 moments would lose the Adam update's small terms.
Matmuls with the m x n gradient or weight run in the parameter's dtype on accelerators and in
float32 on CPU (see :func:`fedsub.optim.projector.project`).

Parameters outside a GaLore group (no ``rank``) and non-2-D parameters follow torch.optim.AdamW's
single-tensor (``foreach=False``) code path operation for operation, so they match it bit for bit.

Weight decay is decoupled and applied first, as torch AdamW: ``W <- c W - lr scale back(N)`` with
``c = 1 - lr wd`` and ``N = m_hat / (sqrt(v_hat) + eps)``. With P fixed, W_E = (prod c) W_0 + R P where
``R <- c R - lr scale N`` (see :meth:`GaLoreAdamW.get_update_factor`). docs/methods.md writes the
recurrence as ``c (R - lr scale N)``, i.e. decay after the update as galore-torch does; the two differ
by O(lr^2 wd) and the decay-first form is the one that reduces to torch AdamW.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from fedsub.core.seeding import mix_seed
from fedsub.optim.projector import (
    add_projected_back_,
    choose_side,
    moment_shape,
    project,
    projector_shape,
    random_projector,
    rsvd_projector,
    svd_projector,
    transport_moments,
)

__all__ = ["GaLoreAdamW", "PROJ_TYPES", "MOMENT_POLICIES"]

PROJ_TYPES = ("svd", "rsvd", "random", "given")
MOMENT_POLICIES = ("keep", "reset", "transport")
_CPU_KEYS = ("step", "m_step", "v_step", "update_decay")  # scalars kept on CPU: no device sync


def _state_dtype(param: Tensor) -> torch.dtype:
    """float32 state for 16-bit parameters, otherwise the parameter's own dtype."""
    return torch.float32 if param.dtype in (torch.float16, torch.bfloat16) else param.dtype


def _check_hyper(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    if lr < 0.0:
        raise ValueError(f"invalid lr {lr}: must be >= 0")
    if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
        raise ValueError(f"invalid betas {betas}: each must be in [0, 1)")
    if eps < 0.0 or weight_decay < 0.0:
        raise ValueError(f"invalid eps {eps} or weight_decay {weight_decay}: must be >= 0")


def _check_group(group: dict[str, Any]) -> None:
    """Reject impossible GaLore options early, naming the option."""
    _check_hyper(group["lr"], group["betas"], group["eps"], group["weight_decay"])
    if group["rank"] is None:
        return
    if int(group["rank"]) < 1:
        raise ValueError(f"rank must be >= 1, got {group['rank']}")
    if int(group["update_proj_gap"]) < 1:
        raise ValueError(f"update_proj_gap must be >= 1, got {group['update_proj_gap']}")
    if group["proj_type"] not in PROJ_TYPES:
        raise ValueError(f"proj_type must be one of {PROJ_TYPES}, got {group['proj_type']!r}")
    if group["refresh_moments"] not in MOMENT_POLICIES:
        raise ValueError(f"refresh_moments must be one of {MOMENT_POLICIES}")
    if group["oversampling"] < 0 or group["power_iters"] < 0:
        raise ValueError("oversampling and power_iters must be >= 0")


def _adamw_step(param: Tensor, state: dict[str, Tensor], group: dict[str, Any]) -> None:
    """torch.optim.adam._single_tensor_adam (decoupled decay, no amsgrad), op for op."""
    grad = param.grad
    if not state:
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    state["step"] += 1
    if wd != 0:
        param.mul_(1 - lr * wd)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step = state["step"].item()
    step_size = lr / (1 - beta1**step)
    denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)


class GaLoreAdamW(Optimizer):
    """AdamW with GaLore gradient projection for selected 2-D parameters (arXiv 2403.03507).

    A parameter is GaLore-managed when it is 2-D and its group sets ``rank``. Group options
    (defaults from the constructor keywords):

    - ``rank``: projection rank r (clamped to min(m, n)); ``None`` means plain AdamW.
    - ``update_proj_gap``: rebuild P at steps 0, gap, 2 gap, ... (as the official GaLore).
    - ``scale``: multiplier of the back-projected step (GaLore's alpha).
    - ``proj_type``: ``svd`` | ``rsvd`` | ``random`` | ``given`` (never rebuilt; set it with
      :meth:`set_projector` before the first step).
    - ``seed``: base seed for ``random`` projectors and rsvd sketches; the per-matrix seed is
      ``mix_seed(seed, index of the parameter in this optimizer, refresh index)``, so two
      optimizers built over the same parameter list get identical projectors.
    - ``oversampling``, ``power_iters``: rsvd accuracy knobs.
    - ``refresh_moments``: what an internal refresh does to the moments: ``keep`` (official
      GaLore), ``reset`` or ``transport`` (see :func:`fedsub.optim.projector.transport_moments`).
    - ``track_update``: maintain R and the decay product for :meth:`get_update_factor`.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        rank: int | None = None,
        update_proj_gap: int = 200,
        scale: float = 1.0,
        proj_type: str = "svd",
        seed: int = 0,
        oversampling: int = 10,
        power_iters: int = 2,
        refresh_moments: str = "keep",
        track_update: bool = False,
    ) -> None:
        # Parameter order -> index, the stable per-matrix key for derived seeds.
        self._index: dict[Tensor, int] = {}
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rank=rank,
            update_proj_gap=update_proj_gap, scale=scale, proj_type=proj_type, seed=seed,
            oversampling=oversampling, power_iters=power_iters,
            refresh_moments=refresh_moments, track_update=track_update,
        )  # fmt: skip
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (validated); its parameters get the next indices for seed derivation."""
        super().add_param_group(param_group)
        _check_group(self.param_groups[-1])
        for p in self.param_groups[-1]["params"]:
            self._index[p] = len(self._index)

    # ------------------------------------------------------------------ stepping
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One optimisation step over every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("GaLoreAdamW does not support sparse gradients")
                if self._managed(p, group):
                    self._galore_step(p, group)
                else:
                    _adamw_step(p, self.state[p], group)
        return loss

    @staticmethod
    def _managed(p: Tensor, group: dict[str, Any]) -> bool:
        return group["rank"] is not None and p.ndim == 2

    def _galore_step(self, p: Tensor, group: dict[str, Any]) -> None:
        state = self._ensure_state(p, group)
        if self._refresh_due(state, group):
            self._refresh(p, group, state)
        side = choose_side(p.shape)
        proj = state["projector"]
        low = project(p.grad, proj, side)
        normalised, bc1 = self._adam_direction(state, group, low)
        alpha = -group["lr"] * group["scale"] / bc1
        decay = 1.0 - group["lr"] * group["weight_decay"]
        add_projected_back_(p, normalised, proj, side, alpha=alpha, beta=decay)
        if "update_R" in state:
            state["update_R"].mul_(decay).add_(normalised, alpha=alpha)
            state["update_decay"].mul_(decay)

    @staticmethod
    def _adam_direction(state: dict[str, Tensor], group: dict[str, Any], low: Tensor) -> tuple[Tensor, float]:
        """Update the moments with ``low``; return m / (sqrt(v_hat) + eps) and 1 - beta1^t.

        The first-moment correction is left to the caller (it folds into the step size, as in
        torch AdamW); the two moments count their own steps (FedGaLore point 4).
        """
        beta1, beta2 = group["betas"]
        for key in ("step", "m_step", "v_step"):
            state[key] += 1
        state["exp_avg"].lerp_(low, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(low, low, value=1 - beta2)
        bc1 = 1 - beta1 ** state["m_step"].item()
        bc2 = 1 - beta2 ** state["v_step"].item()  # v_step = inf -> beta2**inf = 0 -> bc2 = 1
        denom = (state["exp_avg_sq"].sqrt() / bc2**0.5).add_(group["eps"])
        return state["exp_avg"] / denom, bc1

    def _refresh_due(self, state: dict[str, Tensor], group: dict[str, Any]) -> bool:
        if "projector" not in state:
            return True
        if group["proj_type"] == "given":
            return False
        return int(state["step"].item()) % int(group["update_proj_gap"]) == 0

    def _refresh(self, p: Tensor, group: dict[str, Any], state: dict[str, Tensor]) -> None:
        """Rebuild P from the current gradient (svd/rsvd) or from the derived seed (random)."""
        kind = group["proj_type"]
        if kind == "given":
            raise RuntimeError("proj_type='given' needs set_projector(param, P) before step()")
        if "projector" in state and "update_R" in state and self._segment_started(state):
            raise RuntimeError(
                "projector refresh would invalidate the tracked update R (defined w.r.t. the "
                "old P): read it and call reset_update_factor first, or use proj_type='given'"
            )
        refresh = int(state["step"].item()) // int(group["update_proj_gap"])
        seed = mix_seed(group["seed"], self._index[p], refresh)
        dtype = _state_dtype(p)
        if kind == "svd":
            proj = svd_projector(p.grad, group["rank"], dtype=dtype)
        elif kind == "rsvd":
            proj = rsvd_projector(
                p.grad, group["rank"], oversampling=group["oversampling"],
                power_iters=group["power_iters"], seed=seed, dtype=dtype,
            )  # fmt: skip
        else:
            proj = random_projector(p.shape, group["rank"], seed, dtype=dtype, device=p.device)
        # The very first projector has no previous basis: moments (possibly seeded) stay as they are.
        policy = group["refresh_moments"] if "projector" in state else "keep"
        self._install_projector(state, proj, policy, choose_side(p.shape))

    @staticmethod
    def _segment_started(state: dict[str, Tensor]) -> bool:
        return state["update_decay"].item() != 1.0 or bool(state["update_R"].any())

    @staticmethod
    def _install_projector(state: dict[str, Tensor], proj: Tensor, moments: str, side: str) -> None:
        """Store P; reset, keep or transport the moments relative to the previous P."""
        old = state.get("projector")
        if moments == "reset":
            for key in ("exp_avg", "exp_avg_sq"):
                state[key].zero_()
            state["m_step"].zero_()
            state["v_step"].zero_()
        elif moments == "transport" and old is not None:
            m, v = transport_moments(state["exp_avg"], state["exp_avg_sq"], old, proj, side)
            state["exp_avg"].copy_(m)
            state["exp_avg_sq"].copy_(v.clamp_min_(0))
        state["projector"] = proj

    def _ensure_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """Initialise a managed parameter's state (zeros, no projector) on first use."""
        state = self.state[p]
        if state:
            return state
        shape = moment_shape(p.shape, group["rank"])
        dtype = _state_dtype(p)
        for key in ("step", "m_step", "v_step"):
            state[key] = torch.tensor(0.0, dtype=torch.float32)
        state["exp_avg"] = torch.zeros(shape, dtype=dtype, device=p.device)
        state["exp_avg_sq"] = torch.zeros(shape, dtype=dtype, device=p.device)
        if group["track_update"]:
            state["update_R"] = torch.zeros(shape, dtype=dtype, device=p.device)
            state["update_decay"] = torch.tensor(1.0, dtype=torch.float64)
        return state

    # ------------------------------------------------------------------ hooks
    def is_galore(self, p: Tensor) -> bool:
        """Whether ``p`` is GaLore-managed (2-D, in a group with ``rank``)."""
        return self._managed(p, self._group_of(p))

    def galore_params(self) -> list[Tensor]:
        """All GaLore-managed parameters, in optimizer order."""
        return [p for g in self.param_groups for p in g["params"] if self._managed(p, g)]

    def _group_of(self, p: Tensor) -> dict[str, Any]:
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                return group
        raise KeyError("parameter is not handled by this optimizer")

    def _galore_state(self, p: Tensor) -> dict[str, Tensor]:
        group = self._group_of(p)
        if not self._managed(p, group):
            raise ValueError(f"parameter of shape {tuple(p.shape)} is not GaLore-managed")
        return self._ensure_state(p, group)

    def set_projector(self, p: Tensor, projector: Tensor, *, moments: str = "reset") -> None:
        """Install P for ``p`` (``given`` projectors, server-shared projectors).

        ``moments``: ``reset`` (zero both moments and their step counts; docs/methods.md default),
        ``keep`` (leave them, as GaLore does at a refresh) or ``transport`` (map them to the new
        basis). A tracked update (``track_update``) restarts from zero: R is relative to one P.
        P is copied, cast to the state dtype and moved to ``p``'s device.
        """
        if moments not in MOMENT_POLICIES:
            raise ValueError(f"moments must be one of {MOMENT_POLICIES}, got {moments!r}")
        state = self._galore_state(p)
        expected = projector_shape(p.shape, self._group_of(p)["rank"])
        if tuple(projector.shape) != expected:
            raise ValueError(f"projector shape {tuple(projector.shape)} != expected {expected}")
        proj = projector.detach().to(device=p.device, dtype=_state_dtype(p), copy=True)
        self._install_projector(state, proj, moments, choose_side(p.shape))
        if "update_R" in state:
            self.reset_update_factor(p)

    def get_projector(self, p: Tensor) -> Tensor | None:
        """A copy of ``p``'s current projector, or ``None`` before it is built."""
        proj = self._galore_state(p).get("projector")
        return None if proj is None else proj.clone()

    def set_second_moment(
        self,
        p: Tensor,
        v: Tensor,
        *,
        step: float | None = None,
        corrected: bool = False,
        reset_first_moment: bool = True,
    ) -> None:
        """Seed the projected second moment of ``p`` (FedGaLore point 4: synchronised V_hat).

        ``step=None`` (default): ``v`` is used as it is and never bias-corrected again (its step
        count becomes ``inf``: 1 - beta2^inf = 1). ``step=k``: the correction continues from k;
        ``v`` is the raw moment after k steps, or with ``corrected=True`` the bias-corrected
        estimate v_raw / (1 - beta2^k) (what :meth:`get_second_moment` returns with
        ``corrected=True``), stored back as v (1 - beta2^k), so that set(get(corrected)) continues
        the same trajectory. ``v`` is clamped at 0 (sqrt). ``reset_first_moment``: the first moment
        restarts at zero with its own correction. Call it after :meth:`set_projector` with
        ``moments='reset'``, which would zero it.
        """
        state = self._galore_state(p)
        if tuple(v.shape) != tuple(state["exp_avg_sq"].shape):
            raise ValueError(f"second moment shape {tuple(v.shape)} != {tuple(state['exp_avg_sq'].shape)}")
        if corrected and step is None:
            raise ValueError("corrected=True needs the step count the estimate was corrected with")
        raw = v.detach().clamp_min(0)
        if corrected:
            raw = raw * (1 - self._group_of(p)["betas"][1] ** float(step))
        state["exp_avg_sq"].copy_(raw)
        state["v_step"].fill_(math.inf if step is None else float(step))
        if reset_first_moment:
            state["exp_avg"].zero_()
            state["m_step"].zero_()

    def get_second_moment(self, p: Tensor, *, corrected: bool = False) -> Tensor:
        """A copy of the projected second moment (m x r right side, r x n left side); with
        ``corrected=True`` the bias-corrected estimate v / (1 - beta2^t), t = :meth:`second_moment_step`."""
        state = self._galore_state(p)
        if not corrected or state["v_step"].item() == 0:  # no step yet: v = 0, nothing to correct
            return state["exp_avg_sq"].clone()
        return state["exp_avg_sq"] / (1 - self._group_of(p)["betas"][1] ** state["v_step"].item())

    def second_moment_step(self, p: Tensor) -> float:
        """Steps counted in the second moment's bias correction (``inf``: none)."""
        return float(self._galore_state(p)["v_step"].item())

    def get_first_moment(self, p: Tensor) -> Tensor:
        """A copy of the projected first moment."""
        return self._galore_state(p)["exp_avg"].clone()

    def get_update_factor(self, p: Tensor) -> tuple[Tensor, float]:
        """``(R, decay)`` with ``W_now = decay * W_reset + R P`` (FedGaLore point 3(a)).

        Requires ``track_update=True``. R accumulates ``R <- c R - lr scale N`` from the last
        reset, decay is the product of c = 1 - lr wd; exact while P stays fixed.
        """
        state = self._galore_state(p)
        if "update_R" not in state:
            raise ValueError("update tracking is off: set track_update=True in the param group")
        return state["update_R"].clone(), float(state["update_decay"].item())

    def reset_update_factor(self, p: Tensor) -> None:
        """Start a new tracked segment from the current weights: R = 0, decay = 1."""
        state = self._galore_state(p)
        if "update_R" not in state:
            raise ValueError("update tracking is off: set track_update=True in the param group")
        state["update_R"].zero_()
        state["update_decay"].fill_(1.0)

    # ------------------------------------------------------------------ state
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load state; GaLore tensors keep their saved dtype (torch would cast them to the
        parameter's, e.g. float32 moments to bf16) and counters stay on CPU. Tensors are copied."""
        saved_state = state_dict["state"]
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params, strict=True):
            if pid in saved_state and self.is_galore(p):
                self.state[p] = {
                    k: v.to(device="cpu" if k in _CPU_KEYS else p.device, copy=True)
                    for k, v in saved_state[pid].items()
                }
