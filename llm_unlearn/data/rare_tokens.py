"""The forget loss on the answer tokens the retain set does not share (`--forget_token_max_df`).

Gradient ascent on a whole forget answer pushes down every token of it, and most of them are phrasing
that the retain answers use too ("... was born in ...", the end-of-turn token): the retain answers
lose their wording along with the forget facts, which is the collateral damage that stops `--auto`
(docs/auto.md, "The retain-recall guard"). With `max_df` set, a forget answer token keeps its label
only if the share of retain answers that contain it (its document frequency, counted on the same
tokenization the retain loss trains on) is at most `max_df`; the others get label -100 and leave the
forget loss. What stays is what tells this answer apart: names, places, dates, titles. An answer
that would keep no token keeps its rarest one, so that no example has an empty loss.

The retain loss, the stop rule's scoring and every evaluation still use whole answers: only what the
forget term trains on changes. A relative of the token-weighting ideas in the unlearning literature;
measured here against whole-answer ascent in benchmarks/auto.md (`auto-rare*` arms).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from .qa import IGNORE_INDEX


def document_frequency(features: Sequence[dict]) -> dict[int, float]:
    """Token id -> the share of the examples whose answer labels contain it (each example counted once)."""
    if not features:
        return {}
    counts = Counter(t for f in features for t in {t for t in f["labels"] if t != IGNORE_INDEX})
    return {t: c / len(features) for t, c in counts.items()}


def keep_rare_labels(features: Sequence[dict], frequency: dict[int, float], max_df: float) -> tuple[int, int]:
    """Set label -100 on each answer token whose `frequency` exceeds `max_df`, in place; an answer
    left with none keeps its rarest token (the first of equals). Returns (tokens kept, answer tokens)."""
    kept = total = 0
    for f in features:
        labels = f["labels"]
        answer = [i for i, t in enumerate(labels) if t != IGNORE_INDEX]
        keep = {i for i in answer if frequency.get(labels[i], 0.0) <= max_df}
        if not keep and answer:
            keep = {min(answer, key=lambda i: frequency.get(labels[i], 0.0))}
        f["labels"] = [t if i in keep else IGNORE_INDEX for i, t in enumerate(labels)]
        kept += len(keep)
        total += len(answer)
    return kept, total


def keep_contrast_labels(features: Sequence[dict], siblings: Sequence[Sequence[dict]]) -> tuple[int, int]:
    """`--forget_token_siblings`: set label -100 on each answer token of `features[i]` whose id is in any
    answer of `siblings[i]` (other entities' answers to the same kinds of question, encoded the same way),
    in place; an answer whose every token a sibling has keeps them all. Returns (tokens kept, answer tokens).

    Where the document frequency above keeps the tokens the whole retain set lacks (mostly names), this
    keeps what sets one answer apart from its neighbours: "Oaxaca, Mexico is where A was born" against
    "Lima, Peru is where A was born" keeps "Oaxaca" and "Mexico" even though other retain answers say
    "Mexico", and drops the template that a model which never saw A would still write.
    """
    kept = total = 0
    for f, sibs in zip(features, siblings, strict=True):
        shared = {t for s in sibs for t in s["labels"] if t != IGNORE_INDEX}
        labels = f["labels"]
        answer = [i for i, t in enumerate(labels) if t != IGNORE_INDEX]
        keep = {i for i in answer if labels[i] not in shared} or set(answer)
        f["labels"] = [t if i in keep else IGNORE_INDEX for i, t in enumerate(labels)]
        kept += len(keep)
        total += len(answer)
    return kept, total
