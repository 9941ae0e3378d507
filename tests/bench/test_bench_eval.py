"""`llm-unlearn bench --eval` on micro models, its comparison, and repeatable evaluation. `pytest tests/test_bench_eval.py`."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

from llm_unlearn.bench.eval import TARGETS, compare, identical
from llm_unlearn.cli import main


@pytest.fixture(scope="module")
def target_eval(micro_world, micro_models) -> dict:
    from llm_unlearn.eval.tofu import evaluate
    from llm_unlearn.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(micro_models["target"]))
    return evaluate(model, tokenizer, data_dir=micro_world, max_new_tokens=16, progress=False)


def test_evaluating_a_model_twice_gives_identical_eval_values(micro_world, micro_models, target_eval):
    from llm_unlearn.eval.tofu import evaluate
    from llm_unlearn.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(micro_models["target"]))  # a fresh load, too
    again = evaluate(model, tokenizer, data_dir=micro_world, max_new_tokens=16, progress=False)
    assert identical(target_eval, again)
    assert json.dumps(again["metrics"]) == json.dumps(target_eval["metrics"])


def test_compare_finds_the_largest_likelihood_difference_and_counts_changed_generations(target_eval):
    other = copy.deepcopy(target_eval)
    assert compare(target_eval, other)["eval_max_abs_diff"] == 0.0
    other["losses"]["retain"]["perturbed"][3][1] += 2e-5
    other["metrics"]["mia_auc_zlib"]["per_sample_holdout"][0] -= 1e-6
    other["metrics"]["mia_auc_min_k_plus_plus"]["per_sample_forget"][2] += 3e-5  # reported apart
    gens = other["generations"]["forget"]
    gens[0]["generated"] += " changed"
    other["metrics"]["forget_rouge_l"]["value"] += 0.01
    diff = compare(target_eval, other)
    assert diff["eval_max_abs_diff"] == pytest.approx(2e-5, rel=1e-6)
    assert diff["eval_max_abs_diff_at"] == "losses.retain.perturbed[3]"
    assert diff["eval_max_abs_diff_min_k_plus_plus_scores"] == pytest.approx(3e-5, rel=1e-6)
    total = sum(len(g) for g in target_eval["generations"].values())
    assert diff["eval_generations_identical_fraction"] == (total - 1) / total
    assert diff["eval_rouge_l_mean_max_abs_diff"] == pytest.approx(0.01)
    assert diff["eval_rouge_l_mean_abs_diff"]["retain"] == 0.0
    assert not identical(target_eval, other)


def test_eval_bench_on_micro_writes_speedup_agreement_and_timings(micro_models, tmp_path, capsys):
    out = tmp_path / "bench_eval.json"
    argv = ["bench", "--eval", "--size", "micro", "--threads", "1", "--batch_size", "16", "--out", str(out)]
    assert main(argv) == 0
    r = json.loads(out.read_text())
    extra = (
        "eval_max_rel_diff_truth_ratio",
        "eval_max_abs_diff_min_k_plus_plus_scores",
        "eval_model_utility_abs_diff",
    )
    for key in (*TARGETS, *extra):
        assert math.isfinite(r[key]), key
    assert set(r["targets"]) == {*TARGETS, "eval_deterministic"}
    assert r["eval_speedup_batched"] > 0 and r["eval_deterministic"] is True
    # Correctness holds at any size: batch 1 and batch 16 agree on every likelihood number.
    assert r["eval_max_abs_diff"] < 1e-5 and r["eval_generations_identical_fraction"] >= 0.99
    assert r["eval_max_abs_diff_at"].startswith(("losses.", "metrics."))
    runs = r["seconds"]
    assert len(runs["batched"]["runs_s"]) == len(runs["single"]["runs_s"]) == 1
    assert runs["single"]["median_s"] / runs["batched"]["median_s"] == pytest.approx(
        r["eval_speedup_batched"]
    )
    w = r["workload"]
    assert w["generations"] == sum(n for role, n in w["splits"].items() if role != "holdout")
    assert w["sequences_scored"] > w["samples"] > 0 and r["settings"]["batch_size"] == 16
    assert r["hardware"] and r["torch_threads"] == 1 and r["model"]["parameters"] > 0
    assert "eval_speedup_batched" in capsys.readouterr().out


def test_eval_bench_refuses_a_batch_size_that_compares_nothing(tmp_path, capsys):
    assert (
        main(["bench", "--eval", "--size", "micro", "--batch_size", "1", "--out", str(tmp_path / "b.json")])
        == 2
    )
    assert "--batch_size must be at least 2" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("batch_size", [2, 5, 64])
def test_prompt_sharing_scores_equal_one_pair_at_a_time(micro_world, micro_models, batch_size):
    """Batches share each question's prompt pass; 2 cuts a question's 7 answers into several groups."""
    from llm_unlearn.data.qa import load_split
    from llm_unlearn.eval.scoring import answer_losses
    from llm_unlearn.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(micro_models["target"]))
    rows = load_split("forget10_perturbed", data_dir=micro_world)[:6]
    pairs = [
        (r["question"], a)
        for r in rows
        for a in (r["answer"], r["paraphrased_answer"], *r["perturbed_answer"])
    ]
    questions, answers = zip(*pairs[::-1])  # a question's answers need not be adjacent
    one = answer_losses(model, tokenizer, questions, answers, prompt_format="chat_template", batch_size=1)
    shared = answer_losses(
        model, tokenizer, questions, answers, prompt_format="chat_template", batch_size=batch_size
    )
    assert len(set(questions)) == 6 and len({len(a) for a in answers}) > 5
    np.testing.assert_allclose(shared, one, rtol=0, atol=1e-5)
