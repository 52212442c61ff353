"""FedGaLore's payload tensor names, in one codec.

A payload stays a flat name -> tensor map (bytes are counted from it, the server validates it
name by name, and it maps 1:1 onto a Flower ArrayRecord), so the kind of each tensor is in its
name: a model tensor (the head, a dense global matrix) has its parameter name; the rest are
``<part>::<parameter>``, with part R (the factored update R_k), V (the projected second moment),
S (the gradient sketch), P (a sketched projector), and dR<j> / dP<j> for delta j of the factored
downlink. This module is the only place that writes or reads those names.
"""

from __future__ import annotations

from enum import Enum
from typing import Iterable

from fedsub.core.types import Tensors

SEP = "::"


class Part(str, Enum):
    FACTOR = "R"  # m x r (right side) or r x n: W_E = c^E W_t + R P
    MOMENT = "V"  # the bias-corrected projected second moment, same shape as R
    SKETCH = "S"  # sum_s G_s^T Omega: n x (r + o) (right side) or m x (r + o)
    PROJECTOR = "P"  # a sketched projector (random ones are rebuilt from the seed)


def key(part: Part, name: str, delta: int | None = None) -> str:
    """The payload name of `part` of parameter `name` (of delta `delta` of the downlink)."""
    return f"{part.value}{SEP}{name}" if delta is None else f"d{part.value}{delta}{SEP}{name}"


def keys(part: Part, names: Iterable[str], delta: int | None = None) -> list[str]:
    return [key(part, n, delta) for n in names]


def model_tensors(tensors: Tensors) -> Tensors:
    """The payload's model tensors (parameter names), without any part."""
    return {n: t for n, t in tensors.items() if SEP not in n}


def parts(tensors: Tensors, part: Part, names: Iterable[str], delta: int | None = None) -> Tensors:
    """parameter name -> its `part` tensor, for every name in `names`."""
    return {n: tensors[key(part, n, delta)] for n in names}


def has(tensors: Tensors, part: Part, names: Iterable[str], delta: int | None = None) -> bool:
    """Whether the payload holds `part` of every name in `names`."""
    return all(key(part, n, delta) in tensors for n in names)


def named(part: Part, tensors: Tensors, delta: int | None = None) -> Tensors:
    """`tensors` (parameter name -> tensor) under their `part` payload names."""
    return {key(part, n, delta): t for n, t in tensors.items()}
