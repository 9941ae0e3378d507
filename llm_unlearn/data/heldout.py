"""The forget set cut into an attack part A (what a probe trains on) and a held-out part E (where it is
measured), fixed by a seed.

By question within each author (the default): every author keeps some questions in A and the others
in E, so a probe that teaches an author's A facts is scored on facts of the same author it never
saw. Recovery on E is then knowledge that was still in the weights, not knowledge the attack taught
(arXiv 2410.08827 and 2406.13356 relearn in this way: related, not identical, data). By author:
whole authors go to A or E, a stricter test of whether relearning one author revives others.

Authors are read from the rows' `author` field (the built-in world has one). TOFU rows carry none;
its forget splits are the last authors of `full`, in consecutive blocks of 20 questions, so row i
belongs to author i // 20. Each author's questions are shuffled by a generator seeded with
(seed, author), so an author's split does not depend on which other authors are in the set.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .qa import DataError

TOFU_QAS_PER_AUTHOR = 20
SPLIT_BY = ("question", "author")


def author_keys(rows: Sequence[dict]) -> list:
    """Each row's author: its `author` field, or TOFU's block index i // 20 where no row has one."""
    if all("author" in r for r in rows):
        return [r["author"] for r in rows]
    if any("author" in r for r in rows):
        raise DataError("some forget rows carry an `author` field and some do not; give every row one")
    if len(rows) % TOFU_QAS_PER_AUTHOR:
        raise DataError(
            f"the forget rows carry no `author` field and their number ({len(rows)}) is not a multiple of "
            f"{TOFU_QAS_PER_AUTHOR} (TOFU's questions per author); add an `author` field to every row"
        )
    return [i // TOFU_QAS_PER_AUTHOR for i in range(len(rows))]


def _n_heldout(n: int, fraction: float) -> int:
    return min(max(round(n * fraction), 1), n - 1)


def attack_heldout_split(
    rows: Sequence[dict], *, seed: int = 0, heldout_fraction: float = 0.5, by: str = "question"
) -> tuple[list[int], list[int]]:
    """(attack indices A, held-out indices E) into `rows`, disjoint, together all rows, each sorted.

    `by="question"`: each author puts round(n * heldout_fraction) of its n questions in E (at least one,
    and at least one left in A), chosen by `random.Random(f"{seed}:{author}")`. `by="author"`: the
    same rule over the shuffled list of authors (`random.Random(seed)`), whole authors at a time.
    """
    if by not in SPLIT_BY:
        raise ValueError(f"unknown split {by!r}; choose one of {', '.join(SPLIT_BY)}")
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout fraction {heldout_fraction} must lie strictly between 0 and 1 (e.g. 0.5)")
    keys = author_keys(rows)
    by_author: dict = {}
    for i, key in enumerate(keys):
        by_author.setdefault(key, []).append(i)
    heldout: list[int] = []
    if by == "question":
        for key, idx in by_author.items():
            if len(idx) < 2:
                raise DataError(
                    f"author {key!r} has {len(idx)} forget question; splitting by question needs at least 2 per author"
                )
            shuffled = random.Random(f"{seed}:{key}").sample(idx, len(idx))
            heldout += shuffled[: _n_heldout(len(idx), heldout_fraction)]
    else:
        authors = list(by_author)
        if len(authors) < 2:
            raise DataError(
                f"the forget set has {len(authors)} author; splitting by author needs at least 2 "
                "(use a larger forget split, or split by question)"
            )
        shuffled = random.Random(seed).sample(authors, len(authors))
        for key in shuffled[: _n_heldout(len(authors), heldout_fraction)]:
            heldout += by_author[key]
    held = set(heldout)
    return [i for i in range(len(rows)) if i not in held], sorted(held)
