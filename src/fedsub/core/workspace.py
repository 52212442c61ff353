"""The workspace: the one model object an engine reuses for every client, plus its task and data.

Reusing one model keeps a round's cost at the clients' compute (no per-client model loads). The price
is discipline: `client_train` must first write its whole payload into the model and must never rely
on what the previous client left behind (tested: client B alone equals client A then client B).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import torch
from torch import nn

from fedsub.core.seeding import torch_generator
from fedsub.core.types import ClientContext, Tensors

if TYPE_CHECKING:
    from fedsub.tasks.base import EncodedData, Task  # types only: tasks sit above core


class Workspace:
    def __init__(
        self,
        model: nn.Module,
        task: Task,
        train_data: EncodedData,
        test_data: EncodedData,
        device: str = "cpu",
        head_modules=(),
        target_modules=(),
    ):
        self.model = model.to(device)
        self.task = task
        self.train_data = train_data
        self.test_data = test_data
        self.device = torch.device(device)
        self.head_modules = list(head_modules)  # task-head module names (trained densely by all methods)
        self.target_modules = list(target_modules)  # full names of the linear layers a method adapts

    # ---- reading and writing named tensors
    def parameters_by_name(self) -> dict[str, nn.Parameter]:
        return dict(self.model.named_parameters())

    def trainable_names(self) -> list[str]:
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    def read(self, names: Iterable[str]) -> Tensors:
        """Detached CPU copies of the named parameters (what a client would send)."""
        params = self.parameters_by_name()
        return {n: params[n].detach().to("cpu", copy=True) for n in names}

    @torch.no_grad()
    def write(self, tensors: Tensors) -> None:
        """Copy named tensors into the model's parameters; an unknown name or shape is an error."""
        params = self.parameters_by_name()
        for name, value in tensors.items():
            if name not in params:
                raise KeyError(f"payload tensor {name!r} is not a parameter of the model")
            if params[name].shape != value.shape:
                raise ValueError(f"payload tensor {name!r}: shape {tuple(value.shape)} != {tuple(params[name].shape)}")
            params[name].copy_(value)

    # ---- local training and evaluation
    def client_batches(self, client: ClientContext) -> Iterator[torch.Tensor]:
        """Endless mini-batches over the client's examples, reshuffled every pass, seeded by the client."""
        generator = torch_generator(client.seed)
        indices = client.indices
        if len(indices) == 0:
            raise ValueError(f"client {client.client_id} has no training examples")
        size = min(client.train.batch_size, len(indices))
        while True:
            order = indices[torch.randperm(len(indices), generator=generator)]
            for start in range(0, len(order) - size + 1, size):
                yield order[start : start + size]

    def train_local(
        self,
        client: ClientContext,
        optimizer: torch.optim.Optimizer,
        extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
        after_backward: Callable[[], None] | None = None,
    ) -> dict[str, float]:
        """Run the client's local steps; returns its mean train loss. Dropout is seeded per client.
        Under privacy.dp local the data's gradient is DP-SGD's (core/dp_sgd.py)."""
        torch.manual_seed(client.seed)
        self.model.train()
        steps = client.train.steps_for(len(client.indices))
        params = [p for p in self.model.parameters() if p.requires_grad]
        gradient = (
            self.private_gradients(client, extra_loss) if client.train.dp else self.plain_gradients(client, extra_loss)
        )
        total = 0.0
        for _ in range(steps):
            total += gradient()
            if after_backward:
                after_backward()
            if client.train.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, client.train.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return {"train_loss": total / steps, "steps": float(steps)}

    def plain_gradients(self, client: ClientContext, extra_loss=None) -> Callable[[], float]:
        """One step's gradient of the next mini-batch's mean loss (+ extra_loss), left in .grad;
        returns the data loss."""
        batches = self.client_batches(client)

        def step() -> float:
            loss = self.task.loss(self.model, self.train_data.batch(next(batches), self.device))
            (loss + extra_loss(self.model) if extra_loss else loss).backward()
            return loss.item()

        return step

    def private_gradients(self, client: ClientContext, extra_loss=None) -> Callable[[], float]:
        """One step's DP-SGD gradient of a Poisson batch at rate batch_size / n (core/dp_sgd.py)."""
        from fedsub.core import dp_sgd  # late: imports opacus (the optional extra fedsub[dp])

        dp, indices = client.train.dp, client.indices
        # os_noise: a deployment's server knows the run seed, so its clients' noise must not derive from it
        generator = torch_generator(int.from_bytes(os.urandom(7), "little") if dp.os_noise else client.seed)
        rate = min(1.0, client.train.batch_size / len(indices))

        def step() -> float:
            batch = dp_sgd.poisson_batch(indices, rate, generator)
            data = self.train_data.batch(batch, self.device) if len(batch) else None
            loss = dp_sgd.private_backward(
                self.model, self.task.example_losses, data, len(batch), dp, rate * len(indices), generator
            )
            if extra_loss:  # a penalty on the parameters alone (no data): its gradient is added as it is
                extra_loss(self.model).backward()
            return loss

        return step

    def evaluate(self, batch_size: int) -> dict[str, float]:
        return self.task.evaluate(self.model, self.test_data, batch_size, self.device)
