"""Golden numbers: our metric code on the TOFU authors' legacy logs reproduces tofu-metrics.md §9 (pytest tests/test_golden.py)."""

from __future__ import annotations

import pytest

from llm_unlearn.eval import add_forget_quality, legacy_forget_quality, legacy_result

RUNS = {
    "llama2_full": "ft_epoch5_lr1e-05_llama2-7b_full_wd0.01",
    "llama2_retain90": "ft_epoch5_lr1e-05_llama2-7b_retain90_wd0.01",
    "phi_full": "ft_epoch5_lr2e-05_phi_full_wd0.01",
    "phi_retain90": "ft_epoch5_lr2e-05_phi_retain90_wd0.01",
}
# model: (MU geometric, MU arithmetic, forget truth ratio (geometric), FQ vs its retain90)
TABLE = {
    "llama2_full": (0.6227, 0.5859, 0.5160, 1.83e-21),
    "llama2_retain90": (0.6137, 0.5752, 0.6740, 1.0),
    "phi_full": (0.5221, 0.5034, 0.4834, 2.19e-16),
    "phi_retain90": (0.5320, 0.5130, 0.6288, 1.0),
}


def log_path(tofu_dir, run: str):
    return tofu_dir / "reference_eval_logs" / RUNS[run] / "eval_log_aggregated.json"


def sig3(x: float) -> float:
    return float(f"{x:.3g}")


@pytest.mark.parametrize("run", list(TABLE))
def test_model_utility_and_forget_truth_ratio_match_the_reference_table(tofu_dir, run):
    mu_geo, mu_arith, forget_tr, _ = TABLE[run]
    geometric = legacy_result(log_path(tofu_dir, run), "geometric")["metrics"]
    arithmetic = legacy_result(log_path(tofu_dir, run), "arithmetic")["metrics"]
    assert sig3(geometric["model_utility"]["value"]) == sig3(mu_geo)
    assert sig3(arithmetic["model_utility"]["value"]) == sig3(mu_arith)
    assert sig3(geometric["forget_truth_ratio"]["value"]) == sig3(forget_tr)


@pytest.mark.parametrize("run", list(TABLE))
def test_forget_quality_against_retain90_matches_the_reference_table(tofu_dir, run):
    reference = run.replace("full", "retain90")
    fq = legacy_forget_quality(log_path(tofu_dir, run), log_path(tofu_dir, reference))
    assert sig3(fq) == sig3(TABLE[run][3])


def test_add_forget_quality_accepts_a_legacy_log_as_reference(tofu_dir):
    result = legacy_result(log_path(tofu_dir, "llama2_full"))
    with_fq = add_forget_quality(result, log_path(tofu_dir, "llama2_retain90"))
    assert sig3(with_fq["metrics"]["forget_quality"]["value"]) == 1.83e-21
    assert with_fq["meta"]["forget_quality_reference"]["ratios_from"] == "legacy_log"


def test_llama2_full_components_match_the_reference_row(tofu_dir):
    metrics = legacy_result(log_path(tofu_dir, "llama2_full"))["metrics"]
    expected = {
        "retain_prob": 0.9895,
        "retain_rouge_l": 0.9857,
        "retain_truth_ratio": 0.4747,
        "ra_prob": 0.4555,
        "ra_rouge_l": 0.9330,
        "ra_truth_ratio": 0.5962,
        "wf_prob": 0.4186,
        "wf_rouge_l": 0.8825,
        "wf_truth_ratio": 0.5390,
    }
    got = {name: round(metrics[name]["value"], 4) for name in expected}
    assert got == expected
    assert metrics["model_utility"]["inputs"].keys() == expected.keys()
