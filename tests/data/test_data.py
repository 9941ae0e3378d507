"""TOFU-format loading, prompt formats and answer masking. `pytest tests/test_data.py`"""

from __future__ import annotations

import json

import pytest

from llm_unlearn.data.qa import (
    EVAL_FIELDS,
    IGNORE_INDEX,
    PROMPT_FORMATS,
    DataError,
    QACollator,
    check_forget_retain,
    encode_qa,
    forget_pct,
    load_split,
    paired_split,
)
from llm_unlearn.models.tiny import train_tokenizer

TOFU_SPLITS = {
    "full": 4000, "forget01": 40, "forget05": 200, "forget10": 400, "retain99": 3960, "retain95": 3800,
    "retain90": 3600, "forget01_perturbed": 40, "forget05_perturbed": 200, "forget10_perturbed": 400,
    "retain_perturbed": 400, "real_authors_perturbed": 100, "world_facts_perturbed": 117,
    "holdout01": 40, "holdout05": 200, "holdout10": 400,
}  # fmt: skip


@pytest.fixture(scope="module")
def tok(tofu_dir):
    rows = load_split("full", tofu_dir)[:600]
    return train_tokenizer([r["question"] + " " + r["answer"] for r in rows], vocab_size=800)


@pytest.mark.parametrize(("split", "n"), sorted(TOFU_SPLITS.items()))
def test_loader_reads_every_real_tofu_split_with_its_fields(tofu_dir, split, n):
    required = (
        EVAL_FIELDS
        if split.endswith("_perturbed") and not split.startswith(("real", "world"))
        else (
            ("question", "answer", "perturbed_answer")
            if split.endswith("_perturbed")
            else ("question", "answer")
        )
    )
    rows = load_split(split, tofu_dir, required=required)
    assert len(rows) == n
    if "perturbed_answer" in required:
        assert all(isinstance(r["perturbed_answer"], list) and r["perturbed_answer"] for r in rows)


def test_real_tofu_forget10_and_retain90_are_disjoint_and_make_full(tofu_dir):
    forget, retain, full = (load_split(s, tofu_dir) for s in ("forget10", "retain90", "full"))
    check_forget_retain(forget, retain, "forget10", "retain90")
    assert [r["question"] for r in retain + forget] == [r["question"] for r in full]


@pytest.mark.parametrize("prompt_format", PROMPT_FORMATS)
def test_masking_keeps_exactly_the_answer_and_one_end_token(tok, tofu_dir, prompt_format):
    for row in load_split("forget10_perturbed", tofu_dir)[:20]:
        enc = encode_qa(tok, row["question"], row["answer"], prompt_format, max_length=512)
        labels = enc["labels"]
        kept = [t for t in labels if t != IGNORE_INDEX]
        n_prompt = labels.index(kept[0])
        assert all(t == IGNORE_INDEX for t in labels[:n_prompt])
        assert enc["input_ids"][n_prompt:] == kept
        assert kept.count(tok.eos_token_id) == 1 and kept[-1] == tok.eos_token_id
        expected = (" " if prompt_format == "qa" else "") + row["answer"] + tok.eos_token
        assert tok.decode(kept) == expected


def test_collator_pads_with_ignored_labels_and_zero_attention_on_either_side(tok):
    a = encode_qa(tok, "Who?", "A short answer.", "qa", 64)
    b = encode_qa(tok, "Who wrote it?", "A much longer answer with several more words.", "qa", 64)
    for side in ("right", "left"):
        batch = QACollator(pad_token_id=tok.pad_token_id, padding_side=side)([a, b])
        short = batch["attention_mask"][0]
        assert int(short.sum()) == len(a["input_ids"])
        pad_pos = short == 0
        assert (batch["labels"][0][pad_pos] == IGNORE_INDEX).all()
        assert (batch["input_ids"][0][pad_pos] == tok.pad_token_id).all()
        assert bool(pad_pos[-1] if side == "right" else pad_pos[0])


def test_answer_longer_than_max_length_is_an_error_not_a_truncation(tok):
    with pytest.raises(DataError, match="exceeds max_length=8.*raise --max_length"):
        encode_qa(
            tok, "A question?", "An answer that is certainly longer than eight tokens in total.", "qa", 8
        )


def test_tokenizer_round_trips_every_tofu_answer(tok, tofu_dir):
    for split in ("full", "real_authors_perturbed", "world_facts_perturbed"):
        for row in load_split(split, tofu_dir):
            assert tok.decode(tok(row["answer"], add_special_tokens=False)["input_ids"]) == row["answer"]


def test_missing_data_dir_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="does not exist.*llm-unlearn world"):
        load_split("forget10", tmp_path / "nope")


def test_missing_split_file_lists_available_splits(tmp_path):
    (tmp_path / "full.json").write_text('{"question": "q", "answer": "a"}\n')
    with pytest.raises(DataError, match="forget10.json not found.*full"):
        load_split("forget10", tmp_path)


def test_missing_field_names_row_and_field(tmp_path):
    (tmp_path / "forget10.json").write_text('{"question": "q", "answer": "a"}\n{"question": "q2"}\n')
    with pytest.raises(DataError, match="row 2 lacks field.*answer"):
        load_split("forget10", tmp_path)


def test_empty_split_is_refused(tmp_path):
    (tmp_path / "forget10.json").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_split("forget10", tmp_path)


def test_overlapping_forget_and_retain_are_refused():
    rows = [{"question": "q1", "answer": "a"}, {"question": "q2", "answer": "b"}]
    with pytest.raises(DataError, match="share 1 question"):
        check_forget_retain(rows[:1], rows, "forget10", "retain90")


def test_reader_accepts_json_lines_arrays_and_concatenated_arrays(tmp_path):
    rows = [{"question": f"q{i}", "answer": "a"} for i in range(4)]
    (tmp_path / "a.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "b.json").write_text(json.dumps(rows, indent=2))
    (tmp_path / "c.json").write_text(json.dumps(rows[:2]) + "\n" + json.dumps(rows[2:]) + "\n")
    assert load_split("a", tmp_path) == load_split("b", tmp_path) == load_split("c", tmp_path) == rows


def test_pairings_follow_tofu():
    assert paired_split("forget10", "retain") == "retain90"
    assert paired_split("forget01", "holdout") == "holdout01"
    assert paired_split("forget05", "perturbed") == "forget05_perturbed"
    with pytest.raises(DataError, match="cannot pair split .full. .*forget10 -> retain90"):
        paired_split("full", "retain")
    assert forget_pct("forget10_perturbed") == 10


@pytest.mark.parametrize("name", ["forget10_mine", "forget100", "forget5", "forget10x", "myforget10"])
def test_a_name_that_only_starts_like_tofus_pairs_with_nothing(name):
    """`forget10_mine` was paired with forget10's companions: trained on its own rows, evaluated on
    forget10_perturbed's, another author."""
    assert forget_pct(name) is None
    with pytest.raises(DataError, match=f"cannot pair split {name!r}"):
        paired_split(name, "perturbed")


def test_split_files_that_cannot_be_read_say_why(tmp_path):
    rows = [{"question": "q1?", "answer": "a"}, {"question": "q2?", "answer": "b"}]
    # One array over many lines with a trailing comma: the line of the error, not line 1.
    (tmp_path / "f.json").write_text(json.dumps(rows, indent=2)[:-2] + ",\n]")
    with pytest.raises(DataError, match=r"f\.json:10 is not valid JSON \(Expecting value\)"):
        load_split("f", tmp_path)
    (tmp_path / "g.jsonl").write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(
        DataError, match=r"g\.json not found; .*g\.jsonl is there: splits are read from <name>\.json"
    ):
        load_split("g", tmp_path)
    (tmp_path / "h.json").symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(DataError, match=r"h\.json is a link to .*nowhere\.json, which does not exist"):
        load_split("h", tmp_path)
    with pytest.raises(
        DataError, match=r"f_perturbed\.json not found; splits in .*: f\. The evaluation reads"
    ):
        load_split("f_perturbed", tmp_path)  # the broken link h is no split to list


@pytest.mark.parametrize("name", ["../f", "sub/f", "/tmp/f", ".."])
def test_a_split_named_by_a_path_is_refused(tmp_path, name):
    """`--forget_split ../x` read a file outside --data_dir (and named the run `runs/graddiff-.._x`)."""
    (tmp_path / "d").mkdir()
    with pytest.raises(
        DataError, match=r"split name .* is not a name: a split is the file <name>\.json in --data_dir"
    ):
        load_split(name, tmp_path / "d")
