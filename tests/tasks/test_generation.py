"""Generation: response-only loss masking, ROUGE-L / BLEU-4 on known strings, perplexity, and the
real SmolLM2 workspace's bytes per round (LoRA-level: no dense LM head or embedding)."""

import math

import pytest
import torch
from torch.nn import functional as F

from fedsub.tasks.generation import IGNORE, pad_left, response_loss, text_metrics


@pytest.fixture(scope="module")
def task():
    from fedsub_fixtures import task_config

    from fedsub.models import plan_model
    from fedsub.tasks import build_task

    cfg = task_config("generation", "fedit")
    return build_task(cfg, plan_model(cfg), "instruction", 3)


def test_labels_cover_exactly_the_response_and_eos(task):
    data = task.encode(
        ["Define the word 'cat'.", "Use 'saw' in a sentence, please, in many words."], ["a pet", "he saw it"]
    )
    tok = task.tokenizer
    for row in range(2):
        prompt = data.prompts[row]
        labels, ids, mask = data.labels[row], data.input_ids[row], data.attention_mask[row]
        answer = tok(["a pet", "he saw it"][row], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert labels[: len(prompt)].eq(IGNORE).all()  # no loss on the prompt
        assert labels[len(prompt) : len(prompt) + len(answer)].tolist() == answer
        assert ids[: len(prompt)].tolist() == prompt
        assert labels[mask == 0].eq(IGNORE).all()  # nor on padding (pad == eos: told apart by the mask)
    assert tok.pad_token_id == tok.eos_token_id and data.attention_mask[0].sum() < data.attention_mask.shape[1]


def test_response_loss_is_cross_entropy_over_the_labelled_positions_only():
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 7)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 6, IGNORE]])
    # position t predicts token t+1: only logits 1 and 2 are scored, against 3 and 6
    expected = (
        F.cross_entropy(logits[0, 1:2], torch.tensor([3])) + F.cross_entropy(logits[0, 2:3], torch.tensor([6]))
    ) / 2
    assert response_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    changed = logits.clone()
    changed[0, 0] += 100.0  # a prompt position: the loss must not move
    changed[0, 3:] -= 50.0
    assert response_loss(changed, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_rouge_l_and_bleu_4_on_known_strings():
    same = text_metrics(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same == {"rougeL": pytest.approx(1.0), "bleu4": pytest.approx(100.0)}
    # LCS "the cat sat" = 3 of 3 hypothesis and 6 reference words: P 1, R 0.5, F 2/3
    assert text_metrics(["the cat sat"], ["the cat sat on the mat"])["rougeL"] == pytest.approx(2 / 3)
    # n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty)
    bleu = text_metrics(["the cat sat on the mat"], ["the cat sat on a mat"])["bleu4"]
    assert bleu == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-3)
    assert text_metrics(["zzz"], ["the cat"]) == {"rougeL": 0.0, "bleu4": 0.0}


def test_left_padding_puts_every_prompt_against_the_right_edge():
    ids, mask = pad_left([[5, 6, 7], [8]], pad=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_evaluate_reports_perplexity_as_exp_loss_and_generates(task, task_data):
    from fedsub_fixtures import task_config

    from fedsub.core.registry import build_method
    from fedsub.engines.setup import build_workspace

    cfg = task_config("generation", "fedit")
    workspace = build_workspace(cfg, build_method("fedit", cfg.methods[0].options), task_data("generation"))
    metrics = workspace.evaluate(8)
    assert set(metrics) == {"test_loss", "perplexity", "rougeL", "bleu4"}
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["test_loss"]))
    assert metrics["test_loss"] == pytest.approx(math.log(49152), rel=0.05)  # random init: ~uniform over the vocabulary


@pytest.mark.slow
def test_smollm2_workspace_sends_lora_bytes_only():
    """The real SmolLM2-135M (GGUF, cached): q/v LoRA at rank 8 and no dense head or embedding."""
    from fedsub.config import load_config
    from fedsub.core.registry import build_method
    from fedsub.engines.setup import FederatedData, build_workspace
    from fedsub.models import plan_model

    cfg = load_config("configs/generation.yaml")
    method = build_method("fedit", cfg.methods[0].options)
    workspace = build_workspace(cfg, method, FederatedData(None, None, None, [], ["a"], {}, plan_model(cfg)))
    trainable = workspace.trainable_names()
    assert trainable and all(".lora_" in n for n in trainable), [n for n in trainable if ".lora_" not in n][:3]
    # per layer: q A 8x576 + B 576x8, v A 8x576 + B 192x8 = 15,360 floats; 30 layers, float32
    assert method.configure_train(method.init(workspace), 0).nbytes() == 30 * 15360 * 4
    assert workspace.model.get_base_model().lm_head.weight.requires_grad is False
