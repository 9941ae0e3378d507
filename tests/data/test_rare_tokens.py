"""`--forget_token_max_df`: the forget term trains only on answer tokens the retain answers do not share."""

from __future__ import annotations

import json

import pytest

from llm_unlearn.data.qa import IGNORE_INDEX as X
from llm_unlearn.data.rare_tokens import document_frequency, keep_rare_labels


def feature(prompt: int, answer: list[int]) -> dict:
    return {"input_ids": list(range(prompt)) + answer, "labels": [X] * prompt + answer}


def test_document_frequency_counts_each_answer_once():
    retain = [feature(2, [5, 5, 6, 9]), feature(3, [5, 7, 9]), feature(1, [8, 9]), feature(2, [9])]
    df = document_frequency(retain)
    assert df == {5: 0.5, 6: 0.25, 7: 0.25, 8: 0.25, 9: 1.0}  # 5 twice in one answer: counted once
    assert document_frequency([]) == {}


def test_only_tokens_at_most_max_df_keep_their_labels_and_no_answer_is_left_empty():
    df = {5: 0.5, 6: 0.25, 9: 1.0}  # 9: the end-of-turn token, in every retain answer
    forget = [
        feature(2, [5, 40, 41, 9]),  # 40, 41: never in a retain answer (a name, a place)
        feature(1, [6, 5, 9]),  # nothing rare: keeps its rarest token (6) alone
        feature(3, [9, 5, 9]),  # nothing rare, rarest 5
    ]
    prompts = [f["input_ids"] for f in forget]
    kept, total = keep_rare_labels(forget, df, 0.0)
    assert (kept, total) == (4, 10)
    assert forget[0]["labels"] == [X, X, X, 40, 41, X]
    assert forget[1]["labels"] == [X, 6, X, X]
    assert forget[2]["labels"] == [X, X, X, X, 5, X]
    assert [f["input_ids"] for f in forget] == prompts  # the inputs are untouched: only what is trained on
    again = [feature(2, [5, 40, 6, 9])]
    assert keep_rare_labels(again, df, 0.3) == (2, 4) and again[0]["labels"] == [X, X, X, 40, 6, X]
    assert keep_rare_labels([feature(2, [5, 9])], df, 1.0) == (2, 2)  # max_df 1 would keep everything


@pytest.mark.parametrize("max_df", ["0", "0.01", "1"])
def test_unlearn_trains_the_forget_term_on_rare_tokens_and_logs_how_many(
    micro_world, micro_models, tmp_path, caplog, max_df
):
    import logging

    from llm_unlearn.cli import main

    out = tmp_path / "run"
    argv = ["unlearn", "--model_name_or_path", str(micro_models["target"]), "--data_dir", str(micro_world),
            "--forget_split", "forget10", "--method", "graddiff", "--max_steps", "2", "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--use_cpu", "true", "--do_final_eval", "false",
            "--forget_token_max_df", max_df, "--report_to", "none"]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="llm_unlearn"):
        assert main(argv) == 0
    lines = [r.getMessage() for r in caplog.records if "forget term on" in r.getMessage()]
    if max_df == "1":  # every token is in at most all the retain answers: whole answers, nothing to say
        assert lines == []
    else:
        kept, total = (int(w) for w in lines[0].split()[3:6:2])
        assert (
            len(lines) == 1 and 0 < kept < total
        )  # some phrasing is shared with the retain answers, not all
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(abs(r["loss_forget"]) < 1e3 for r in log if "loss_forget" in r)  # finite, trained on


def test_forget_token_df_split_counts_frequency_on_that_split_and_warns_when_it_is_small(
    micro_world, micro_models, tmp_path, caplog
):
    """`--forget_token_df_split holdout10`: the kept tokens are those rare in holdout10's answers (computed
    here from the same tokenization), not in the retain split's; a split of a few answers is warned about."""
    import logging

    from llm_unlearn.cli import main
    from llm_unlearn.data.qa import QADataset, load_split
    from llm_unlearn.models.loading import load_tokenizer
    from llm_unlearn.pipeline.forget_tokens import FEW_DF_ANSWERS

    tokenizer = load_tokenizer(str(micro_models["target"]))
    encode = dict(prompt_format="chat_template", max_length=1024, system_prompt=None)

    def expected(split: str) -> tuple[int, int]:
        forget = QADataset(load_split("forget10", data_dir=micro_world), tokenizer, **encode).features
        counted = QADataset(load_split(split, data_dir=micro_world), tokenizer, **encode).features
        return keep_rare_labels(forget, document_frequency(counted), 0.0)

    logged = {}
    for split in ("holdout10", None):
        extra = ["--forget_token_df_split", split] if split else []
        argv = ["unlearn", "--model_name_or_path", str(micro_models["target"]), "--data_dir", str(micro_world),
                "--forget_split", "forget10", "--method", "graddiff", "--max_steps", "1",
                "--output_dir", str(tmp_path / f"run-{split}"), "--per_device_train_batch_size", "4",
                "--use_cpu", "true", "--do_final_eval", "false", "--forget_token_max_df", "0",
                "--report_to", "none", *extra]  # fmt: skip
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="llm_unlearn"):
            assert main(argv) == 0
        messages = [r.getMessage() for r in caplog.records]
        (line,) = [m for m in messages if "forget term on" in m]
        logged[split] = tuple(int(w) for w in line.split()[3:6:2])
        assert line.endswith(f"of {split or 'the retain split'})")
        small = len(load_split(split or "retain90", data_dir=micro_world)) < FEW_DF_ANSWERS
        warned = [m for m in messages if "--forget_token_max_df counts token frequency on only" in m]
        assert bool(warned) == small and all("--forget_token_df_split" in m for m in warned)
    assert logged["holdout10"] == expected("holdout10") and logged[None] == expected("retain90")
    # Fewer answers to share phrasing with: more tokens count as rare.
    assert logged["holdout10"] != logged[None]
