"""Vision: EfficientNet-Lite0's weights load strictly and classify scikit-learn's sample photo;
pointwise convs as linears and conv kernels as matrices are exact; image preprocessing."""

import numpy as np
import pytest
import torch
from torch import nn

from fedsub.models.vision import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PointwiseConv,
    efficientnet_weights_path,
    load_efficientnet_lite0,
    pointwise,
)
from fedsub.optim.galore_model import MatrixConv2d, as_matrix_modules
from fedsub.tasks.vision import to_pixels

# ImageNet classes of the buildings in sklearn's china.jpg (a temple roof): bell cote, castle,
# church, dome, monastery, mosque, palace, stupa
BUILDINGS = {442, 483, 497, 538, 663, 668, 698, 832}
STATS = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)


@pytest.mark.slow
def test_efficientnet_lite0_loads_strictly_and_sees_a_building_in_the_sample_photo():
    from sklearn.datasets import load_sample_image

    state = torch.load(efficientnet_weights_path(), map_location="cpu", weights_only=True)
    model = load_efficientnet_lite0().eval()
    assert len(state) == 296 and len(model.state_dict()) == 296  # load_state_dict(strict=True) inside
    photo = torch.from_numpy(load_sample_image("china.jpg").copy())[None]  # 427 x 640 x 3 uint8
    with torch.no_grad():
        probs = model(to_pixels(photo, 224, *STATS)).softmax(-1)[0]
    top = int(probs.argmax())
    assert top in BUILDINGS and probs[top] > 0.25, (top, float(probs[top]))
    assert float(probs[list(BUILDINGS)].sum()) > 0.6


def test_pointwise_linear_equals_the_1x1_conv_it_loads():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 1, bias=False)
    linear = PointwiseConv(6, 4)
    linear.load_state_dict({"weight": conv.weight.detach().clone()}, strict=True)  # 4 x 6 x 1 x 1 -> 4 x 6
    x = torch.randn(2, 6, 5, 5)
    assert torch.allclose(pointwise(linear, x), conv(x), atol=1e-6)


def test_conv_kernel_as_matrix_gives_the_same_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, stride=2))
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    as_matrix_modules(model, ["0"])
    assert isinstance(model[0], MatrixConv2d) and model[0].weight.shape == (5, 27)
    assert torch.allclose(model(x), before, atol=1e-6)


def test_to_pixels_resizes_grey_images_to_three_normalised_channels():
    images = torch.from_numpy(np.full((2, 8, 8), 255, dtype=np.uint8))
    pixels = to_pixels(images, 32, *STATS)
    assert pixels.shape == (2, 3, 32, 32)
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(pixels[0, :, 5, 5], expected, atol=1e-5)


def test_batch_norm_statistics_stay_frozen_in_training(task_data):
    model = load_efficientnet_lite0(3, tiny=True).train()
    before = model._bn0.running_mean.clone()
    model(torch.randn(4, 3, 32, 32) + 3.0)
    assert torch.equal(model._bn0.running_mean, before) and model.training
