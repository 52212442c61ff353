"""SVD redistribution: symmetric split, Frobenius clip, and the norm-restoring rescale."""

import math

import pytest
import torch

from fedsub.core.registry import build_method
from fedsub.core.types import ClientUpdate, Payload, ServerState
from fedsub.lora.maths import stack_factors, svd_refactor

A, B = "q.lora_A.default.weight", "q.lora_B.default.weight"
# p = (1/2, 1/2), s = 2: ΔW̄ = diag(3, 2, 1), ‖ΔW̄‖² = 14; its rank-2 truncation keeps 13.
B1, A1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
B2, A2 = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
STACK = stack_factors([(B1, A1), (B2, A2)], [0.5, 0.5])


def norm(b, a, scale=2.0):
    return float(torch.linalg.matrix_norm(scale * b @ a))


@pytest.mark.parametrize(
    ("max_norm", "rescale", "expected"),
    [
        (None, True, math.sqrt(14)),  # the truncation's lost energy restored
        (None, False, math.sqrt(13)),
        (1.0, True, 1.0),  # clipped, then restored to the clipped norm
        (1.0, False, math.sqrt(13 / 14)),
    ],
)
def test_clip_and_rescale_set_the_norm_of_the_refactored_update(max_norm, rescale, expected):
    b, a = svd_refactor(*STACK, rank=2, scale=2.0, split="symmetric", max_norm=max_norm, rescale=rescale)
    assert norm(b, a) == pytest.approx(expected, abs=1e-12)


def test_symmetric_split_without_rescale_is_the_truncated_svd():
    b, a = svd_refactor(*STACK, rank=2, scale=2.0, split="symmetric")
    expected = torch.diag(torch.tensor([1.5, 1.0], dtype=torch.float64))  # S / s
    assert torch.allclose(b.mT @ b, expected, atol=1e-12) and torch.allclose(a @ a.mT, expected, atol=1e-12)
    assert torch.allclose(2.0 * b @ a, torch.diag(torch.tensor([3.0, 2.0, 0.0], dtype=torch.float64)), atol=1e-12)


def test_aggregate_keeps_the_norm_of_the_averaged_update():
    method = build_method("svd_redistribute", {"rank": 2, "lora_alpha": 4.0})
    assert method.options.rescale and method.options.max_update_norm is None
    state = ServerState(0, {A: torch.zeros(2, 3), B: torch.zeros(3, 2), "head": torch.zeros(1)})
    ups = [
        ClientUpdate(k, Payload({A: a, B: b, "head": torch.tensor([2.0 * k])}), 1)
        for k, (b, a) in enumerate([(B1, A1), (B2, A2)])
    ]
    new, metrics = method.aggregate_train(state, ups)
    assert norm(new.tensors[B].double(), new.tensors[A].double()) == pytest.approx(math.sqrt(14), rel=1e-6)
    assert torch.equal(new.tensors["head"], torch.tensor([1.0]))
    assert metrics["diag_rank_max"] == 3.0 and metrics["diag_truncation_energy"] == pytest.approx(1 / 14, abs=1e-12)
