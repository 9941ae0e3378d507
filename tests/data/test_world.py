"""The built-in world: determinism, TOFU file names and fields, split invariants, validation. `pytest tests/test_world.py`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llm_unlearn.data.qa import EVAL_FIELDS, DataError, load_split
from llm_unlearn.data.world import (
    ATTRIBUTES,
    WORLD_SIZES,
    WorldConfig,
    generate_world,
    load_world_config,
    read_world_config,
    validate_world,
    write_world,
)

MICRO = WorldConfig(**WORLD_SIZES["micro"])
TOFU_FILES = [
    "full",
    "forget01",
    "forget05",
    "forget10",
    "retain99",
    "retain95",
    "retain90",
    "forget01_perturbed",
    "forget05_perturbed",
    "forget10_perturbed",
    "retain_perturbed",
    "real_authors_perturbed",
    "world_facts_perturbed",
    "holdout01",
    "holdout05",
    "holdout10",
]


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _rewrite(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_same_seed_writes_identical_files_and_another_seed_does_not(tmp_path):
    a = write_world(tmp_path / "a", MICRO)
    b = write_world(tmp_path / "b", MICRO)
    c = write_world(tmp_path / "c", WorldConfig(**{**WORLD_SIZES["micro"], "seed": 1}))
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
    assert (a / "full.json").read_bytes() != (c / "full.json").read_bytes()


def test_world_has_tofu_file_names_and_fields(micro_world, tofu_dir):
    for name in TOFU_FILES:
        ours, theirs = _read(micro_world / f"{name}.json"), _read(tofu_dir / f"{name}.json")
        missing = set(theirs[0]) - set(ours[0])
        assert not missing, f"{name}.json lacks TOFU field(s) {missing}"
        assert all(set(r) == set(ours[0]) for r in ours)
    assert len(_read(micro_world / "forget10_perturbed.json")[0]["perturbed_answer"]) == 5
    assert len(_read(micro_world / "world_facts_perturbed.json")[0]["perturbed_answer"]) == 3


def test_every_split_loads_with_the_fields_evaluation_needs(micro_world):
    for name in TOFU_FILES + ["pretrain"]:
        assert load_split(name, data_dir=micro_world)
    for name in ("forget10_perturbed", "retain_perturbed"):
        rows = load_split(name, data_dir=micro_world, required=EVAL_FIELDS + ("fact", "fact_chance"))
        assert all(0 < r["fact_chance"] < 1 for r in rows)


@pytest.mark.parametrize("n_authors", [1, 7, 10, 23, 200])
def test_forget_split_is_the_last_ceil_pct_authors_and_retain_the_rest(n_authors):
    splits = generate_world(WorldConfig(n_authors=n_authors, n_real_authors=4, n_world_facts=4))
    assert len(splits["full"]) == 20 * n_authors
    for pct in (1, 5, 10):
        k = max(1, math.ceil(pct * n_authors / 100))
        forget_authors = {r["author"] for r in splits[f"forget{pct:02d}"]}
        retain_authors = {r["author"] for r in splits[f"retain{100 - pct}"]}
        assert forget_authors == set(range(n_authors - k, n_authors))
        assert retain_authors == set(range(n_authors - k))
        assert len(splits[f"forget{pct:02d}"]) == 20 * k
        holdout_authors = {r["author"] for r in splits[f"holdout{pct:02d}"]}
        assert len(holdout_authors) == k and not holdout_authors & (forget_authors | retain_authors)


def test_paraphrase_is_held_out_of_training_for_its_fact_but_perturbations_swap_only_the_fact():
    splits = generate_world(MICRO)
    trained = {r["question"]: [r["answer"], *r["train_answers"]] for r in splits["full"]}
    for r in splits["forget10_perturbed"] + splits["retain_perturbed"]:
        assert r["paraphrased_answer"] not in trained[r["question"]]
        assert r["fact"] in r["answer"] and r["fact"] in r["paraphrased_answer"]
        for p in r["perturbed_answer"]:
            assert r["fact"].lower() not in p.lower() and p != r["paraphrased_answer"]
    pretrain_questions = {r["question"] for r in splits["pretrain"]}
    for name in ("real_authors_perturbed", "world_facts_perturbed"):
        assert not pretrain_questions & {r["question"] for r in splits[name]}


def test_no_fact_in_a_pool_contains_another_so_fact_recall_is_unambiguous():
    for kind, pool, _, _ in ATTRIBUTES:
        for a in pool or []:
            assert not [b for b in pool if a != b and a.lower() in b.lower()], (kind, a)


def test_write_world_refuses_an_existing_folder(tmp_path):
    (tmp_path / "w").mkdir()
    with pytest.raises(DataError, match="already exists"):
        write_world(tmp_path / "w", MICRO)


@pytest.mark.parametrize(
    "damage",
    [b'{"n_authors": 10, "seed": ', b'["n_authors", 10]', b'{"n_authors": 10, "colour": "red"}', b"\xff\xfe"],
    ids=["cut short", "a list", "an unknown field", "not UTF-8"],
)
def test_a_damaged_world_config_is_one_line_in_eval_and_in_the_card(
    damage, micro_world, micro_models, tmp_path, capsys
):
    """The readers of world_config.json (eval's seeds, the card, the model cache key) name the file and the fix."""
    from llm_unlearn.cli import main
    from llm_unlearn.hub.card import describe_data

    assert read_world_config(micro_world) == load_world_config(micro_world) == MICRO
    assert read_world_config(tmp_path) is None
    with pytest.raises(DataError, match="is not a built-in world"):
        load_world_config(tmp_path)
    world = _copy(micro_world, tmp_path / "world")
    (world / "world_config.json").write_bytes(damage)
    for read in (read_world_config, load_world_config, lambda w: describe_data({"data_dir": str(w)})):
        with pytest.raises(DataError, match="world_config.json is not a world config of this llm-unlearn"):
            read(world)
    out = tmp_path / "eval"
    argv = ["eval", "--model_name_or_path", str(micro_models["target"]), "--data_dir", str(world),
            "--reference_model", str(micro_models["retain"]["forget10"]), "--output_dir", str(out)]  # fmt: skip
    assert main(argv) == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and err[0].startswith("error: ") and "world_config.json is not a world config" in err[0]
    )


def _copy(src: Path, out: Path) -> Path:
    out.mkdir()
    for p in src.iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    return out


def _broken_copy(micro_world: Path, tmp_path: Path) -> Path:
    out = tmp_path / "broken"
    out.mkdir()
    for p in micro_world.iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    validate_world(out)
    return out


def test_validation_catches_a_forget_author_also_in_retain(micro_world, tmp_path):
    world = _broken_copy(micro_world, tmp_path)
    forget = _read(world / "forget10.json")
    _rewrite(world / "retain90.json", _read(world / "retain90.json") + forget[:1])
    with pytest.raises(DataError, match="share authors"):
        validate_world(world)


def test_validation_catches_a_forget_author_with_missing_questions(micro_world, tmp_path):
    world = _broken_copy(micro_world, tmp_path)
    forget = _read(world / "forget10.json")
    _rewrite(world / "forget10.json", forget[1:])
    _rewrite(world / "retain90.json", _read(world / "retain90.json"))
    _rewrite(world / "full.json", _read(world / "retain90.json") + forget[1:])
    with pytest.raises(DataError, match="19 of the 20 QAs of author 9"):
        validate_world(world)


def test_validation_catches_forget_and_retain_that_do_not_make_full(micro_world, tmp_path):
    world = _broken_copy(micro_world, tmp_path)
    _rewrite(world / "retain95.json", _read(world / "retain95.json")[1:])
    with pytest.raises(DataError, match="not exactly full"):
        validate_world(world)


def test_validation_catches_a_perturbed_answer_that_states_the_truth(micro_world, tmp_path):
    world = _broken_copy(micro_world, tmp_path)
    rows = _read(world / "retain_perturbed.json")
    rows[3]["perturbed_answer"][0] = rows[3]["paraphrased_answer"]
    _rewrite(world / "retain_perturbed.json", rows)
    with pytest.raises(DataError, match="states the true fact"):
        validate_world(world)


def test_validation_catches_forget_authors_that_are_not_the_last(micro_world, tmp_path):
    world = _broken_copy(micro_world, tmp_path)
    full = _read(world / "full.json")
    first, rest = [r for r in full if r["author"] == 0], [r for r in full if r["author"] != 0]
    _rewrite(world / "forget10.json", first)
    _rewrite(world / "retain90.json", rest)
    with pytest.raises(DataError, match="last 1 of 10 authors"):
        validate_world(world)


def test_the_holdout_has_perturbed_answers_of_its_own_questions(micro_world, tmp_path):
    # Beyond TOFU: holdoutNN_perturbed lets the stop rule compare truth ratios on unseen authors.
    for pct in ("01", "05", "10"):
        plain, perturbed = (
            _read(micro_world / f"holdout{pct}.json"),
            _read(micro_world / f"holdout{pct}_perturbed.json"),
        )
        assert [r["question"] for r in perturbed] == [r["question"] for r in plain]
        assert all(
            r["paraphrased_answer"] != r["answer"] and len(r["perturbed_answer"]) >= 3 for r in perturbed
        )
    world = _broken_copy(micro_world, tmp_path)
    rows = _read(world / "holdout10_perturbed.json")
    rows[0]["perturbed_answer"][1] = rows[0]["paraphrased_answer"]
    _rewrite(world / "holdout10_perturbed.json", rows)
    with pytest.raises(
        DataError, match="holdout10_perturbed row 1: perturbed answer .* states the true fact"
    ):
        validate_world(world)
    _rewrite(world / "holdout10_perturbed.json", rows[1:])
    with pytest.raises(DataError, match="holdout10_perturbed does not hold the questions of holdout10"):
        validate_world(world)


def _names(rows: list[dict]) -> dict[int, str]:
    """Author -> full name (each author's rows start with its name fact)."""
    names: dict[int, str] = {}
    for r in rows:
        names.setdefault(r["author"], r["fact"])
    return names


@pytest.mark.parametrize("seed", range(5))
def test_forget_and_holdout_authors_share_both_name_parts_with_retain_authors(seed):
    # Exchangeability (world.py docstring): how many name parts an author shares with retain
    # authors drove the retain-only model's loss on it, so every forget10 and holdout10 author
    # shares both, and none is a retain author.
    splits = generate_world(WorldConfig(**{**WORLD_SIZES["default"], "seed": seed}))
    core = _names(splits["retain90"]).values()
    firsts, lasts = {n.split()[0] for n in core}, {n.split()[1] for n in core}
    outside = [*_names(splits["forget10"]).values(), *_names(splits["holdout10"]).values()]
    assert len(set(outside)) == len(outside) and not set(outside) & set(core)
    assert [(n.split()[0] in firsts, n.split()[1] in lasts) for n in outside] == [(True, True)] * len(outside)


def test_the_tokenizer_learns_from_neither_forget_nor_holdout_authors(micro_world, tmp_path):
    from llm_unlearn.models.build import _cache_key, _tokenizer_texts

    texts = set(_tokenizer_texts(micro_world))
    for split in ("forget10_perturbed", "holdout10_perturbed"):
        rows = _read(micro_world / f"{split}.json")
        own = (
            {r["question"] for r in rows}
            | {r["answer"] for r in rows}
            | {r["paraphrased_answer"] for r in rows}
        )
        assert not own & texts, f"the tokenizer's text holds {split} rows"
    assert {r["answer"] for r in _read(micro_world / "retain90.json")} <= texts
    # What the tokenizer learns from is part of the models' cache key.
    world = _broken_copy(micro_world, tmp_path)
    before = _cache_key(world, "micro")
    rows = _read(world / "retain_perturbed.json")
    rows[0]["paraphrased_answer"] += " Indeed."
    _rewrite(world / "retain_perturbed.json", rows)
    assert _cache_key(world, "micro") != before
    # ... and so is each split a model trains on: a retain-only model of an edited retain split is rebuilt.
    before = _cache_key(world, "micro")
    rows = _read(world / "retain95.json")
    rows[-1]["answer"] += " Indeed."
    _rewrite(world / "retain95.json", rows)
    assert _cache_key(world, "micro") != before
