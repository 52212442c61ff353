"""WordNet noun supersense classification, parsed straight from Debian's `wordnet-base`.

Each noun synset of `data.noun` becomes one example: text = its definition (the gloss up to the
first example quotation), label = its supersense (the lexicographer file, e.g. `noun.animal`).
Format: WordNet `wndb(5)`, one synset per line:
`offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt [ptr ...] | gloss`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from fedsub.data.source import Source
from fedsub.errors import ConfigError

WORDNET_DIR = Path("/usr/share/wordnet")
INSTALL_HINT = "apt-get install --no-install-recommends wordnet-base"

# The 45 lexicographer files in lex_filenum order (WordNet `lexnames(5)`); Debian ships no
# `lexnames` file, so they are hardcoded. Nouns are 03..28 (26 supersenses).
LEXNAMES: tuple[str, ...] = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)


def definition(gloss: str) -> str:
    """The definition part of a gloss: everything before the first `; "` (example quotations)."""
    return gloss.split('; "', 1)[0].strip()


def parse_line(line: str) -> tuple[str, int, str, str, str]:
    """One synset line -> (offset, lex_filenum, ss_type, first lemma, definition)."""
    head, _, gloss = line.partition(" | ")
    offset, lex_filenum, ss_type, _w_cnt, word = head.split(" ", 5)[:5]
    return offset, int(lex_filenum), ss_type, word.replace("_", " "), definition(gloss)


def load_wordnet_supersense(root: Path | None = None) -> Source:
    """All noun synsets as a `Source` (labels = lex_filenum, ordered by class size downstream)."""
    path = Path(root or WORDNET_DIR) / "data.noun"
    if not path.is_file():
        raise ConfigError(f"data.dataset=wordnet_supersense: {path} not found; install it with `{INSTALL_HINT}`")
    stat = path.stat()
    offsets, lexnums, pos, lemmas, texts = _parse_cached(str(path), stat.st_mtime_ns, stat.st_size)
    # Codes index LEXNAMES directly; classes with no example are dropped downstream.
    columns = {"text": texts, "id": np.char.add("wn:n:", offsets).astype(object), "lemma": lemmas, "pos": pos}
    return Source(columns=columns, labels=lexnums, names=list(LEXNAMES), input_column="text", order_by_size=True)


@functools.lru_cache(maxsize=2)
def _parse_cached(path: str, _mtime_ns: int, _size: int) -> tuple[np.ndarray, ...]:
    """Parse `data.noun` once per process (~0.3 s for 82k synsets); keyed on mtime and size so an
    upgraded package is re-read. Arrays are read-only because the cache shares them."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.startswith("  "):  # the license header lines start with two spaces
                rows.append(parse_line(line.rstrip("\n")))
    offsets, lexnums, pos, lemmas, texts = zip(*rows)
    arrays = (
        np.array(offsets),
        np.array(lexnums, dtype=np.int64),
        np.array(pos, dtype=object),
        np.array(lemmas, dtype=object),
        np.array(texts, dtype=object),
    )
    for array in arrays:
        array.flags.writeable = False
    return arrays
