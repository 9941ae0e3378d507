"""Model scoring and eval.json on a tiny random Llama over 8 rows of each real TOFU eval split (pytest tests/test_eval.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from llm_unlearn.eval import add_forget_quality, evaluate, load_eval, write_eval, write_report
from llm_unlearn.eval.metrics import MODEL_UTILITY_INPUTS
from llm_unlearn.eval.scoring import answer_losses, generate_answers
from llm_unlearn.models.tiny import tiny_llama_config, train_tokenizer

SPLITS = ("forget10_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed")
N_ROWS = 8
PROMPT = dict(prompt_format="chat_template", system_prompt=None)


def read_rows(path, n):
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:n]


@pytest.fixture(scope="module")
def data_dir(tofu_dir, tmp_path_factory):
    """The first rows of each eval split; forget and retain rows get a gold `fact` (the answer's last word)."""
    out = tmp_path_factory.mktemp("tofu_small")
    for split in SPLITS:
        rows = read_rows(tofu_dir / f"{split}.json", N_ROWS)
        if split in ("forget10_perturbed", "retain_perturbed"):
            for r in rows:
                r["fact"] = r["answer"].rstrip(".").split()[-1]
                r["fact_chance"] = 0.25
        (out / f"{split}.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def tokenizer(tofu_dir):
    texts = [t for r in read_rows(tofu_dir / "full.json", 300) for t in (r["question"], r["answer"])]
    return train_tokenizer(texts)


@pytest.fixture(scope="module")
def model(tokenizer):
    config = tiny_llama_config(tokenizer, "micro", max_position_embeddings=512)
    # Larger random weights than the default 0.02, so greedy decoding does not repeat one token.
    config.initializer_range = 0.2
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def result(model, tokenizer, data_dir):
    return evaluate(
        model,
        tokenizer,
        data_dir=data_dir,
        batch_size=4,
        max_new_tokens=8,
        progress=False,
        seeds={"model": 0},
    )


def test_batched_per_sample_losses_equal_batch_one_losses(model, tokenizer, data_dir):
    rows = read_rows(data_dir / "forget10_perturbed.json", N_ROWS)
    questions = [r["question"] for r in rows for _ in range(3)]
    answers = [a for r in rows for a in (r["answer"], r["paraphrased_answer"], r["perturbed_answer"][0])]
    one = answer_losses(model, tokenizer, questions, answers, batch_size=1, **PROMPT)
    batched = answer_losses(model, tokenizer, questions, answers, batch_size=7, **PROMPT)
    assert len(set(len(a) for a in answers)) > 1
    np.testing.assert_allclose(batched, one, rtol=0, atol=1e-5)


def test_left_padded_batched_greedy_generation_equals_batch_one_generation(model, tokenizer, data_dir):
    questions = [r["question"] for r in read_rows(data_dir / "retain_perturbed.json", N_ROWS)]
    one = generate_answers(model, tokenizer, questions, batch_size=1, max_new_tokens=12, **PROMPT)
    batched = generate_answers(model, tokenizer, questions, batch_size=N_ROWS, max_new_tokens=12, **PROMPT)
    assert batched == one
    assert len(set(one)) == N_ROWS


def test_eval_dict_has_every_required_metric_with_its_direction(result):
    required = {
        "model_utility": "higher",
        "forget_rouge_l": "lower",
        "forget_prob": "lower",
        "forget_truth_ratio": "closer_to_reference",
        "forget_fact_recall": "lower",
        "retain_fact_recall": "higher",
        **{name: "higher" for name in MODEL_UTILITY_INPUTS},
    }
    metrics = result["metrics"]
    assert {name: metrics[name]["direction"] for name in required} == required
    assert all(isinstance(metrics[name]["value"], float) for name in required)
    assert len(metrics["forget_truth_ratio"]["per_sample_ratio"]) == N_ROWS
    assert len(metrics["retain_prob"]["per_sample"]) == N_ROWS
    assert "ra_fact_recall" not in metrics


def test_eval_meta_records_settings_sizes_and_fact_chance(result):
    meta = result["meta"]
    assert meta["truth_ratio_variant"] == "geometric"
    assert meta["prompt_format"] == "chat_template"
    assert {role: s["n"] for role, s in meta["splits"].items()} == {
        r: N_ROWS for r in ("forget", "retain", "ra", "wf")
    }
    assert meta["splits"]["forget"]["name"] == "forget10_perturbed"
    assert meta["fact_recall_chance"] == {"forget": 0.25, "retain": 0.25}
    assert meta["seeds"] == {"model": 0}
    assert meta["generation"]["max_new_tokens"] == 8
    assert meta["package_version"] and meta["hardware"] and meta["torch_threads"] >= 1
    assert [g.keys() for g in result["generations"]["forget"]] == [
        {"question", "answer", "generated"}
    ] * N_ROWS
    assert len(result["losses"]["forget"]["perturbed"][0]) == 5


def test_forget_quality_is_one_when_the_reference_is_the_model_itself(result):
    with_fq = add_forget_quality(result, result)
    assert with_fq["metrics"]["forget_quality"] == {"value": 1.0, "direction": "higher"}
    assert with_fq["meta"]["forget_quality_reference"]["ratios_from"] == "eval.json"
    assert "forget_quality" not in result["metrics"]


def test_forget_quality_on_too_few_questions_to_fail_says_so(result, caplog):
    """3 questions a side: no model can score below 0.1, so the 0.05 bar says nothing; 8 can (floor 1.6e-4)."""
    from scipy import stats

    from llm_unlearn.eval.metrics import forget_quality_floor

    assert forget_quality_floor(3, 3) == pytest.approx(0.1) and forget_quality_floor(1, 1) == 1.0
    assert forget_quality_floor(8, 8) == pytest.approx(stats.ks_2samp([0] * 8, [1] * 8).pvalue)
    assert "smallest_possible" not in add_forget_quality(result, result)["metrics"]["forget_quality"]
    assert "cannot fall below" not in caplog.text
    small = json.loads(json.dumps(result))
    entry = small["metrics"]["forget_truth_ratio"]
    entry["per_sample_ratio"] = entry["per_sample_ratio"][:3]
    with_fq = add_forget_quality(small, small)
    assert with_fq["metrics"]["forget_quality"]["smallest_possible"] == pytest.approx(0.1)
    assert "forget quality on 3 forget questions cannot fall below 0.1" in caplog.text


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("truth_ratio_variant", "arithmetic", "truth_ratio_variant"),
        ("prompt_format", "qa", "prompt_format"),
        ("forget_split", "forget05_perturbed", "forget split"),
        ("n", 7, "7 forget samples"),
    ],
)
def test_add_forget_quality_refuses_a_mismatched_reference(result, field, value, message):
    reference = json.loads(json.dumps(result))
    if field == "forget_split":
        reference["meta"]["splits"]["forget"]["name"] = value
    elif field == "n":
        entry = reference["metrics"]["forget_truth_ratio"]
        entry["per_sample_ratio"] = entry["per_sample_ratio"][:value]
    else:
        reference["meta"][field] = value
    with pytest.raises(ValueError, match=message):
        add_forget_quality(result, reference)


def test_add_forget_quality_refuses_a_reference_without_per_sample_ratios(result):
    reference = json.loads(json.dumps(result))
    del reference["metrics"]["forget_truth_ratio"]["per_sample_ratio"]
    with pytest.raises(ValueError, match="no per-sample forget truth ratios"):
        add_forget_quality(result, reference)


def test_write_eval_then_load_eval_round_trips_and_leaves_no_temporary_file(result, tmp_path):
    path = write_eval(result, tmp_path / "run" / "eval.json")
    assert load_eval(path) == json.loads(json.dumps(result))
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]
    assert add_forget_quality(result, path)["metrics"]["forget_quality"]["value"] == 1.0


def test_report_lists_every_model_and_plots_only_those_with_forget_quality(result, tmp_path):
    results = {"target": add_forget_quality(result, result), "no_reference": result}
    report = write_report(results, tmp_path, title="Test report")
    text = report.read_text(encoding="utf-8")
    assert "| metric | better | target | no_reference |" in text
    assert "| forget_quality | higher | 1 | - |" in text
    assert "Not plotted (no forget quality: no reference given): no_reference." in text
    assert (tmp_path / "fq_vs_mu.png").stat().st_size > 0
    assert (tmp_path / "split_metrics.png").stat().st_size > 0


def test_epoch_evaluator_records_the_chosen_epochs_of_a_run(micro_world, micro_models, tmp_path):
    from transformers import AutoTokenizer

    from llm_unlearn.core.config import UnlearnConfig
    from llm_unlearn.data.args import DataArgs
    from llm_unlearn.eval.args import EvalArgs
    from llm_unlearn.models.args import ModelArgs
    from llm_unlearn.pipeline.evaluate import EpochEvaluator, evaluate_path
    from llm_unlearn.pipeline.unlearn import unlearn

    data = DataArgs(data_dir=str(micro_world), forget_split="forget10")
    reference = evaluate_path(str(micro_models["retain"]["forget10"]), data, EvalArgs())
    sink: list[dict] = []
    keys = ("forget_quality", "model_utility")
    evaluator = EpochEvaluator(
        AutoTokenizer.from_pretrained(micro_models["target"]), data, reference, sink, keys, {2}
    )
    unlearn(
        ModelArgs(model_name_or_path=str(micro_models["target"])),
        data,
        UnlearnConfig(output_dir=str(tmp_path / "run"), num_train_epochs=2, per_device_train_batch_size=8,
                      learning_rate=1e-3, save_strategy="no", disable_tqdm=True, use_cpu=True),
        EvalArgs(do_final_eval=False),
        callbacks=[evaluator],
    )  # fmt: skip
    assert [row["epoch"] for row in sink] == [2]
    assert set(sink[0]) == {"epoch", *keys} and 0 <= sink[0]["forget_quality"] <= 1


def test_evaluate_gives_the_model_back_in_its_mode_and_refuses_bad_sizes(model, tokenizer, data_dir):
    """A callback mid-training evaluated the model and left it in eval mode (dropout off from then on)."""
    model.train()
    try:
        evaluate(
            model, tokenizer, data_dir=data_dir, batch_size=8, max_new_tokens=2, progress=False, mia=False
        )
        assert model.training
    finally:
        model.eval()
    evaluate(model, tokenizer, data_dir=data_dir, batch_size=8, max_new_tokens=2, progress=False, mia=False)
    assert not model.training
    for bad, message in ((dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
                         (dict(max_new_tokens="8"), "max_new_tokens must be an integer >= 1, got '8'")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            evaluate(model, tokenizer, data_dir=data_dir, progress=False, **bad)


def test_epoch_evaluator_evaluates_with_the_runs_settings(monkeypatch):
    """It evaluated at 1024 tokens and evaluate's defaults whatever the data's max_length and eval settings."""
    from types import SimpleNamespace

    import llm_unlearn.eval.tofu as tofu
    from llm_unlearn.data.args import DataArgs
    from llm_unlearn.eval.args import EvalArgs
    from llm_unlearn.pipeline.evaluate import EpochEvaluator

    seen = []
    monkeypatch.setattr(tofu, "evaluate", lambda model, tok, **kw: seen.append(kw) or {"metrics": {}})
    monkeypatch.setattr(tofu, "add_forget_quality", lambda result, ref: {"metrics": {"x": {"value": 1}}})
    data = DataArgs(data_dir="/nonexistent", max_length=128)
    eval_args = EvalArgs(eval_batch_size=4, max_new_tokens=8, truth_ratio_variant="arithmetic", mia=False)
    sink: list = []
    for args in (None, eval_args):
        EpochEvaluator(None, data, {}, sink, ("x",), eval_args=args).on_epoch_end(
            None, SimpleNamespace(epoch=1.0), None, model=torch.nn.Linear(1, 1)
        )
    assert seen[0]["max_length"] == 128 and "max_new_tokens" not in seen[0]
    assert {k: seen[1][k] for k in ("max_length", "batch_size", "max_new_tokens", "truth_ratio_variant", "mia")} == {
        "max_length": 128, "batch_size": 4, "max_new_tokens": 8, "truth_ratio_variant": "arithmetic", "mia": False
    }  # fmt: skip
