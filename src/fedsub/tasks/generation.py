"""Instruction tuning of a causal LM: loss on response tokens only; greedy generation on held-out
prompts scored by ROUGE-L (rouge-score) and BLEU-4 (sacrebleu), plus perplexity.

A prompt is the tokenizer's chat template around the instruction (a plain "instruction\\n" when
the tokenizer has none); the response ends with the EOS token so the model learns to stop. The
labels are -100 on the prompt and on padding: pad == eos in SmolLM2, so padding is told apart by
the attention mask, never by the token id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fedsub.errors import ConfigError

IGNORE = -100
SYSTEM = "Answer briefly."  # replaces SmolLM2's ~20-token default system prompt: shorter sequences


@dataclass
class LMEncoded:
    """Prompt + response token rows (right-padded), response-only labels, prompts and references
    kept apart for generation."""

    input_ids: torch.Tensor  # N x L
    attention_mask: torch.Tensor  # N x L
    labels: torch.Tensor  # N x L, IGNORE outside the response
    prompts: list[list[int]]
    references: list[str]

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, index: torch.Tensor, device: torch.device | str) -> dict[str, torch.Tensor]:
        mask = self.attention_mask[index]
        width = int(mask.sum(1).max())
        return {
            "input_ids": self.input_ids[index, :width].to(device),
            "attention_mask": mask[:, :width].to(device),
            "labels": self.labels[index, :width].to(device),
        }


class GenerationTask:
    """Causal-LM instruction tuning (the NLG benchmarks: ROUGE-L, BLEU-4)."""

    metric = "rougeL"
    metric_keys = ("test_loss", "perplexity", "rougeL", "bleu4")

    def __init__(
        self,
        tokenizer,
        max_length: int,
        max_new_tokens: int = 32,
        eval_generate: int | None = 64,
        input_column: str = "instruction",
        response_column: str = "response",
    ):
        self.tokenizer = tokenizer
        self.input_column, self.response_column = input_column, response_column
        self.max_length = max_length
        self.max_new_tokens = max_new_tokens
        self.eval_generate = eval_generate
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    def prompt_ids(self, instruction: str) -> list[int]:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": instruction}]
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = instruction + "\n"
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return ids[-(self.max_length // 2) :]  # keep the end (the generation prompt); room for the response

    def encode_dataset(self, dataset) -> LMEncoded:
        if self.response_column not in dataset.column_names:
            raise ConfigError(
                f"field task.response_column: no column {self.response_column!r}; columns are: "
                f"{', '.join(dataset.column_names)}"
            )
        return self.encode(dataset[self.input_column], [str(r) for r in dataset[self.response_column]])

    def encode(self, instructions: list[str], responses: list[str]) -> LMEncoded:
        prompts = [self.prompt_ids(i) for i in instructions]
        eos = self.tokenizer.eos_token_id
        rows, labels = [], []
        for prompt, response in zip(prompts, responses):
            answer = self.tokenizer(response, add_special_tokens=False)["input_ids"] + [eos]
            rows.append((prompt + answer)[: self.max_length])
            labels.append(([IGNORE] * len(prompt) + answer)[: self.max_length])
        return LMEncoded(*pad_right(rows, labels, self.tokenizer.pad_token_id), prompts, list(responses))

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return response_loss(logits, batch["labels"])

    def example_losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each example's mean over its own response tokens (the batch loss weights by token instead,
        which would tie one example's gradient to the others' lengths)."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        target = batch["labels"][:, 1:]
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, ignore_index=IGNORE, reduction="none")
        return nll.sum(1) / (target != IGNORE).sum(1).clamp(min=1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: LMEncoded, batch_size: int, device) -> dict[str, float]:
        was_training = model.training
        model.eval()
        nll, tokens = 0.0, 0
        for start in range(0, len(data), batch_size):
            batch = data.batch(torch.arange(start, min(start + batch_size, len(data))), device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            nll += response_loss(logits, batch["labels"], reduction="sum").item()
            tokens += int((batch["labels"][:, 1:] != IGNORE).sum())
        count = len(data) if self.eval_generate is None else min(self.eval_generate, len(data))
        hypotheses = self.generate(model, data.prompts[:count], batch_size, device)
        model.train(was_training)
        loss = nll / max(tokens, 1)
        return {
            "test_loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            **text_metrics(hypotheses, data.references[:count]),
        }

    def generate(self, model: nn.Module, prompts: list[list[int]], batch_size: int, device) -> list[str]:
        """Greedy decoding, prompts left-padded so every row continues from its last token."""
        tok, outputs = self.tokenizer, []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            ids, mask = pad_left(chunk, tok.pad_token_id)
            generated = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
            outputs += tok.batch_decode(generated[:, ids.shape[1] :].cpu(), skip_special_tokens=True)
        return [o.strip() for o in outputs]


def response_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy where labels are not IGNORE (the response and its EOS)."""
    target = labels[:, 1:]
    rows = (target != IGNORE).nonzero(as_tuple=True)  # only the scored positions reach the softmax
    return F.cross_entropy(logits[:, :-1][rows].float(), target[rows], reduction=reduction)


def pad_right(
    rows: list[list[int]], labels: list[list[int]], pad: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    target = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (row, label) in enumerate(zip(rows, labels)):
        ids[i, : len(row)] = torch.as_tensor(row)
        mask[i, : len(row)] = 1
        target[i, : len(label)] = torch.as_tensor(label)
    return ids, mask, target


def pad_left(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.as_tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


def text_metrics(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """ROUGE-L F1 (mean over examples, 0..1, Porter stemming) and corpus BLEU-4 (sacrebleu, 0..100)."""
    import sacrebleu  # late: start-up, with rouge_score (~2 s to import here) only when generation is scored
    from rouge_score import rouge_scorer  # late: as above

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references)]
    bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
    return {"rougeL": float(sum(rouge) / max(len(rouge), 1)), "bleu4": float(bleu)}
