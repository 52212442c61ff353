"""FedGaLore's factored maths: the server's (and a catching-up client's) update rule, the projector
from an aggregated sketch, and the gradient sketch a client accumulates at backward time."""

from __future__ import annotations

import torch
from torch import Tensor

from fedsub.core.seeding import mix_seed
from fedsub.linalg.svd import seeded_gaussian
from fedsub.optim.projector import choose_side, effective_rank, project_back


def factored_update(weight: Tensor, decay: float, r_bar: Tensor, projector: Tensor) -> Tensor:
    """c_bar W + R_bar P (right) or c_bar W + P R_bar (left), in float32 (float64 for float64 W),
    cast back to W's dtype: one m x n matmul, no per-client dense update."""
    side = choose_side(weight.shape)
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    dense = project_back(r_bar.to(dtype), projector.to(dtype), side)
    return dense.add_(weight.to(dtype), alpha=decay).to(weight.dtype)


def sketch_projector(sketch: Tensor, shape: torch.Size, rank: int) -> Tensor:
    """Top-r basis of the aggregated sketch as a projector: r x n (right) or m x r (left)."""
    u, _, _ = torch.linalg.svd(sketch.to(torch.float64), full_matrices=False)
    basis = u[:, : effective_rank(shape, rank)].to(torch.float32)
    return basis.mT.contiguous() if choose_side(shape) == "right" else basis.contiguous()


def sketch_side(shape: torch.Size | tuple[int, int], width: int) -> tuple[int, int]:
    """The shape of a matrix's sketch: the projected side x min(width, that side)."""
    m, n = shape
    side = m if choose_side(shape) == "left" else n
    return side, min(width, side)


class GradientSketch:
    """S = sum_s G_s^T Omega (right) or G_s Omega (left), accumulated after each backward."""

    def __init__(self, named: dict[str, torch.nn.Parameter], width: int, seed: int):
        self.named, self.omega, self.sums = named, {}, {}
        for index, (name, p) in enumerate(named.items()):
            m, n = p.shape
            right = choose_side(p.shape) == "right"
            k = min(width, n if right else m)
            self.omega[name] = seeded_gaussian((m if right else n, k), mix_seed(seed, index), device=p.device)
            self.sums[name] = torch.zeros((n if right else m, k), device=p.device)

    def accumulate(self) -> None:
        for name, p in self.named.items():
            g = p.grad.float()
            g = g.mT if choose_side(p.shape) == "right" else g
            self.sums[name].addmm_(g, self.omega[name])
