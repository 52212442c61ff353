"""Multiple choice: length-normalised log-likelihood on a hand case, the choice layout, both scorers."""

import math

import pytest
import torch

from fedsub.tasks.generation import IGNORE
from fedsub.tasks.multiple_choice import SEPARATOR, ending_loglik, split_choices


def test_ending_loglik_is_the_mean_log_probability_of_the_ending_tokens():
    # vocabulary of 2; logits at positions 0, 1, 2 predict tokens 1, 2, 3
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]]))
    labels = torch.tensor([[IGNORE, IGNORE, 0, 1]])  # context = tokens 0-1, ending = tokens 2-3
    assert ending_loglik(logits, labels).item() == pytest.approx((math.log(0.9) + math.log(0.8)) / 2)


def test_length_normalisation_prefers_the_likelier_tokens_not_the_shorter_ending():
    # ending A: one token at p=0.5; ending B: three tokens at p=0.6 each (total 0.216 < 0.5)
    short = torch.log(torch.tensor([[[0.5, 0.5], [0.5, 0.5]]]))
    long = torch.log(torch.tensor([[[0.4, 0.6]] * 4]))
    a = ending_loglik(short, torch.tensor([[IGNORE, 1]]))
    b = ending_loglik(long, torch.tensor([[IGNORE, 1, 1, 1]]))
    assert b.item() > a.item()


def test_choices_come_as_lists_or_one_joined_string():
    assert split_choices(["a", "b"]) == ["a", "b"]
    assert split_choices(SEPARATOR.join(["x y", "z"])) == ["x y", "z"]


def test_loglik_encoding_labels_only_the_ending(task_data):
    data = task_data("multiple_choice")
    assert data.task.scoring == "loglik" and data.train.input_ids.shape[:2] == (18, 4)
    tok = data.task.tokenizer
    row = data.train.token_labels[0, 1]
    ending = tok(" a small furry animal", add_special_tokens=False)["input_ids"]
    assert [t for t in row.tolist() if t != IGNORE] == ending


def test_encoder_head_scoring_trains_and_evaluates(tmp_path):
    """MiniLM (tiny) with AutoModelForMultipleChoice: one logit per (context, ending)."""
    from fedsub_fixtures import CHOICES, tiny_config

    from fedsub.engines.setup import FederatedData
    from fedsub.engines.simulation import Simulation
    from fedsub.models import plan_model
    from fedsub.tasks import build_task

    cfg = tiny_config(task={"kind": "multiple_choice"}, methods=["fedit"])
    plan = plan_model(cfg)
    task = build_task(cfg, plan, "text", 4)
    assert task.scoring == "head"
    rows = CHOICES * 6
    data = task.encode([c for c, _, _ in rows], [e for _, e, _ in rows], [a for _, _, a in rows])
    parts = [torch.arange(0, 6), torch.arange(6, 12), torch.arange(12, 18)]
    sim = Simulation(
        cfg, cfg.methods[0], FederatedData(task, data, data, parts, ["0", "1", "2", "3"], {}, plan), tmp_path
    )
    records = sim.run()
    assert sim.workspace.head_modules == ["classifier"]
    assert 0.0 <= records[-1]["accuracy"] <= 1.0 and math.isfinite(records[-1]["test_loss"])
