import pytest
import torch

from fedsub.core import tensors as T
from fedsub.core.types import Payload


def test_weighted_mean_exact_numbers():
    a = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])}
    b = {"w": torch.tensor([[7.0, 8.0], [9.0, 10.0], [11.0, 12.0]])}
    # n = (1, 3): p = (0.25, 0.75) -> 0.25 a + 0.75 b
    out = T.weighted_mean([a, b], [1, 3])
    assert torch.equal(out["w"], torch.tensor([[5.5, 6.5], [7.5, 8.5], [9.5, 10.5]]))


def test_weighted_mean_keeps_dtype_and_accumulates_in_float32():
    a = {"w": torch.full((2,), 1.0, dtype=torch.bfloat16)}
    b = {"w": torch.full((2,), 2.0, dtype=torch.bfloat16)}
    out = T.weighted_mean([a, b], [1, 1])
    assert out["w"].dtype == torch.bfloat16 and torch.equal(out["w"].float(), torch.tensor([1.5, 1.5]))


def test_weights_must_be_positive_and_match():
    with pytest.raises(ValueError, match="positive"):
        T.normalized_weights([0, 0])
    with pytest.raises(ValueError, match="weights"):
        T.weighted_sum([{"w": torch.zeros(1)}], [0.5, 0.5])


def test_payload_nbytes_counts_tensor_bytes_exactly():
    payload = Payload({"a": torch.zeros(3, 2), "b": torch.zeros(4, dtype=torch.bfloat16)}, {"lr": 0.1})
    assert payload.nbytes() == 3 * 2 * 4 + 4 * 2


def test_max_abs_diff_and_key_mismatch():
    assert T.max_abs_diff({"a": torch.tensor([1.0, 2.0])}, {"a": torch.tensor([1.0, 2.5])}) == 0.5
    with pytest.raises(ValueError, match="different keys"):
        T.max_abs_diff({"a": torch.zeros(1)}, {"b": torch.zeros(1)})
