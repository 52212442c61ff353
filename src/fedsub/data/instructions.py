"""WordNet as instruction data (generation) and as 4-way multiple choice, from Debian `wordnet-base`.

Every synset of data.noun / data.verb / data.adj / data.adv gives
- "Define the word 'w'." -> its definition, and, when the gloss quotes an example,
- "Use the word 'w' in a sentence." -> the first quoted example (the 45 supersenses label both,
  so a run can keep the N largest and partition by supersense, or by part of speech with
  ``partition.by: pos``).
Multiple choice: the word and four definitions, one its own and three drawn (seeded) from other
synsets of the same part of speech; the label is the index of the right one.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from fedsub.core.seeding import derive_rng
from fedsub.data.source import Source
from fedsub.data.wordnet import INSTALL_HINT, LEXNAMES, WORDNET_DIR
from fedsub.errors import ConfigError

POS_FILES = {"noun": "data.noun", "verb": "data.verb", "adj": "data.adj", "adv": "data.adv"}
_QUOTE = re.compile(r'"([^"]+)"')
NUM_CHOICES = 4


def parse_gloss(gloss: str) -> tuple[str, list[str]]:
    """(definition, quoted examples) of a WordNet gloss: 'def; "ex one"; "ex two"'."""
    definition = gloss.split('; "', 1)[0].strip().rstrip(";").strip()
    return definition, [e.strip() for e in _QUOTE.findall(gloss)]


@functools.lru_cache(maxsize=2)
def read_synsets(root: str) -> tuple[tuple[str, int, str, str, str, str], ...]:
    """(id, lex_filenum, pos, lemma, definition, first example or '') of every synset (~0.6 s)."""
    rows = []
    for pos, name in POS_FILES.items():
        path = Path(root) / name
        if not path.is_file():
            raise ConfigError(f"data.dataset: {path} not found; install WordNet with `{INSTALL_HINT}`")
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("  "):  # license header
                    continue
                head, _, gloss = line.rstrip("\n").partition(" | ")
                offset, lex, _ss, _cnt, word = head.split(" ", 5)[:5]
                definition, examples = parse_gloss(gloss)
                rows.append(
                    (
                        f"wn:{pos}:{offset}",
                        int(lex),
                        pos,
                        word.replace("_", " "),
                        definition,
                        examples[0] if examples else "",
                    )
                )
    return tuple(rows)


def load_wordnet_instructions(root: Path | None = None) -> Source:
    """Define-the-word and use-the-word instructions, labelled by supersense."""
    ids, labels, instructions, responses, pos, lemmas = [], [], [], [], [], []
    for sid, lex, p, lemma, definition, example in read_synsets(str(root or WORDNET_DIR)):
        pairs = [("define", f"Define the word '{lemma}'.", definition)]
        if example:
            pairs.append(("use", f"Use the word '{lemma}' in a sentence.", example))
        for kind, instruction, response in pairs:
            ids.append(f"{sid}:{kind}")
            labels.append(lex)
            instructions.append(instruction)
            responses.append(response)
            pos.append(p)
            lemmas.append(lemma)
    columns = {
        "instruction": _obj(instructions),
        "response": _obj(responses),
        "id": _obj(ids),
        "pos": _obj(pos),
        "lemma": _obj(lemmas),
    }
    return Source(
        columns=columns,
        labels=np.array(labels, dtype=np.int64),
        names=list(LEXNAMES),
        input_column="instruction",
        order_by_size=True,
    )


def load_wordnet_choice(root: Path | None = None, seed: int = 0) -> Source:
    """'Which definition matches the word?': 4 definitions, the label is the right one's index.

    Labels are the answer index (0..3), balanced by construction; the supersense is kept as a
    column (``partition.by: supersense`` gives topic skew instead of answer-position skew).
    """
    synsets = read_synsets(str(root or WORDNET_DIR))
    rng = derive_rng(seed, 0xC401CE)
    by_pos: dict[str, list[int]] = {}
    for index, row in enumerate(synsets):
        by_pos.setdefault(row[2], []).append(index)
    ids, contexts, choices, answers, pos, supersense = [], [], [], [], [], []
    for index, (sid, lex, p, lemma, definition, _) in enumerate(synsets):
        pool = by_pos[p]
        distractors = [
            synsets[pool[j]][4] for j in rng.choice(len(pool), NUM_CHOICES + 2, replace=False) if pool[j] != index
        ]
        distractors = [d for d in dict.fromkeys(distractors) if d != definition][: NUM_CHOICES - 1]
        answer = int(rng.integers(NUM_CHOICES))
        options = distractors[:answer] + [definition] + distractors[answer:]
        ids.append(sid)
        contexts.append(f"Which definition matches the word '{lemma}'?")
        choices.append("\x1f".join(options))  # unit separator: one string column holds the 4 endings
        answers.append(answer)
        pos.append(p)
        supersense.append(LEXNAMES[lex])
    columns = {
        "context": _obj(contexts),
        "choices": _obj(choices),
        "id": _obj(ids),
        "pos": _obj(pos),
        "supersense": _obj(supersense),
    }
    return Source(
        columns=columns,
        labels=np.array(answers, dtype=np.int64),
        names=[f"choice {i}" for i in range(NUM_CHOICES)],
        input_column="context",
    )


def _obj(values: list) -> np.ndarray:
    return np.array(values, dtype=object)
