"""Multiple choice (HellaSwag-style): a context, C endings, the index of the right one.

Two scorers, one loss (cross-entropy over the C scores):
- ``head``: an encoder with a multiple-choice head (AutoModelForMultipleChoice): one logit per
  (context, ending) pair;
- ``loglik``: a causal LM scores each ending by its length-normalised log-likelihood, the mean
  log-probability of the ending's tokens given the context (HellaSwag's "acc_norm"-style scoring,
  normalised per token so that long endings are not penalised for their length).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fedsub.tasks.classification import evaluate_by_scores
from fedsub.tasks.generation import IGNORE, pad_right

SEPARATOR = "\x1f"


@dataclass
class ChoiceEncoded:
    input_ids: torch.Tensor  # N x C x L
    attention_mask: torch.Tensor  # N x C x L
    token_labels: torch.Tensor | None  # N x C x L (loglik: the ending's tokens, IGNORE elsewhere)
    labels: torch.Tensor  # N

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor, device: torch.device | str) -> dict[str, torch.Tensor]:
        mask = self.attention_mask[index]
        width = int(mask.sum(-1).max())
        batch = {
            "input_ids": self.input_ids[index, :, :width].to(device),
            "attention_mask": mask[..., :width].to(device),
            "labels": self.labels[index].to(device),
        }
        if self.token_labels is not None:
            batch["token_labels"] = self.token_labels[index, :, :width].to(device)
        return batch


def split_choices(value) -> list[str]:
    return list(value) if isinstance(value, (list, tuple)) else str(value).split(SEPARATOR)


class MultipleChoiceTask:
    metric = "accuracy"
    metric_keys = ("test_loss", "accuracy", "macro_f1")

    def __init__(
        self, tokenizer, max_length: int, scoring: str, input_column: str = "text", choices_column: str = "choices"
    ):
        if scoring not in ("head", "loglik"):
            raise ValueError(f"scoring must be head or loglik, got {scoring!r}")
        self.tokenizer, self.max_length, self.scoring = tokenizer, max_length, scoring
        self.input_column, self.choices_column = input_column, choices_column
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    def encode_dataset(self, dataset) -> ChoiceEncoded:
        return self.encode(
            dataset[self.input_column], [split_choices(c) for c in dataset[self.choices_column]], dataset["label"]
        )

    def encode(self, contexts: list[str], choices: list[list[str]], labels: list[int]) -> ChoiceEncoded:
        counts = {len(c) for c in choices}
        if len(counts) != 1:
            raise ValueError(f"every example needs the same number of choices, got {sorted(counts)}")
        self.num_choices = counts.pop()
        rows, targets = [], []
        for context, endings in zip(contexts, choices):
            for ending in endings:
                row, target = self.pair(context, ending)
                rows.append(row)
                targets.append(target)
        ids, mask, token_labels = pad_right(rows, targets, self.tokenizer.pad_token_id)
        shape = (len(contexts), self.num_choices, ids.shape[-1])
        token_labels = token_labels.view(shape) if self.scoring == "loglik" else None
        return ChoiceEncoded(
            ids.view(shape), mask.view(shape), token_labels, torch.as_tensor(list(labels), dtype=torch.long)
        )

    def pair(self, context: str, ending: str) -> tuple[list[int], list[int]]:
        tok = self.tokenizer
        if self.scoring == "head":  # [CLS] context [SEP] ending [SEP], the longer of the two truncated first
            ids = tok(context, ending, truncation="longest_first", max_length=self.max_length)["input_ids"]
            return ids, ids
        end = tok(" " + ending, add_special_tokens=False)["input_ids"][: self.max_length // 2]
        ctx = tok(context, add_special_tokens=False)["input_ids"][-(self.max_length - len(end)) :]
        return ctx + end, [IGNORE] * len(ctx) + end

    def scores(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """N x C: the head's logits, or each ending's mean token log-probability."""
        n, c, width = batch["input_ids"].shape
        flat = {k: batch[k].reshape(n * c, width) for k in ("input_ids", "attention_mask")}
        if self.scoring == "head":
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float().view(n, c)
        logits = model(**flat).logits
        return ending_loglik(logits, batch["token_labels"].reshape(n * c, width)).view(n, c)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(self.scores(model, batch), batch["labels"])

    def example_losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(self.scores(model, batch), batch["labels"], reduction="none")

    def evaluate(self, model: nn.Module, data: ChoiceEncoded, batch_size: int, device) -> dict[str, float]:
        step = max(1, batch_size // self.num_choices)  # batch_size counts sequences, C per example
        return evaluate_by_scores(model, data, step, device, self.scores, self.num_choices)


def ending_loglik(logits: torch.Tensor, token_labels: torch.Tensor) -> torch.Tensor:
    """Per row: mean over labelled positions of log p(token | prefix) (length-normalised)."""
    target = token_labels[:, 1:]
    keep = target != IGNORE
    rows = keep.nonzero(as_tuple=True)  # log-softmax only where an ending token is scored: ~5x fewer rows
    picked = torch.log_softmax(logits[:, :-1][rows].float(), dim=-1).gather(-1, target[rows].unsqueeze(-1)).squeeze(-1)
    sums = torch.zeros(len(target), dtype=picked.dtype, device=picked.device).index_add_(0, rows[0], picked)
    return sums / keep.sum(-1).clamp(min=1)
