"""The SVD-redistribution server that svd_redistribute and subspace_reg share (Subspace-Reg, arXiv
2606.22724; docs/methods.md): ΔW̄ = Σ p_k s B_k A_k from the stacked factors, optional Frobenius
clip, rank-r SVD, a split into (B, A), optional norm-restoring rescale (fedsub.lora.maths.svd_refactor)."""

from __future__ import annotations

from typing import Sequence

from pydantic import Field

from fedsub.core.types import Tensors
from fedsub.lora.adapters import LoraOptions, lora_scale
from fedsub.lora.aggregate import LayerRule, client_pairs
from fedsub.lora.maths import Split, stack_factors, svd_refactor
from fedsub.lora.names import LoraKeys


class SvdOptions(LoraOptions):
    max_update_norm: float | None = Field(
        None, gt=0, description="clip ‖ΔW̄‖_F of each layer's aggregated update (effective, scaled) to this; null = off"
    )
    rescale: bool = Field(True, description="rescale the truncated factors so ‖s B A‖ equals the (clipped) ‖ΔW̄‖")


def svd_rule(options: SvdOptions, split: Split) -> LayerRule:
    """The layer rule: the layer's exact mean update re-factored at `options.rank`, split by `split`."""

    def rule(keys: LoraKeys, uploads: Sequence[Tensors], weights: Sequence[float], start: Tensors) -> Tensors:
        b_stack, a_stack = stack_factors(client_pairs(uploads, keys), weights)
        o = options
        b, a = svd_refactor(b_stack, a_stack, o.rank, lora_scale(o), split, o.max_update_norm, o.rescale)
        return {keys.b: b, keys.a: a}

    return rule
