"""TOFU metric functions against values worked out by hand on small, uneven inputs (pytest tests/test_metrics.py)."""

from __future__ import annotations

import numpy as np
import pytest

from llm_unlearn.eval.metrics import (
    MODEL_UTILITY_INPUTS,
    SplitScores,
    fact_recall,
    forget_quality,
    forget_truth_ratio,
    model_utility,
    normalized_prob,
    options_normalized_prob,
    retain_truth_ratio,
    rouge_l_recall,
    tofu_metrics,
    truth_ratio,
)

# Two samples with 2 and 3 perturbed answers: mean perturbed losses 2.5 and 3.0.
PARA = [1.0, 2.0]
PERTURBED = [[2.0, 3.0], [1.0, 2.0, 6.0]]


def test_geometric_truth_ratio_is_exp_of_para_loss_minus_mean_perturbed_loss():
    # exp(1 - 2.5) = e^-1.5 and exp(2 - 3) = e^-1
    np.testing.assert_allclose(
        truth_ratio(PARA, PERTURBED, "geometric"), [0.22313016014842982, 0.36787944117144233]
    )


def test_arithmetic_truth_ratio_averages_perturbed_probabilities_before_dividing():
    # (e^-1 + e^-2) / 2 and (e^1 + e^0 + e^-4) / 3
    np.testing.assert_allclose(
        truth_ratio(PARA, PERTURBED, "arithmetic"), [0.2516073622040275, 1.2455324891159265]
    )


def test_truth_ratio_rejects_an_unknown_variant_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="geometric, arithmetic"):
        truth_ratio(PARA, PERTURBED, "harmonic")


def test_forget_aggregation_scores_a_ratio_and_its_inverse_alike():
    np.testing.assert_allclose(forget_truth_ratio([0.5, 2.0, 1.0]), [0.5, 0.5, 1.0])
    assert forget_truth_ratio([0.25, 4.0]).mean() == pytest.approx(0.25)


def test_retain_aggregation_clips_one_minus_ratio_at_zero():
    np.testing.assert_allclose(retain_truth_ratio([0.25, 1.5, 0.6]), [0.75, 0.0, 0.4])


def test_normalized_prob_is_exp_of_minus_mean_nll():
    np.testing.assert_allclose(normalized_prob([0.0, 1.0]), [1.0, 0.36787944117144233])


def test_options_normalized_prob_divides_by_the_sum_over_answer_and_perturbations():
    # 1 / (1 + e^0 + e^-1 + e^-2) with 3 perturbations, and 1/2 with one equally likely perturbation
    got = options_normalized_prob([1.0, 0.0], [[1.0, 2.0, 3.0], [0.0]])
    np.testing.assert_allclose(got, [0.39948630465030277, 0.5])


def test_rouge_l_recall_is_lcs_over_target_length_with_stemming_and_no_punctuation():
    got = rouge_l_recall(
        ["The cat sat on the mat.", "running dogs", "Paris"],
        ["the cat was on a mat", "the dog runs", ""],
    )
    # LCS(the cat sat on the mat, the cat was on a mat) = the cat on mat: 4/6; run dog vs the dog run: 1/2
    np.testing.assert_allclose(got, [4 / 6, 0.5, 0.0])


def test_fact_recall_is_a_case_insensitive_substring_match():
    np.testing.assert_array_equal(
        fact_recall(["Paris", "1984"], ["He lives in PARIS.", "born in 1985"]), [1.0, 0.0]
    )


def test_forget_quality_is_the_exact_ks_p_value():
    # Fully separated samples of 4 and 4: D = 1, p = 2 / C(8, 4)
    assert forget_quality([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(2 / 70)
    assert forget_quality([0.3, 0.1, 0.2], [0.1, 0.2, 0.3]) == 1.0


def test_model_utility_is_the_harmonic_mean_of_nine_numbers():
    # 9 / (3 * 1 + 3 * 2 + 3 * 4)
    assert model_utility([1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]) == pytest.approx(9 / 21)


def test_model_utility_is_zero_when_any_input_is_zero():
    assert model_utility([0.5] * 8 + [0.0]) == 0.0


def test_model_utility_refuses_a_wrong_number_of_inputs():
    with pytest.raises(ValueError, match="needs 9"):
        model_utility([0.5] * 8)


def scores(n: int, paraphrase: bool) -> SplitScores:
    return SplitScores(
        answer_loss=np.linspace(0.5, 1.0, n),
        paraphrased_loss=np.linspace(1.0, 2.0, n) if paraphrase else None,
        perturbed_loss=[np.full(k + 1, 2.0) for k in range(n)],
        rouge_l=np.linspace(0.2, 1.0, n),
    )


def test_tofu_metrics_gives_every_number_a_direction_and_keeps_raw_ratios():
    metrics = tofu_metrics(
        {"forget": scores(3, True), "retain": scores(4, True), "ra": scores(2, False), "wf": scores(5, False)}
    )
    assert set(MODEL_UTILITY_INPUTS) <= set(metrics)
    assert all(entry["direction"] in ("higher", "lower", "closer_to_reference") for entry in metrics.values())
    forget = metrics["forget_truth_ratio"]
    # R = exp(l_para - 2) with l_para = 1.0, 1.5, 2.0
    np.testing.assert_allclose(forget["per_sample_ratio"], np.exp([-1.0, -0.5, 0.0]))
    assert forget["value"] == pytest.approx(np.exp([-1.0, -0.5, 0.0]).mean())
    # ra has no paraphrase: its truth ratio uses the answer's own loss
    np.testing.assert_allclose(metrics["ra_truth_ratio"]["per_sample_ratio"], np.exp([0.5 - 2.0, 1.0 - 2.0]))
    assert metrics["model_utility"]["value"] == pytest.approx(
        model_utility([metrics[name]["value"] for name in MODEL_UTILITY_INPUTS])
    )
