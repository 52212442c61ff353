"""Shared LoRA maths: grouping names into layers, padding, the factored SVD, clipping and splits."""

import pytest
import torch

from fedsub.lora.aggregate import average_non_lora
from fedsub.lora.maths import clip_factor, factored_svd, fresh_lora_a, pad_rank, slice_rank, split_svd, truncated_svd
from fedsub.lora.names import LoraKeys, lora_layers, non_lora

PREFIX = "base_model.model.bert.encoder.layer.0.attention.self.query"


def test_lora_layers_groups_peft_names_by_prefix():
    names = [
        f"{PREFIX}.lora_A.default.weight",
        f"{PREFIX}.lora_B.default.weight",
        f"{PREFIX}.base_layer.weight",
        "other.lora_A.default.weight",
        "base_model.model.classifier.modules_to_save.default.weight",
    ]
    layers = lora_layers(names)
    assert layers == {PREFIX: LoraKeys(PREFIX, names[0], names[1])}  # "other" has no B
    assert layers[PREFIX].base == f"{PREFIX}.base_layer.weight"
    assert non_lora(names) == [names[2], names[4]]


def test_pad_then_slice_is_the_identity_and_pads_with_zeros():
    b, a = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[4.0, 5.0]])
    b_pad, a_pad = pad_rank(b, a, 3)
    assert torch.equal(b_pad, torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [3.0, 0, 0]]))
    assert torch.equal(a_pad, torch.tensor([[4.0, 5.0], [0, 0], [0, 0]]))
    assert torch.equal(b_pad @ a_pad, b @ a)
    assert all(torch.equal(x, y) for x, y in zip(slice_rank(b_pad, a_pad, 1), (b, a)))
    with pytest.raises(ValueError):
        pad_rank(b_pad, a_pad, 2)


def test_factored_svd_equals_the_dense_svd():
    gen = torch.Generator().manual_seed(0)
    b, a = torch.randn(5, 3, generator=gen, dtype=torch.float64), torch.randn(3, 4, generator=gen, dtype=torch.float64)
    u, s, vh = factored_svd(b, a)
    assert torch.allclose(s, torch.linalg.svdvals(b @ a)[:3], atol=1e-12)
    assert torch.allclose(u @ torch.diag(s) @ vh, b @ a, atol=1e-12)
    assert torch.allclose(u.mT @ u, torch.eye(3, dtype=torch.float64), atol=1e-12)


def test_truncated_svd_pads_when_the_product_has_fewer_components():
    u, s, vh = truncated_svd(torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0, 2.0, 0.0]]), 3)
    assert u.shape == (2, 3) and vh.shape == (3, 3)
    assert torch.equal(s, torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64))


def test_splits_reproduce_the_scaled_product_with_their_orthonormal_factor():
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    s = torch.tensor([8.0, 2.0], dtype=torch.float64)
    vh = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    scale = 2.0
    target = u @ torch.diag(s) @ vh
    b, a = split_svd(u, s, vh, scale, "symmetric")
    assert torch.equal(b, torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64))  # U sqrt(S/s)
    b, a = split_svd(u, s, vh, scale, "orthonormal_a")
    assert torch.equal(a, vh) and torch.equal(scale * b @ a, target)
    b, a = split_svd(u, s, vh, scale, "orthonormal_b")
    assert torch.equal(b, u) and torch.equal(a, torch.tensor([[0.0, 4.0], [1.0, 0.0]], dtype=torch.float64))
    for split in ("symmetric", "orthonormal_a", "orthonormal_b"):
        b, a = split_svd(u, s, vh, scale, split)
        assert torch.equal(scale * b @ a, target), split


def test_clip_factor():
    assert clip_factor(10.0, None) == 1.0
    assert clip_factor(10.0, 20.0) == 1.0
    assert clip_factor(10.0, 4.0) == 0.4


def test_fresh_lora_a_is_seeded_and_within_the_peft_init_bound():
    a = fresh_lora_a(4, 16, seed=3)
    assert torch.equal(a, fresh_lora_a(4, 16, seed=3)) and not torch.equal(a, fresh_lora_a(4, 16, seed=4))
    assert a.shape == (4, 16) and a.dtype == torch.float32 and float(a.abs().max()) <= 0.25  # 1/sqrt(16)


def test_average_non_lora_averages_only_the_head():
    ups = [
        {"h": torch.tensor([1.0]), "x.lora_A.d.w": torch.ones(1)},
        {"h": torch.tensor([3.0]), "x.lora_A.d.w": torch.zeros(1)},
    ]
    assert average_non_lora(ups, [0.25, 0.75]) == {"h": torch.tensor([2.5])}
