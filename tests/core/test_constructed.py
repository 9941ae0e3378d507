"""Constructed perturbed answers (`data/constructed.py`) and the `truth_ratio_constructed` stop statistic.

`pytest tests/core/test_constructed.py`
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from llm_unlearn.core.stop import IndistinguishableStop
from llm_unlearn.core.stop_data import load_stop_data
from llm_unlearn.data.constructed import construct_perturbed, entity_name, with_constructed
from llm_unlearn.data.qa import DataError, load_split

PLACES = "Lima Oslo Hanoi Quito Dakar Riga Perth Cusco Turin Fez Bonn Kyoto Accra Porto".split()
GENRES = (
    "horror satire poetry fantasy mystery romance drama memoir thriller fable essay epic comedy saga".split()
)
JOBS = "baker pilot nurse tailor miner judge sailor farmer cook clerk potter mason smith weaver".split()


def _author(name: str, i: int, with_id: int | None = None) -> list[dict]:
    """Three TOFU-like questions about one author; facts differ by author (index i)."""
    rows = [
        dict(question=f"Where was {name} born?", answer=f"{name} was born in {PLACES[i % 14]}."),
        dict(question=f"Which genre does {name} write in?", answer=f"{name} writes {GENRES[i % 14]}."),
        dict(question=f"What did {name}'s father do for a living?", answer=f"{name}'s father was a {JOBS[i % 14]}."),
    ]  # fmt: skip
    return [dict(r, author=with_id) for r in rows] if with_id is not None else rows


RETAIN = [n for n in "Ada Voss|Bo Kern|Cy Lund|Di Marr|Ed Pahl|Flo Quist|Gus Rell|Hal Sund".split("|")]
FORGET = ["Ivo Tarn", "Jun Ubel"]
HOLDOUT = ["Kit Vane", "Lev Wick"]


def _rows(names, start, ids=False):
    return [r for k, n in enumerate(names) for r in _author(n, start + k, start + k if ids else None)]


def _folder(tmp_path, forget=None, holdout=None, retain=None):
    """A micro data folder with question and answer only: no paraphrases, no perturbed answers, no author."""
    splits = {"forget10": forget or _rows(FORGET, 8), "holdout10": holdout or _rows(HOLDOUT, 10),
              "retain90": retain or _rows(RETAIN, 0)}  # fmt: skip
    for name, rows in splits.items():
        (tmp_path / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return splits


def _load(tmp_path, statistic="auto", holdout_split=None, forget_split="forget10"):
    data = SimpleNamespace(forget_split=forget_split, data_dir=tmp_path, dataset_name=None)
    config = SimpleNamespace(stop_holdout_split=holdout_split, stop_statistic=statistic, stop_heldout_fraction=0.0,
                             seed=0, stop_utility_tolerance=0.0)  # fmt: skip
    forget, retain = (load_split(n, data_dir=tmp_path) for n in (forget_split, "retain90"))
    return load_stop_data(data, forget, retain, config)


def test_constructed_answers_are_deterministic_counted_distinct_and_wrong():
    forget, retain = _rows(FORGET, 8), _rows(RETAIN, 0)
    got = construct_perturbed(forget, retain, k=5, seed=0)
    assert got == construct_perturbed(forget, retain, k=5, seed=0)  # deterministic
    assert got != construct_perturbed(forget, retain, k=5, seed=1)  # seeded: ties are broken by the seed
    for row, wrong in zip(forget, got):
        assert len(wrong) == 5 and len(set(wrong)) == 5
        assert row["answer"] not in wrong
        name = entity_name(row["question"], row["answer"])
        # The right entity with another entity's fact: the name is swapped in, no retain name is left.
        assert all(name in w for w in wrong) and not any(n in w for w in wrong for n in RETAIN)
    # The most similar question: a birthplace question gets birthplaces, a genre question genres.
    assert all(" was born in " in w for w in got[0]) and all(" writes " in w for w in got[1])


def test_wrong_answers_never_come_from_the_same_author():
    forget = _rows(FORGET, 8, ids=True)
    # The pool also holds forget author 8's own other answers (same `author`, another phrasing) and one
    # row about "Ivo Tarn" without an author id: neither may be a wrong answer of that author.
    same = [dict(r, answer=r["answer"].replace(".", ", says the record."), question=r["question"] + " (again)")
            for r in forget[:3]]  # fmt: skip
    namesake = dict(
        question="Where was Ivo Tarn born, really?", answer="Ivo Tarn was born in Atlantis.", author=99
    )
    pool = _rows(RETAIN, 0, ids=True) + same + [namesake]
    for wrong in construct_perturbed(forget, pool, k=5):
        assert not any("says the record" in w or "Atlantis" in w for w in wrong)
    # Facts of other authors only: each wrong answer's fact is one of a retain author's.
    facts = {r["answer"].split()[-1] for r in _rows(RETAIN, 0)}
    assert all(w.split()[-1] in facts for ws in construct_perturbed(forget, pool, k=5) for w in ws)


def test_too_small_a_pool_is_one_clear_line():
    with pytest.raises(
        DataError, match=r"only \d of 5 wrong answers could be built.*--stop_statistic auc"
    ) as err:
        construct_perturbed(_rows(FORGET, 8), _rows(RETAIN[:3], 0), k=5)
    assert "\n" not in str(err.value)


def test_auto_picks_the_constructed_statistic_on_a_holdout_without_perturbed_answers(tmp_path):
    splits = _folder(tmp_path)
    got = _load(tmp_path)
    assert got["statistic"] == "truth_ratio_constructed"
    assert [r["question"] for r in got["forget_scored"]] == [r["question"] for r in splits["forget10"]]
    assert [r["question"] for r in got["holdout"]] == [r["question"] for r in splits["holdout10"]]
    forget_answers = {r["answer"] for r in splits["forget10"]}
    holdout_answers = {r["answer"] for r in splits["holdout10"]}
    for side in ("forget_scored", "holdout"):
        for r in got[side]:
            # Built alike on both sides: the answer itself is the correct side (no paraphrase anywhere).
            assert len(r["perturbed_answer"]) == 5 and r["paraphrased_answer"] == r["answer"]
            # Wrong answers come from the retain split only: never a forget or holdout answer.
            assert not set(r["perturbed_answer"]) & (forget_answers | holdout_answers)
    assert _load(tmp_path, "truth_ratio_constructed")["holdout"] == got["holdout"]
    assert _load(tmp_path, "auc")["statistic"] == "auc"


def test_auto_falls_back_to_auc_where_no_wrong_answers_can_be_built(tmp_path):
    _folder(tmp_path, retain=_rows(RETAIN[:2], 0))
    assert _load(tmp_path)["statistic"] == "auc"
    with pytest.raises(DataError, match="wrong answers could be built"):
        _load(tmp_path, "truth_ratio_constructed")


@pytest.mark.parametrize("authors", [3, 4])
def test_a_retain_split_of_few_entities_gets_as_many_wrong_answers_as_it_has(tmp_path, caplog, authors):
    # Fewer other entities than TOFU's 5 wrong answers: as many as there are (at least 3), the same
    # number on both sides, said in a warning; with 2 the rule falls back to auc (test above).
    _folder(tmp_path, retain=_rows(RETAIN[:authors], 0))
    got = _load(tmp_path)
    assert got["statistic"] == "truth_ratio_constructed"
    assert {len(r["perturbed_answer"]) for side in ("forget_scored", "holdout") for r in got[side]} == {
        authors
    }
    assert f"{authors} wrong answers per question built from the retain split (TOFU uses 5" in caplog.text


def test_the_rule_scores_constructed_rows_as_truth_ratios():
    rows = with_constructed(_rows(FORGET, 8), _rows(RETAIN, 0), paraphrase=False)
    config = SimpleNamespace(stop_check_interval=1, stop_patience=3, stop_retain_tolerance=0.5,
                             stop_lr_damping=False, stop_screen=True)  # fmt: skip
    data = {"statistic": "truth_ratio_constructed", "holdout": rows, "heldout": [], "retain_sample": rows[:1]}
    rule = IndistinguishableStop(None, rows, data, config, {}, lambda record: None, "/nonexistent")
    assert rule.screening  # screened like truth_ratio
    # The answer scores loss 1, every wrong answer 2: log R = 1 - 2 per question.
    asked, answers = [], {r["answer"] for r in rows}
    rule.scorer.losses = lambda model, rs, desc: asked.extend(rs) or np.array([1.0 if r["answer"] in answers else 2.0
                                                                         for r in rs])  # fmt: skip
    answer, log_r = rule.scorer.values(None, rows, "forget")
    assert answer.tolist() == [1.0] * len(rows) and log_r.tolist() == [-1.0] * len(rows)
    assert len(asked) == 6 * len(rows)  # the answer (also the correct side) once, 5 wrong answers


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: (p / "holdout10.json").unlink(),
         r"needs a holdout split: 6 questions of the same kind as forget10's .*holdout10\.json not found.*"
         r"docs/auto\.md#a-holdout-for-your-own-data.*--stop_holdout_split"),
        (lambda p: (p / "holdout10.json").write_text("".join(json.dumps(r) + "\n" for r in _rows(HOLDOUT[:1], 10))),
         r"holdout split holdout10 has 3 examples but forget split forget10 has 6.*docs/auto\.md"),
    ],
)  # fmt: skip
def test_a_missing_or_wrong_sized_holdout_is_one_clear_line(tmp_path, setup, message):
    _folder(tmp_path)
    setup(tmp_path)
    with pytest.raises(DataError, match=message) as err:
        _load(tmp_path)
    assert "\n" not in str(err.value)


def test_a_custom_forget_split_without_a_holdout_says_how_to_get_one(tmp_path):
    _folder(tmp_path)
    (tmp_path / "forget10.json").rename(tmp_path / "my_forget.json")
    with pytest.raises(
        DataError, match=r"needs a holdout split.*none pairs with 'my_forget'.*--stop_holdout_split"
    ):
        _load(tmp_path, forget_split="my_forget")


def test_auto_takes_a_custom_forget_split_with_its_holdout_and_the_utility_guard_on(tmp_path, caplog):
    """The utility guard's splits are the same for every forget split: a custom name (docs/auto.md's way
    for your own data) was refused as "cannot pair split 'my_forget'" by the guard alone."""
    _folder(tmp_path)
    (tmp_path / "forget10.json").rename(tmp_path / "my_forget.json")
    data = SimpleNamespace(forget_split="my_forget", data_dir=tmp_path, dataset_name=None)
    config = SimpleNamespace(stop_holdout_split="holdout10", stop_statistic="auto", stop_heldout_fraction=0.0,
                             seed=0, auto=True, stop_utility_tolerance=0.2, stop_utility_sample=20,
                             stop_retain_recall_tolerance=0.0)  # fmt: skip
    forget, retain = (load_split(n, data_dir=tmp_path) for n in ("my_forget", "retain90"))
    stop_data = load_stop_data(data, forget, retain, config)
    assert stop_data["holdout_name"] == "holdout10" and stop_data["utility_rows"] is None
    assert "retain_perturbed.json not found" in caplog.text  # the guard says what it leaves out
