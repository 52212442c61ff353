"""Tasks: what a model learns and how it is scored, behind one interface the engines and methods use
(the `Task` protocol, fedsub.tasks.base: ``encode_dataset``, ``loss``, ``evaluate``, ``metric``,
``metric_keys``); `build_task` picks the config's.
"""

from __future__ import annotations

import torch
from torch import nn

from fedsub.config import ConfigError, ExperimentConfig
from fedsub.tasks.base import Task

INPUTS = {"classification": "text", "generation": "text", "multiple_choice": "text", "image_classification": "image"}


def check_input(cfg: ExperimentConfig, input_column: str) -> None:
    """Text tasks need a text dataset and image tasks an image one."""
    kind = cfg.task.kind
    wants_image = INPUTS[kind] == "image"
    if wants_image != (input_column == "image"):
        hint = "task.kind=image_classification" if input_column == "image" else "a text dataset"
        raise ConfigError(f"field task.kind: {kind} cannot use {cfg.data.dataset} (its input is {input_column}); use {hint}")


def build_task(cfg: ExperimentConfig, input_column: str, num_labels: int) -> Task:
    """The task object of the config (tokenizer / image preprocessing loaded here)."""
    check_input(cfg, input_column)
    kind = cfg.task.kind
    if kind == "image_classification":
        from fedsub.tasks.vision import ImageClassificationTask
        from fedsub.vision_models import image_preprocessing

        pre = image_preprocessing(cfg.model)
        return ImageClassificationTask(num_labels, cfg.task.image_size or pre["size"], pre["mean"], pre["std"])
    from fedsub.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    if kind == "classification":
        from fedsub.tasks.classification import ClassificationTask

        return ClassificationTask(tokenizer, cfg.model.max_length, num_labels, input_column)
    if kind == "generation":
        from fedsub.tasks.generation import GenerationTask

        return GenerationTask(tokenizer, cfg.model.max_length, cfg.task.max_new_tokens, cfg.task.eval_generate, input_column, cfg.task.response_column)
    from fedsub.tasks.multiple_choice import MultipleChoiceTask

    scoring = "loglik" if uses_causal_lm(cfg) else "head"
    return MultipleChoiceTask(tokenizer, cfg.model.max_length, scoring, input_column, cfg.task.choices_column)


def uses_causal_lm(cfg: ExperimentConfig) -> bool:
    from fedsub.lm import SMOLLM2, is_causal_lm
    from fedsub.models import resolve_model_path

    if cfg.task.kind == "generation" or cfg.model.name == SMOLLM2:
        return True
    return cfg.model.name != "minilm" and is_causal_lm(resolve_model_path(cfg.model.name))


def load_task_model(cfg: ExperimentConfig, num_labels: int, dtype: torch.dtype) -> nn.Module:
    """The model the task trains: a sequence / image classifier with a fresh head, a causal LM
    (generation, log-likelihood multiple choice) or an encoder with a multiple-choice head."""
    from fedsub.models import load_classifier, resolve_model_path

    kind = cfg.task.kind
    if kind == "classification":
        return load_classifier(cfg.model, num_labels, cfg.seed, dtype)
    if kind == "image_classification":
        from fedsub.vision_models import load_image_classifier

        return load_image_classifier(cfg.model, num_labels, cfg.seed, dtype)
    if uses_causal_lm(cfg):
        from fedsub.lm import load_causal_lm

        return load_causal_lm(cfg.model, resolve_model_path(cfg.model.name), cfg.seed, dtype)
    from fedsub.models import load_multiple_choice

    return load_multiple_choice(cfg.model, cfg.seed, dtype)
