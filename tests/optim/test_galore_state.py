"""GaLoreAdamW state: export/import, per-parameter hooks (FedGaLore), tracked low-rank update."""

import io
import math

import pytest
import torch

from fedsub.linalg.svd import largest_principal_angle
from fedsub.optim import GaLoreAdamW
from fedsub.optim.projector import random_projector, svd_projector, transport_moments

B1, B2 = 0.9, 0.999


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(8, 5), (5, 8), (8,)]
    return [torch.nn.Parameter(0.1 * torch.randn(s, generator=gen)) for s in shapes]


def _grads(step: int, params: list[torch.Tensor]) -> None:
    """Gradients that depend on the step and the weights (so diverging states would show)."""
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(p.dtype) + p.detach()


def _opt(params: list[torch.Tensor], **group) -> GaLoreAdamW:
    return GaLoreAdamW([{"params": params, "rank": 3, **group}], lr=1e-2, weight_decay=0.1)


def _steps(opt: GaLoreAdamW, params: list[torch.Tensor], start: int, count: int) -> None:
    for s in range(start, start + count):
        _grads(s, params)
        opt.step()


@pytest.mark.parametrize("proj_type", ["svd", "rsvd", "random", "given"])
def test_save_and_load_mid_run_continues_identically(proj_type: str) -> None:
    params = _params()
    given = proj_type == "given"  # tracked update needs a fixed P; the others refresh every 3
    opt = _opt(params, proj_type=proj_type, update_proj_gap=3, track_update=given)
    for p in params[:2] if given else []:
        opt.set_projector(p, random_projector(p.shape, 3, seed=5))
    _steps(opt, params, 0, 4)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "w": [p.detach().clone() for p in params]}, buf)
    _steps(opt, params, 4, 5)  # refreshes at step 6 (svd/rsvd/random, seeds from refresh index)
    buf.seek(0)
    saved = torch.load(buf)
    resumed = [torch.nn.Parameter(w) for w in saved["w"]]
    opt2 = _opt(resumed, proj_type="svd", update_proj_gap=99)  # options come from the file
    opt2.load_state_dict(saved["opt"])
    _steps(opt2, resumed, 4, 5)
    assert all(torch.equal(a, b) for a, b in zip(params, resumed))
    for a, b in zip(params[:2], resumed[:2]):
        assert all(torch.equal(opt.state[a][k], opt2.state[b][k]) for k in opt.state[a])


def test_load_keeps_float32_state_for_bf16_params() -> None:
    params = [p.detach().bfloat16().requires_grad_(True) for p in _params()]
    opt = _opt(params, proj_type="random")
    _steps(opt, params, 0, 2)
    opt2 = _opt(params, proj_type="random")
    opt2.load_state_dict(opt.state_dict())  # torch's loader would cast moments to bf16
    state = opt2.state[params[0]]
    assert state["exp_avg_sq"].dtype == torch.float32 and state["projector"].dtype == torch.float32
    assert torch.equal(state["exp_avg_sq"], opt.state[params[0]]["exp_avg_sq"])
    assert state["step"].item() == 2.0 and state["v_step"].device.type == "cpu"
    assert opt2.state[params[2]]["exp_avg"].dtype == torch.bfloat16  # plain AdamW: as torch


def test_same_seed_gives_identical_random_projectors() -> None:
    a, b = _params(0), _params(1)  # different weights and gradients, same shapes
    opt_a, opt_b = (
        _opt(a, proj_type="random", seed=7, update_proj_gap=2),
        _opt(b, proj_type="random", seed=7, update_proj_gap=2),
    )
    opt_c = _opt(_params(0), proj_type="random", seed=8)
    for opt, ps in ((opt_a, a), (opt_b, b), (opt_c, opt_c.param_groups[0]["params"])):
        _steps(opt, ps, 0, 1)
    pa, pb, pc = (
        opt_a.get_projector(a[0]),
        opt_b.get_projector(b[0]),
        opt_c.get_projector(opt_c.param_groups[0]["params"][0]),
    )
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    torch.testing.assert_close(pa @ pa.T, torch.eye(3), atol=1e-6, rtol=0)
    _steps(opt_a, a, 1, 2)
    _steps(opt_b, b, 1, 2)  # step 2 refreshes: a new P, still shared
    assert torch.equal(opt_a.get_projector(a[0]), opt_b.get_projector(b[0]))
    assert not torch.equal(opt_a.get_projector(a[0]), pa)


def test_rsvd_projector_in_the_optimizer_spans_the_svd_subspace() -> None:
    w = torch.nn.Parameter(torch.zeros(40, 30))
    opt = GaLoreAdamW([{"params": [w], "rank": 4, "proj_type": "rsvd"}])
    gen = torch.Generator().manual_seed(3)
    w.grad = torch.randn(40, 4, generator=gen) @ torch.randn(4, 30, generator=gen)
    opt.step()
    assert largest_principal_angle(opt.get_projector(w).T, svd_projector(w.grad, 4).T) < 1e-3


@pytest.mark.parametrize("proj_type", ["given", "svd"])
@pytest.mark.parametrize("index", [0, 1], ids=["right", "left"])
def test_tracked_update_reproduces_the_weights(proj_type: str, index: int) -> None:
    params = _params()
    opt = _opt(params, proj_type=proj_type, track_update=True, scale=0.5)
    if proj_type == "given":
        for p in params[:2]:
            opt.set_projector(p, random_projector(p.shape, 3, seed=1))
    w0 = params[index].detach().clone()
    _steps(opt, params, 0, 10)
    r, decay = opt.get_update_factor(params[index])
    p_mat = opt.get_projector(params[index])
    assert decay == pytest.approx((1 - 1e-2 * 0.1) ** 10, rel=1e-12)
    rebuilt = decay * w0 + (r @ p_mat if index == 0 else p_mat @ r)
    err = (params[index].detach() - rebuilt).norm() / params[index].detach().norm()
    assert err < 1e-6
    assert r.shape == ((8, 3) if index == 0 else (3, 8))


def test_refresh_under_tracking_raises_and_reset_clears() -> None:
    params = _params()
    opt = _opt(params, track_update=True, update_proj_gap=2)
    _steps(opt, params, 0, 2)
    with pytest.raises(RuntimeError, match="reset_update_factor"):
        _steps(opt, params, 2, 1)
    for p in params[:2]:
        opt.reset_update_factor(p)
    r, decay = opt.get_update_factor(params[0])
    assert decay == 1.0 and not r.any()
    _steps(opt, params, 2, 1)  # refresh allowed now
    with pytest.raises(ValueError, match="track_update"):
        fresh = _params()
        _opt(fresh).get_update_factor(fresh[0])


def test_set_projector_moment_policies() -> None:
    params = _params()
    opt = _opt(params, proj_type="given", track_update=True)
    p_old, p_new = random_projector((8, 5), 3, seed=1), random_projector((8, 5), 3, seed=2)
    opt.set_projector(params[0], p_old)
    opt.set_projector(params[1], random_projector((5, 8), 3, seed=1))
    _steps(opt, params[:2], 0, 3)
    m, v = opt.get_first_moment(params[0]), opt.get_second_moment(params[0])
    opt.set_projector(params[0], p_new, moments="transport")
    m_t, v_t = transport_moments(m, v, p_old, p_new, "right")
    torch.testing.assert_close(opt.get_first_moment(params[0]), m_t, rtol=0, atol=0)
    torch.testing.assert_close(opt.get_second_moment(params[0]), v_t, rtol=0, atol=0)
    assert not opt.get_update_factor(params[0])[0].any()  # R is relative to one P: restarted
    opt.set_projector(params[0], p_old, moments="keep")
    assert torch.equal(opt.get_second_moment(params[0]), v_t)
    opt.set_projector(params[0], p_new)  # default: reset
    state = opt.state[params[0]]
    assert not state["exp_avg"].any() and not state["exp_avg_sq"].any()
    assert state["m_step"].item() == 0 and state["v_step"].item() == 0 and state["step"].item() == 3
    with pytest.raises(ValueError, match="shape"):
        opt.set_projector(params[0], p_new.T)
    with pytest.raises(ValueError, match="not GaLore-managed"):
        opt.set_projector(params[2], p_new)


def test_given_projector_must_be_set_before_stepping() -> None:
    params = _params()
    with pytest.raises(RuntimeError, match="set_projector"):
        _steps(_opt(params, proj_type="given"), params, 0, 1)


def _seeded_first_step(v_seed: torch.Tensor, step: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.nn.Parameter(torch.zeros(3, 2))
    opt = GaLoreAdamW([{"params": [w], "rank": 1, "proj_type": "given"}], lr=0.1)
    opt.set_projector(w, torch.tensor([[0.6, 0.8]]))
    opt.set_second_moment(w, v_seed, step=step)
    w.grad = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, -6.0]])  # G P^T = [2.2, 5.0, -1.8]
    opt.step()
    return w.detach(), opt.get_second_moment(w)


def test_seeded_second_moment_is_not_bias_corrected_again() -> None:
    g = torch.tensor([[2.2], [5.0], [-1.8]])
    v_seed = torch.tensor([[4.0], [-1.0], [9.0]])  # -1: clamped to 0
    w, v = _seeded_first_step(v_seed, step=None)
    v_expected = B2 * v_seed.clamp_min(0) + (1 - B2) * g**2
    torch.testing.assert_close(v, v_expected)
    # First moment restarts: m_hat = g; second not corrected: v_hat = v.
    torch.testing.assert_close(w, -0.1 * g / (v_expected.sqrt() + 1e-8) * torch.tensor([[0.6, 0.8]]))
    w_k, _ = _seeded_first_step(v_seed, step=4)  # raw moment after 4 steps: correction continues
    v_hat = v_expected / (1 - B2**5)
    torch.testing.assert_close(w_k, -0.1 * g / (v_hat.sqrt() + 1e-8) * torch.tensor([[0.6, 0.8]]))


def test_set_second_moment_resets_first_moment_and_checks_shape() -> None:
    params = _params()
    opt = _opt(params, proj_type="random")
    _steps(opt, params, 0, 2)
    opt.set_second_moment(params[0], torch.ones(8, 3))
    state = opt.state[params[0]]
    assert not state["exp_avg"].any() and state["m_step"].item() == 0
    assert math.isinf(state["v_step"].item()) and state["step"].item() == 2
    copy = opt.get_second_moment(params[0])
    copy.zero_()  # getters return copies
    assert torch.equal(opt.get_second_moment(params[0]), torch.ones(8, 3))
    opt.set_second_moment(params[1], torch.ones(3, 8), step=2, reset_first_moment=False)
    assert opt.state[params[1]]["m_step"].item() == 2 and opt.state[params[1]]["exp_avg"].any()
    with pytest.raises(ValueError, match="shape"):
        opt.set_second_moment(params[0], torch.ones(3, 8))


def test_bf16_params_keep_float32_state_and_move() -> None:
    params = [p.detach().bfloat16().requires_grad_(True) for p in _params()]
    before = [p.detach().clone() for p in params]
    opt = _opt(params, proj_type="rsvd")
    _steps(opt, params, 0, 3)
    assert opt.get_projector(params[0]).dtype == torch.float32
    assert opt.get_second_moment(params[1]).dtype == torch.float32
    assert all(p.dtype == torch.bfloat16 and not torch.equal(p, b) for p, b in zip(params, before))


def test_invalid_group_options_are_rejected() -> None:
    w = torch.nn.Parameter(torch.zeros(3, 2))
    for bad in ({"proj_type": "qr"}, {"rank": 0}, {"update_proj_gap": 0}, {"refresh_moments": "x"}):
        with pytest.raises(ValueError):
            GaLoreAdamW([{"params": [w], "rank": 1, **bad}])
