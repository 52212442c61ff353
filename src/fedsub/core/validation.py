"""Server-side validation of client updates: what is not the expected shape of an honest update is
rejected (with the reason) before it can reach the aggregate.

Engine-agnostic: the simulator and a Flower server call `validate_update` on every reply. The
expected tensors of a client's update come from the method (`update_spec(state, client_id,
payload)`, required by the Method contract): `spec_of(payload.tensors)`, exactly the tensors it was
sent, for every method whose upload is its download (FedAvg family, FedFTG, FlexLoRA, Subspace-Reg).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from fedsub.core.types import ClientUpdate, Payload


@dataclass(frozen=True)
class TensorSpec:
    """An expected tensor: its shape, and its dtype (None: any floating dtype)."""

    shape: tuple[int, ...]
    dtype: torch.dtype | None = None


@dataclass(frozen=True)
class ScalarSpec:
    """An expected scalar of the reply (`Payload.scalars`): a real number (not a bool) within
    [low, high], each bound open when its flag says so (fedgalore's decay: (0, 1])."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def reason(self, name: str, value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"scalar {name!r} is {value!r}, not a number"
        if not math.isfinite(value):
            return f"scalar {name!r} is {value!r}, not finite"
        below = value <= self.low if self.low_open else value < self.low
        above = value >= self.high if self.high_open else value > self.high
        if below or above:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"scalar {name!r} = {value!r} is outside {left}{self.low:g}, {self.high:g}{right}"
        return None


# name -> what an honest reply holds under that name: a tensor, or a scalar (Payload.scalars)
UpdateSpec = dict[str, TensorSpec | ScalarSpec]


def payload_bytes(payload: Any) -> int:
    """Bytes of the tensors of a payload that may be malformed (what crossed the wire, valid or not)."""
    tensors = getattr(payload, "tensors", None)
    if not isinstance(tensors, dict):
        return 0
    return sum(t.numel() * t.element_size() for t in tensors.values() if isinstance(t, torch.Tensor))


def spec_of(tensors: dict[str, torch.Tensor]) -> UpdateSpec:
    return {n: TensorSpec(tuple(t.shape), t.dtype) for n, t in tensors.items()}


def validate_update(
    update: Any, spec: UpdateSpec, sent: Payload, max_norm: float | None = None, client_id: int | None = None,
    known_examples: int | None = None,
) -> str | None:  # fmt: skip
    """None when `update` is acceptable, else the first reason to reject it (one line).

    `max_norm` bounds the L2 norm of each tensor's change from what the client was sent (of the
    tensor itself when nothing of that name was sent, e.g. fresh LoRA factors or GaLore's R).
    `known_examples` is the client's training-row count as the server knows it (its partition, or
    what an own-data node reported): a reply must say exactly that, so no client can outweigh others.
    """
    if not isinstance(update, ClientUpdate):
        return f"reply is a {type(update).__name__}, not a ClientUpdate"
    if client_id is not None and update.client_id != client_id:
        return f"update claims client_id {update.client_id!r}, sent by client {client_id}"
    tensors = update.payload.tensors if isinstance(update.payload, Payload) else None
    if not isinstance(tensors, dict):
        return f"payload is a {type(update.payload).__name__}, not a Payload of named tensors"
    scalars = update.payload.scalars
    if not isinstance(scalars, dict):
        return f"scalars are a {type(scalars).__name__}, not a dict"
    tensor_spec = {n: s for n, s in spec.items() if isinstance(s, TensorSpec)}
    scalar_spec = {n: s for n, s in spec.items() if isinstance(s, ScalarSpec)}
    reason = (
        check_examples(update.num_examples, known_examples)
        or check_names(tensors, tensor_spec)
        or check_scalars(scalars, scalar_spec)
    )
    if reason:
        return reason
    spec = tensor_spec
    for name in spec:
        reason = check_tensor(name, tensors[name], spec[name]) or check_norm(
            name, tensors[name], sent.tensors.get(name), max_norm
        )
        if reason:
            return reason
    return None


def check_examples(num_examples: Any, known: int | None = None) -> str | None:
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples <= 0:
        return f"num_examples {shown(num_examples)} is not a positive integer"
    if known is not None and num_examples != known:
        return f"num_examples {shown(num_examples)} != the client's {known} training rows"
    return None


def shown(value: Any) -> str:
    """A value for a one-line reason: at most 40 characters (str of a 5,000-digit int raises)."""
    try:
        text = repr(value)
    except ValueError:
        return "an integer too long to print"
    return text if len(text) <= 40 else text[:37] + "..."


def check_scalars(scalars: dict, spec: dict[str, ScalarSpec]) -> str | None:
    unexpected = sorted(str(n)[:40] for n in scalars if n not in spec)
    if unexpected:
        return f"unexpected scalar {unexpected[0]!r}"
    for name, scalar in spec.items():
        if name not in scalars:
            return f"missing scalar {name!r}"
        reason = scalar.reason(name, scalars[name])
        if reason:
            return reason
    return None


def check_names(tensors: dict, spec: UpdateSpec) -> str | None:
    unexpected = sorted(str(n) for n in tensors if n not in spec)
    missing = sorted(n for n in spec if n not in tensors)
    if unexpected:
        return f"unexpected tensor {unexpected[0]!r}" + (
            f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        )
    if missing:
        return f"missing tensor {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
    return None


def check_tensor(name: str, value: Any, spec: TensorSpec) -> str | None:
    if not isinstance(value, torch.Tensor):
        return f"tensor {name!r} is a {type(value).__name__}, not a tensor"
    if tuple(value.shape) != spec.shape:
        return f"tensor {name!r} has shape {tuple(value.shape)}, expected {spec.shape}"
    if spec.dtype is not None and value.dtype != spec.dtype:
        got, want = str(value.dtype).removeprefix("torch."), str(spec.dtype).removeprefix("torch.")
        return f"tensor {name!r} has dtype {got}, expected {want}"
    if not value.is_floating_point():
        return f"tensor {name!r} has dtype {str(value.dtype).removeprefix('torch.')}, expected a floating dtype"
    if not bool(torch.isfinite(value).all()):
        return f"tensor {name!r} has non-finite values"
    return None


def check_norm(name: str, value: torch.Tensor, sent: torch.Tensor | None, max_norm: float | None) -> str | None:
    if max_norm is None:
        return None
    change = (
        value.float() - sent.to(value.device).float()
        if sent is not None and sent.shape == value.shape
        else value.float()
    )
    norm = float(torch.linalg.vector_norm(change))
    if not math.isfinite(norm) or norm > max_norm:
        return f"tensor {name!r}: update norm {norm:.4g} > max_norm {max_norm:g}"
    return None
