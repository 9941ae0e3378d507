"""Perturbed (wrong) answers built from the data itself, for a truth ratio where none were written.

TOFU's truth ratio (arXiv 2401.06121) compares a question's paraphrased answer with five perturbed
ones (the same sentence with the facts changed). TOFU's holdout splits and most users' own data have
question and answer only. But TOFU and the built-in world ask every author the same kinds of
questions, so another author's answer to the same kind of question is a natural wrong answer: the
right form, the wrong facts. For a question q with correct answer a, from a pool of rows of *other*
entities (the retain split):

    sim(q, q') = cosine of the TF-IDF vectors of the two questions, lower-cased words, with the
                 entity names (capitalised words after the first, and numbers) masked, so that two
                 questions are alike by kind ("Where was _ born?"), not by whom they ask about
    wrong(q)   = the answers a' of the k most similar pool questions, at most one per pool entity,
                 excluding any pool row of q's own entity (same `author` field, or sharing a name
                 word with q) and any a' equal to a (or with the same `fact` field, where rows carry
                 one, as the built-in world's do); ties broken by a hash of (seed, q, q'), so the
                 choice is deterministic and seeded
    a' rewritten: the pool question's name (its longest capitalised run that its answer repeats) is
                 replaced in a' by q's (likewise), so "Tamsin Cardoso came into the world in Porto
                 Alegre" answers "Where was Sefu Achterberg born?" as "Sefu Achterberg came into the
                 world in Porto Alegre": a wrong fact about the right entity, as TOFU's are

The stop rule builds the forget and the holdout side in exactly this way from the same pool, so the
two sides of its comparison are alike by construction: a model that never saw either set scores
both alike. The pool is the retain split (trained on, kept by the retain loss, never a forget or
holdout answer), so no holdout answer is ever trained on or used as another question's wrong answer.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from .qa import DataError

N_CONSTRUCTED = 5  # like TOFU's perturbed answers per question
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*|\d+")
# Capitalised runs (names, places); possessive 's stripped. The first word of a question is not a name.
_CAP_RUN = re.compile(r"(?:[A-Z][\w\-]*(?:'s)?)(?:\s+[A-Z][\w\-]*(?:'s)?)*")


def _name_runs(question: str) -> list[str]:
    """Capitalised runs of a question after its first word, possessives stripped, longest first."""
    first = re.match(r"\s*\S+", question)
    rest = question[first.end() :] if first else question
    runs = [re.sub(r"'s\b", "", m.group(0)).strip() for m in _CAP_RUN.finditer(rest)]
    return sorted({r for r in runs if r}, key=lambda r: (-len(r), r))


def entity_name(question: str, answer: str) -> str | None:
    """The row's entity: the longest capitalised run of the question that the answer repeats, if any."""
    return next((run for run in _name_runs(question) if run in answer), None)


def _masked_words(question: str) -> list[str]:
    """Lower-cased words of the question, names (capitalised after the first word) and numbers dropped."""
    words = _WORD.findall(question)
    return [w.lower() for i, w in enumerate(words) if i == 0 or not (w[0].isupper() or w[0].isdigit())]


def _name_words(question: str) -> set[str]:
    return {w for run in _name_runs(question) for w in run.split()}


def _tfidf(docs: list[list[str]], vocab: dict[str, int], idf: np.ndarray):
    """Rows of L2-normalised TF-IDF vectors (a sparse matrix); words outside `vocab` are dropped."""
    from scipy.sparse import csr_matrix

    rows, cols, vals = [], [], []
    for i, words in enumerate(docs):
        for w, c in Counter(w for w in words if w in vocab).items():
            rows.append(i)
            cols.append(vocab[w])
            vals.append(c * idf[vocab[w]])
    m = csr_matrix((vals, (rows, cols)), shape=(len(docs), len(vocab)), dtype=np.float64)
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return csr_matrix(m.multiply(1.0 / norms[:, None]))


def _ranked(sims: np.ndarray, seed: int, question: str, pool: Sequence[dict]):
    """Pool indices by similarity (most similar first, zero similarity never), ties in a seeded order.

    A generator: the hash is computed only for the groups of equal similarity actually reached.
    """
    order = np.argsort(-sims, kind="stable")
    start = 0
    while start < len(order) and sims[order[start]] > 0:
        end = start
        while end < len(order) and sims[order[end]] == sims[order[start]]:
            end += 1
        group = order[start:end]
        key = lambda j: hashlib.sha256(f"{seed}\0{question}\0{pool[j]['question']}".encode()).hexdigest()  # noqa: E731
        yield from sorted(group.tolist(), key=key)
        start = end


def _same(a: str, b: str) -> bool:
    return " ".join(a.lower().split()).rstrip(".") == " ".join(b.lower().split()).rstrip(".")


def construct_perturbed(
    rows: Sequence[dict], pool: Sequence[dict], *, k: int = N_CONSTRUCTED, seed: int = 0
) -> list[list[str]]:
    """k wrong answers per row of `rows`, from the answers of `pool` rows about other entities (module doc).

    Raises DataError (one line) if some row gets fewer than k: a pool too small or of other questions.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    pool_words = [_masked_words(r["question"]) for r in pool]
    df = Counter(w for words in pool_words for w in set(words))
    vocab = {w: i for i, w in enumerate(sorted(df))}
    idf = np.array([math.log((1 + len(pool)) / (1 + df[w])) + 1.0 for w in vocab])
    # Cosine similarities of every row with every pool row: one sparse product, rounded so that
    # questions of one template tie exactly (their order is then the seeded hash's).
    sims = _tfidf([_masked_words(r["question"]) for r in rows], vocab, idf) @ _tfidf(pool_words, vocab, idf).T
    sims = np.round(sims.toarray(), 9)
    pool_entity = [entity_name(r["question"], r["answer"]) for r in pool]
    pool_names = [_name_words(r["question"]) for r in pool]
    # One answer per pool entity: its `author` field, else its name, else the row itself.
    pool_key = [
        ("author", r["author"]) if "author" in r else ("name", e) if e else ("row", j)
        for j, (r, e) in enumerate(zip(pool, pool_entity))
    ]
    out = []
    for i, row in enumerate(rows):
        question, answer = row["question"], row["answer"]
        names = _name_words(question)
        entity = entity_name(question, answer)
        ranked = _ranked(sims[i], seed, question, pool)
        chosen: list[str] = []
        used: set = set()
        for j in ranked:
            cand = pool[j]
            if (
                "author" in row and "author" in cand and cand["author"] == row["author"]
            ) or names & pool_names[j]:
                continue  # the row's own entity: its other answers may be true, never "wrong"
            if pool_key[j] in used or ("fact" in row and cand.get("fact") == row["fact"]):
                continue
            wrong = cand["answer"]
            if entity and pool_entity[j]:
                wrong = wrong.replace(pool_entity[j], entity)
            if _same(wrong, answer) or any(_same(wrong, c) for c in chosen):
                continue
            chosen.append(wrong)
            used.add(pool_key[j])
            if len(chosen) == k:
                break
        if len(chosen) < k:
            raise DataError(
                f"only {len(chosen)} of {k} wrong answers could be built for {question!r} from {len(pool)} "
                "retain questions about other entities; the constructed truth ratio needs a retain split that asks "
                "other entities the same kinds of questions (or pass --stop_statistic auc)"
            )
        out.append(chosen)
    return out


def with_constructed(
    rows: Sequence[dict], pool: Sequence[dict], *, paraphrase: bool, k: int = N_CONSTRUCTED, seed: int = 0
) -> list[dict]:
    """Rows for the truth ratio: `perturbed_answer` built by `construct_perturbed`, and as the correct
    side the row's `paraphrased_answer` if `paraphrase`, else its own answer."""
    wrong = construct_perturbed(rows, pool, k=k, seed=seed)
    return [
        dict(question=r["question"], answer=r["answer"],
             paraphrased_answer=r["paraphrased_answer"] if paraphrase else r["answer"], perturbed_answer=w)
        for r, w in zip(rows, wrong)
    ]  # fmt: skip
