"""Sample-level differential privacy on each client: DP-SGD (Abadi et al. 2016), config
`privacy.dp.mode: local`.

Every local step draws a Poisson batch (each of the client's n examples joins with probability
q = batch_size / n, so the batch size varies around batch_size), takes each example's gradient of
its own loss with respect to the trained tensors only (Opacus' GradSampleModule hooks; a frozen base
weight gets none), clips each example's gradient to L2 norm C over all trained tensors, sums, adds
Gaussian noise N(0, (z C)^2) to every coordinate and divides by the expected batch size q n. That
noisy mean gradient is what the method's own optimizer (AdamW, GaLore-AdamW) then steps with:
everything a client uploads is a function of these gradients only (post-processing), so the client's
release over all its rounds is the subsampled Gaussian mechanism composed over its steps, which
core/privacy.epsilon accounts (Opacus' RDP accountant at rate q, steps = the client's local steps
summed over the rounds it was sampled in).

Not covered by that guarantee: the scalars a client reports beside its upload (train loss, example
count) and federated evaluation on its held-out rows. Those rows are not trained on, so DP-SGD is not
what would protect them.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch
from torch import nn

from fedsub.core.types import LocalDP


def poisson_batch(indices: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Each index joins independently with probability `rate` (the sampling the accountant assumes)."""
    return indices[torch.rand(len(indices), generator=generator) < rate]


@contextlib.contextmanager
def per_example_gradients(model: nn.Module) -> Iterator[nn.Module]:
    """The model wrapped so that backward leaves each row's gradient in `p.grad_sample` (trained
    tensors only); the hooks and grad_sample fields are gone when the block ends.

    Batch norm runs on its running statistics meanwhile (eval mode): batch statistics would tie each
    example's gradient to the others' (the vision preset's EfficientNet: its per-example gradients
    then differ from each example's own), and updating them would release the raw batch means."""
    from opacus import GradSampleModule  # late: an optional extra (fedsub[dp]), imported when used

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in norms:
        m.eval()
    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=False)
    try:
        yield wrapped
    finally:
        wrapped._close()  # removes the hooks and the grad_sample attributes
        for m in norms:
            m.train()


def example_gradients(params: list[nn.Parameter], examples: int) -> list[torch.Tensor]:
    """Per-example gradients, one [examples, *shape] tensor per parameter. A model that runs several
    rows per example (multiple choice: one row per ending) has row gradients; an example's is the sum
    of its rows' (rows are example-major: the batch is reshaped from [examples, rows, ...])."""
    grads = []
    for p in params:
        rows = p.grad_sample
        if rows.shape[0] != examples:
            rows = rows.reshape(examples, rows.shape[0] // examples, *rows.shape[1:]).sum(1)
        grads.append(rows)
    return grads


def clip_and_noise(
    grads: list[torch.Tensor], clip_norm: float, noise_multiplier: float, expected_batch: float,
    generator: torch.Generator,
) -> list[torch.Tensor]:  # fmt: skip
    """(sum_i g_i min(1, C / |g_i|) + N(0, (z C)^2)) / expected_batch, per parameter; |g_i| over all
    parameters together (the flat clipping Opacus' DPOptimizer does)."""
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)
    scale = (clip_norm / (norms + 1e-6)).clamp(max=1.0)  # Opacus' 1e-6: a zero gradient stays zero
    out = []
    for g in grads:
        total = torch.einsum("i,i...->...", scale.to(g.dtype), g)
        noise = torch.randn(total.shape, generator=generator, dtype=torch.float32) * (noise_multiplier * clip_norm)
        out.append((total + noise.to(total.device, total.dtype)) / expected_batch)
    return out


def private_backward(
    model: nn.Module, loss_of, batch, examples: int, dp: LocalDP, expected_batch: float, generator: torch.Generator
) -> float:
    """Leave the DP-SGD gradient of one Poisson batch in the trained tensors' .grad; returns the
    batch's mean loss (0 for an empty batch, whose gradient is the noise alone)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if examples == 0:
        grads = [torch.zeros(0, *p.shape, dtype=p.dtype, device=p.device) for p in params]
        loss = 0.0
    else:
        with per_example_gradients(model) as wrapped, warnings.catch_warnings():
            # torch warns that the hooks fire although no module input needs grad (the base is frozen)
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            losses = loss_of(wrapped, batch)
            losses.sum().backward()
            grads = example_gradients(params, examples)
            loss = float(losses.detach().mean())
    for p, g in zip(params, clip_and_noise(grads, dp.clip_norm, dp.noise_multiplier, expected_batch, generator)):
        p.grad = g.to(p.device)
    return loss
