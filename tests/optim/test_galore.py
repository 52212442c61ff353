"""GaLoreAdamW against references: torch AdamW, a hand computation, and the official galore-torch."""

import importlib
import importlib.util
import sys
import types

import pytest
import torch

from fedsub.optim import GaLoreAdamW
from fedsub.optim.projector import svd_projector

GEN = torch.Generator().manual_seed(0)
X = torch.randn(16, 6, generator=GEN)
Y = torch.randn(16, 6, generator=GEN)


def _loss(w: torch.Tensor) -> torch.Tensor:
    """Least squares on the first in/out features: gives full-rank, changing gradients."""
    out, inp = w.shape
    return ((X[:, :inp] @ w.T - Y[:, :out]) ** 2).mean()


def _grad_at(w: torch.Tensor) -> torch.Tensor:
    w = w.detach().clone().requires_grad_(True)
    _loss(w).backward()
    return w.grad


def _run(opt: torch.optim.Optimizer, w: torch.nn.Parameter, steps: int, loss=_loss) -> None:
    for _ in range(steps):
        opt.zero_grad()
        loss(w).backward()
        opt.step()


def _param(shape: tuple[int, int], seed: int = 1) -> torch.nn.Parameter:
    return torch.nn.Parameter(0.1 * torch.randn(shape, generator=torch.Generator().manual_seed(seed)))


def test_plain_params_are_bit_identical_to_torch_adamw() -> None:
    ours = [_param((6, 4), 2), torch.nn.Parameter(torch.zeros(6)), _param((5, 5), 3)]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    hyper = dict(lr=3e-2, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.1)
    # A 2-D param without rank, and a 1-D param inside a GaLore group: both plain AdamW.
    opt = GaLoreAdamW([{"params": ours[:1]}, {"params": ours[1:2], "rank": 2}], **hyper)
    opt.add_param_group({"params": ours[2:], "weight_decay": 0.0})
    ref_opt = torch.optim.AdamW([{"params": ref[:1]}, {"params": ref[1:2]}], foreach=False, **hyper)
    ref_opt.add_param_group({"params": ref[2:], "weight_decay": 0.0})
    for _ in range(20):
        for params, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad()
            ((X[:, :4] @ params[0].T + params[1] - Y) ** 2).mean().add(params[2].pow(3).sum()).backward()
            o.step()
    assert all(torch.equal(a, b) for a, b in zip(ours, ref))
    assert not opt.is_galore(ours[1])


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)], ids=["right", "left"])
def test_full_rank_identity_projector_matches_adamw(shape: tuple[int, int]) -> None:
    w, w_ref = _param(shape), _param(shape)
    opt = GaLoreAdamW([{"params": [w], "rank": 4, "proj_type": "given"}], lr=1e-2, weight_decay=0.05)
    opt.set_projector(w, torch.eye(4))
    ref = torch.optim.AdamW([w_ref], lr=1e-2, weight_decay=0.05, foreach=False)
    _run(opt, w, 20)
    _run(ref, w_ref, 20)
    torch.testing.assert_close(w.detach(), w_ref.detach(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)], ids=["right", "left"])
def test_full_rank_svd_matches_adamw_in_the_projected_coordinates(shape: tuple[int, int]) -> None:
    """At r = min(m, n) the SVD projector P is orthogonal and GaLore is exactly AdamW on
    W' = W P^T (right; P^T W left). It is not AdamW on W itself: Adam's elementwise second moment
    is not rotation invariant (the last assertion shows the gap is real)."""
    w = _param(shape)
    p = svd_projector(_grad_at(w), 4)  # the projector GaLore builds at step 0
    right = shape[0] >= shape[1]
    w_rot = torch.nn.Parameter((w @ p.T if right else p.T @ w).detach().clone())
    opt = GaLoreAdamW([{"params": [w], "rank": 4, "update_proj_gap": 1000}], lr=1e-2, weight_decay=0.05)
    ref = torch.optim.AdamW([w_rot], lr=1e-2, weight_decay=0.05, foreach=False)
    _run(opt, w, 20)
    _run(ref, w_rot, 20, loss=lambda v: _loss(v @ p if right else p @ v))
    torch.testing.assert_close(w.detach(), (w_rot @ p if right else p @ w_rot).detach(), atol=1e-5, rtol=0)
    w_plain = _param(shape)
    _run(torch.optim.AdamW([w_plain], lr=1e-2, weight_decay=0.05), w_plain, 20)
    assert (w - w_plain).abs().max() > 1e-2


def test_rank_one_right_side_two_steps_by_hand() -> None:
    lr, scale, b1, b2, eps = 0.1, 0.5, 0.9, 0.999, 1e-8
    w = torch.nn.Parameter(torch.zeros(3, 2))
    p = torch.tensor([[0.6, 0.8]])
    opt = GaLoreAdamW([{"params": [w], "rank": 1, "scale": scale, "proj_type": "given"}], lr=lr, eps=eps)
    opt.set_projector(w, p)
    w.grad = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, -6.0]])  # G P^T = [2.2, 5.0, -1.8]
    opt.step()
    # Step 1: m_hat = g, v_hat = g^2, so N = sign(g) (up to eps): W = -lr scale sign(g) P.
    torch.testing.assert_close(w.detach(), torch.tensor([[-0.03, -0.04], [-0.03, -0.04], [0.03, 0.04]]))
    w.grad = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])  # G P^T = [0.8, 0.6, 2.8]
    opt.step()
    g1, g2 = torch.tensor([2.2, 5.0, -1.8]), torch.tensor([0.8, 0.6, 2.8])
    m = (b1 * (1 - b1) * g1 + (1 - b1) * g2) / (1 - b1**2)
    v = (b2 * (1 - b2) * g1**2 + (1 - b2) * g2**2) / (1 - b2**2)
    n2 = m / (v.sqrt() + eps)
    expected = -lr * scale * (torch.sign(g1) + n2)[:, None] * p
    torch.testing.assert_close(w.detach(), expected, atol=1e-7, rtol=0)
    assert opt.get_second_moment(w).shape == (3, 1)


def test_rank_one_left_side_is_the_transpose() -> None:
    ws = [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(2, 3))]
    opt = GaLoreAdamW([{"params": ws, "rank": 1, "proj_type": "given", "weight_decay": 0.1}], lr=0.1)
    opt.set_projector(ws[0], torch.tensor([[0.6, 0.8]]))
    opt.set_projector(ws[1], torch.tensor([[0.6], [0.8]]))
    for g in (torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, -6.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])):
        ws[0].grad, ws[1].grad = g, g.T.clone()
        opt.step()
    assert ws[1].shape == (2, 3) and opt.get_second_moment(ws[1]).shape == (1, 3)
    torch.testing.assert_close(ws[1].detach(), ws[0].detach().T, atol=1e-7, rtol=0)


def _official_galore_adamw() -> type | None:
    """galore-torch's AdamW without its package __init__ (which imports bitsandbytes for the
    8-bit optimizer): load the package's folder under a private name, then its `adamw` module."""
    spec = importlib.util.find_spec("galore_torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    if "_galore_torch_ref" not in sys.modules:
        pkg = types.ModuleType("_galore_torch_ref")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["_galore_torch_ref"] = pkg
    return importlib.import_module("_galore_torch_ref.adamw").AdamW


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)], ids=["right", "left"])
def test_low_rank_matches_official_galore_torch(shape: tuple[int, int]) -> None:
    official = _official_galore_adamw()
    if official is None:
        pytest.skip("galore-torch not installed (pip install --no-deps galore-torch==1.0)")
    w, w_ref = _param(shape), _param(shape)
    galore = dict(rank=2, update_proj_gap=4, scale=0.25)
    # weight_decay 0: galore-torch decays after the update, torch AdamW (and we) before it.
    # eps 1e-12: galore-torch adds eps to sqrt(v) before the bias correction (effective eps is
    # eps / sqrt(1 - beta2^t), 31x larger at step 1), which with eps 1e-8 moves coordinates whose
    # projected gradient is ~1e-6 by up to 1e-6 absolute; with 1e-12 only rounding differs.
    opt = GaLoreAdamW([{"params": [w], **galore}], lr=1e-2, eps=1e-12)
    ref = official([{"params": [w_ref], "proj_type": "std", **galore}], lr=1e-2, eps=1e-12, no_deprecation_warning=True)
    for _ in range(10):  # three projector refreshes (steps 0, 4, 8), moments kept across them
        _run(opt, w, 1)
        _run(ref, w_ref, 1)
        torch.testing.assert_close(w.detach(), w_ref.detach(), atol=2e-7, rtol=0)
    ref_p = ref.state[w_ref]["projector"].ortho_matrix
    torch.testing.assert_close(opt.get_projector(w), ref_p, atol=5e-6, rtol=0)
