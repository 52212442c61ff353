"""Tasks: what a model learns and how it is scored, behind one interface the engines and methods use
(the `Task` protocol, fedsub.tasks.base: ``encode_dataset``, ``loss``, ``evaluate``, ``metric``,
``metric_keys``); `build_task` picks the config's.
"""

from __future__ import annotations

from fedsub.config import ExperimentConfig
from fedsub.errors import ConfigError
from fedsub.models import ModelPlan
from fedsub.tasks.base import Task

INPUTS = {"classification": "text", "generation": "text", "multiple_choice": "text", "image_classification": "image"}


def check_input(cfg: ExperimentConfig, input_column: str) -> None:
    """Text tasks need a text dataset and image tasks an image one."""
    kind = cfg.task.kind
    wants_image = INPUTS[kind] == "image"
    if wants_image != (input_column == "image"):
        hint = "task.kind=image_classification" if input_column == "image" else "a text dataset"
        raise ConfigError(
            f"field task.kind: {kind} cannot use {cfg.data.dataset} (its input is {input_column}); use {hint}"
        )


def build_task(cfg: ExperimentConfig, plan: ModelPlan, input_column: str, num_labels: int) -> Task:
    """The task object of the config, for the model `plan` decided (its tokenizer or image
    preprocessing is loaded here). Each kind's module is imported when it is asked for, so a run
    imports only its own task (classification's scikit-learn metrics take ~1.9 s to import here)."""
    check_input(cfg, input_column)
    kind = cfg.task.kind
    if kind == "image_classification":
        from fedsub.tasks.vision import ImageClassificationTask  # late: start-up, see the docstring

        pre = plan.preprocessing()
        return ImageClassificationTask(num_labels, cfg.task.image_size or pre["size"], pre["mean"], pre["std"])
    tokenizer = plan.tokenizer()
    if kind == "classification":
        from fedsub.tasks.classification import ClassificationTask  # late: start-up, see the docstring

        return ClassificationTask(tokenizer, cfg.model.max_length, num_labels, input_column)
    if kind == "generation":
        from fedsub.tasks.generation import GenerationTask  # late: start-up, see the docstring

        return GenerationTask(
            tokenizer,
            cfg.model.max_length,
            cfg.task.max_new_tokens,
            cfg.task.eval_generate,
            input_column,
            cfg.task.response_column,
        )
    from fedsub.tasks.multiple_choice import MultipleChoiceTask  # late: start-up, see the docstring

    scoring = "loglik" if plan.causal_lm else "head"
    return MultipleChoiceTask(tokenizer, cfg.model.max_length, scoring, input_column, cfg.task.choices_column)
