"""The TOFU metric for HF `evaluate`, loaded offline from the package: same numbers as eval.json. `pytest tests/test_hf_metric.py`."""

from __future__ import annotations

import json

import pytest

from llm_unlearn.eval.metrics import truth_ratio
from llm_unlearn.hf_metrics import TOFU_METRIC, inputs_from_eval


@pytest.fixture(scope="module")
def evals(micro_world, micro_models, tmp_path_factory) -> dict:
    from llm_unlearn.eval.tofu import add_forget_quality, evaluate
    from llm_unlearn.models.loading import load_model_and_tokenizer

    out = {}
    for name, path in (("retain", micro_models["retain"]["forget10"]), ("target", micro_models["target"])):
        model, tokenizer = load_model_and_tokenizer(str(path))
        out[name] = evaluate(
            model, tokenizer, data_dir=micro_world, max_new_tokens=16, progress=False, mia=False
        )
    out["target"] = add_forget_quality(out["target"], out["retain"])
    return out


@pytest.fixture(scope="module")
def evaluate_lib(tmp_path_factory):
    """`evaluate`, offline, with its module cache in a temporary folder (never ~/.cache)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_MODULES_CACHE", str(tmp_path_factory.mktemp("hf_modules")))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("HF_EVALUATE_OFFLINE", "1")
    import evaluate

    yield evaluate
    mp.undo()


def test_metric_loads_from_the_package_and_matches_eval_json(evaluate_lib, evals, tmp_path):
    tofu = evaluate_lib.load(TOFU_METRIC, cache_dir=str(tmp_path), keep_in_memory=True)
    out = tofu.compute(**inputs_from_eval(evals["target"], evals["retain"]))
    metrics = evals["target"]["metrics"]
    assert out["forget_quality"] == pytest.approx(metrics["forget_quality"]["value"], rel=1e-12)
    assert out["model_utility"] == pytest.approx(metrics["model_utility"]["value"], rel=1e-12)
    for name, value in metrics["model_utility"]["inputs"].items():
        assert out[name] == pytest.approx(value, rel=1e-12), name
    assert out["forget_truth_ratio"] == pytest.approx(metrics["forget_truth_ratio"]["value"], rel=1e-12)
    assert 0 < out["forget_quality"] < 1  # the target is not the reference: the test compares something
    # Without the reference there is no forget quality; the rest is unchanged.
    alone = tofu.compute(**inputs_from_eval(evals["target"]))
    assert "forget_quality" not in alone and alone["model_utility"] == out["model_utility"]


def test_batches_added_one_question_at_a_time_give_the_same_numbers(evaluate_lib, evals, tmp_path):
    columns = inputs_from_eval(evals["target"], evals["retain"])
    tofu = evaluate_lib.load(TOFU_METRIC, cache_dir=str(tmp_path), keep_in_memory=True)
    for i in range(len(columns["split"])):
        tofu.add(**{k: v[i] for k, v in columns.items()})
    added = tofu.compute()
    assert added == tofu.compute(**columns)


def test_arithmetic_config_uses_the_arithmetic_truth_ratio(evaluate_lib, evals, tmp_path):
    result = evals["target"]
    tofu = evaluate_lib.load(
        TOFU_METRIC, config_name="arithmetic", cache_dir=str(tmp_path), keep_in_memory=True
    )
    out = tofu.compute(**inputs_from_eval(result))
    losses = result["losses"]["retain"]
    r = truth_ratio(losses["paraphrased"], losses["perturbed"], "arithmetic")
    assert out["retain_truth_ratio"] == pytest.approx(float((1 - r).clip(min=0).mean()), rel=1e-12)
    geometric = result["metrics"]["retain_truth_ratio"]["value"]
    assert abs(out["retain_truth_ratio"] - geometric) > 1e-6


def test_bad_inputs_are_refused_with_the_fix(evaluate_lib, evals, tmp_path):
    tofu = evaluate_lib.load(TOFU_METRIC, cache_dir=str(tmp_path), keep_in_memory=True)
    columns = inputs_from_eval(evals["target"], evals["retain"])
    no_wf = {k: [v for v, s in zip(col, columns["split"]) if s != "wf"] for k, col in columns.items()}
    with pytest.raises(ValueError, match=r"absent \['wf'\]"):
        tofu.compute(**no_wf)
    partial = dict(columns, reference_truth_ratio=[None, *columns["reference_truth_ratio"][1:]])
    with pytest.raises(ValueError, match="given for some forget examples but not all"):
        tofu.compute(**partial)
    # A metric of the other variant computes the model's ratios its way: the reference's are of the other kind.
    arithmetic = evaluate_lib.load(TOFU_METRIC, config_name="arithmetic", keep_in_memory=True)
    with pytest.raises(
        ValueError,
        match=r"reference truth ratios are geometric, not arithmetic: load the metric with config_name='geometric'",
    ):
        arithmetic.compute(**columns)
    # Inputs made without the variant column still compute; with reference ratios they must say their kind.
    plain = {k: v for k, v in columns.items() if k != "reference_truth_ratio_variant"}
    alone = {**plain, "reference_truth_ratio": [None] * len(plain["split"])}
    assert "forget_quality" not in tofu.compute(**alone) and "model_utility" in tofu.compute(**alone)
    with pytest.raises(
        ValueError, match="reference_truth_ratio_variant is not given for the reference's truth ratios"
    ):
        tofu.compute(**plain)
    # inputs_from_eval checks the reference as `llm-unlearn eval` does: the same questions, template, variant.
    other = json.loads(json.dumps(evals["retain"]))
    other["meta"]["truth_ratio_variant"] = "arithmetic"
    with pytest.raises(ValueError, match="truth_ratio_variant 'arithmetic' but the model with 'geometric'"):
        inputs_from_eval(evals["target"], other)
    other = json.loads(json.dumps(evals["retain"]))
    other["meta"]["splits"]["forget"]["questions_sha256"] = "0" * 64
    with pytest.raises(ValueError, match="forget questions"):
        inputs_from_eval(evals["target"], other)
    with pytest.raises(ValueError, match="unknown config 'harmonic'"):
        evaluate_lib.load(TOFU_METRIC, config_name="harmonic", keep_in_memory=True).compute(**columns)
