"""Every task implements the Task protocol (fedsub.tasks.base) that the engines type against."""

import pytest

from fedsub.tasks.base import TASK_MEMBERS
from fedsub.tasks.classification import ClassificationTask
from fedsub.tasks.generation import GenerationTask
from fedsub.tasks.multiple_choice import MultipleChoiceTask
from fedsub.tasks.vision import ImageClassificationTask


@pytest.mark.parametrize("cls", [ClassificationTask, GenerationTask, MultipleChoiceTask, ImageClassificationTask])
def test_every_task_defines_the_protocol_and_its_headline_metric_is_one_of_its_metrics(cls):
    assert [m for m in TASK_MEMBERS if m not in vars(cls)] == []
    assert cls.metric in cls.metric_keys and "test_loss" in cls.metric_keys
