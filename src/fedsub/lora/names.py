"""PEFT's LoRA tensor names, grouped into layers: `<prefix>.lora_A.default.weight`,
`<prefix>.lora_B.default.weight`, and the frozen `<prefix>.base_layer.weight` they adapt.

LoRA factors are told apart from other tensors by PEFT's own parameter names (not by prefixes fedsub
invents): every payload of a LoRA method is a name -> tensor map of the model's parameters, so a
factor's name is the parameter it is written into.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

LORA_A, LORA_B, BASE = ".lora_A.", ".lora_B.", ".base_layer.weight"


@dataclass(frozen=True)
class LoraKeys:
    """The tensor names of one LoRA layer (PEFT layout: `<prefix>.lora_A.default.weight`)."""

    prefix: str
    a: str
    b: str

    @property
    def base(self) -> str:
        """The frozen W0 of the layer (`<prefix>.base_layer.weight`), what FLoRA merges into."""
        return self.prefix + BASE


def lora_layers(names: Iterable[str]) -> dict[str, LoraKeys]:
    """Group tensor names into LoRA layers by prefix; a name with only one of A / B is ignored."""
    names = set(names)
    layers = {}
    for a in sorted(n for n in names if LORA_A in n):
        prefix, _, suffix = a.partition(LORA_A)
        b = prefix + LORA_B + suffix
        if b in names:
            layers[prefix] = LoraKeys(prefix, a, b)
    return layers


def is_lora(name: str) -> bool:
    return LORA_A in name or LORA_B in name


def non_lora(names: Iterable[str]) -> list[str]:
    """Trainable tensors that are not LoRA factors (the task head): FedAvg'ed by every method."""
    return [n for n in names if not is_lora(n)]
