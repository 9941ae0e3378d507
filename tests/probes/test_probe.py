"""Residual-knowledge probes (llm_unlearn/probes): A/E split, relearning, Piggyback, recovery, quantization
probe and `llm-unlearn probe` on micro models. `pytest tests/test_probe.py`"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from llm_unlearn.cli import main
from llm_unlearn.data.heldout import author_keys
from llm_unlearn.data.qa import DataError, load_split
from llm_unlearn.eval.scoring import answer_losses
from llm_unlearn.models.loading import load_model_and_tokenizer
from llm_unlearn.probes import EvalSettings, ProbeSettings, attack_heldout_split, probe_curve, recovery
from llm_unlearn.probes.attacks import add_piggyback_masks
from llm_unlearn.probes.quantization import quant_variants
from llm_unlearn.runs.folder import write_status

EVAL = EvalSettings(max_length=128, max_new_tokens=16)


@pytest.fixture(scope="module")
def forget_rows(micro_world) -> list[dict]:
    return load_split("forget10_perturbed", data_dir=micro_world)


@pytest.fixture(scope="module")
def target(micro_models):
    return load_model_and_tokenizer(str(micro_models["target"]))


# ----------------------------------------------------------------------------- the A/E split


def test_split_is_disjoint_covers_the_set_and_halves_every_author_by_question(micro_world):
    rows = load_split("full", data_dir=micro_world)  # 10 authors x 20 questions, with `author`
    attack, heldout = attack_heldout_split(rows, seed=3)
    assert not set(attack) & set(heldout)
    assert sorted(attack + heldout) == list(range(len(rows)))
    for author in {r["author"] for r in rows}:
        assert sum(rows[i]["author"] == author for i in heldout) == 10
        assert sum(rows[i]["author"] == author for i in attack) == 10
    assert attack_heldout_split(rows, seed=3) == (attack, heldout)  # stable across calls
    assert attack_heldout_split(rows, seed=4) != (attack, heldout)
    # An author's split depends on the seed and that author only, not on the other rows present.
    first = [r for r in rows if r["author"] == rows[0]["author"]]
    alone = attack_heldout_split(first, seed=3)[1]
    assert [first[i]["question"] for i in alone] == [rows[i]["question"] for i in heldout if i < len(first)]


def test_split_by_author_keeps_whole_authors_apart(micro_world):
    rows = load_split("full", data_dir=micro_world)
    attack, heldout = attack_heldout_split(rows, seed=0, heldout_fraction=0.3, by="author")
    attack_authors, heldout_authors = (
        {rows[i]["author"] for i in attack},
        {rows[i]["author"] for i in heldout},
    )
    assert not attack_authors & heldout_authors and len(heldout_authors) == 3
    assert sorted(attack + heldout) == list(range(len(rows)))


def test_tofu_rows_without_author_are_split_in_blocks_of_twenty(tofu_dir):
    rows = load_split("forget05_perturbed", data_dir=tofu_dir)
    assert "author" not in rows[0] and author_keys(rows) == [i // 20 for i in range(200)]
    attack, heldout = attack_heldout_split(rows, seed=0)
    for block in range(10):
        assert sum(block * 20 <= i < block * 20 + 20 for i in heldout) == 10


def test_split_refuses_rows_it_cannot_group_and_bad_fractions():
    rows = [{"question": f"q{i}", "answer": "a"} for i in range(30)]
    with pytest.raises(DataError, match="not a multiple of 20"):
        attack_heldout_split(rows)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        attack_heldout_split(rows[:20], heldout_fraction=1.0)
    with pytest.raises(DataError, match="at least 2 per author"):
        attack_heldout_split([{"question": "q", "answer": "a", "author": 0}])


# ----------------------------------------------------------------------------- probes


def test_budget_zero_equals_the_plain_evaluation_of_the_model_on_the_heldout_part(
    target, forget_rows, micro_world
):
    from llm_unlearn.eval.tofu import evaluate

    model, tokenizer = target
    plain = evaluate(model, tokenizer, data_dir=micro_world, forget_split="forget10", max_length=128,
                     max_new_tokens=16, progress=False)["metrics"]  # fmt: skip
    attack, heldout = attack_heldout_split(forget_rows)
    rows_a, rows_e = [forget_rows[i] for i in attack], [forget_rows[i] for i in heldout]
    for probe in ("relearn", "piggyback"):
        points, _ = probe_curve(
            probe, model, tokenizer, rows_a, rows_e, [0], ProbeSettings(), EVAL, progress=False
        )
        assert [p["budget"] for p in points] == [0]
        got = points[0]["metrics"]
        for name in ("forget_prob", "forget_rouge_l", "forget_truth_ratio", "forget_fact_recall"):
            want = np.asarray(plain[name]["per_sample"])[heldout]
            assert got[name]["per_sample"] == pytest.approx(want.tolist(), rel=1e-5, abs=1e-7), (probe, name)
            assert got[name]["value"] == pytest.approx(want.mean(), rel=1e-5)


def test_relearning_lowers_the_attack_nll_trains_only_lora_and_is_deterministic(target, forget_rows):
    model, tokenizer = target
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attack, heldout = attack_heldout_split(forget_rows)
    rows_a, rows_e = [forget_rows[i] for i in attack], [forget_rows[i] for i in heldout]
    settings = ProbeSettings(relearn_lr=3e-3, batch_size=10)  # full batches: a steady descent on A
    points, probed = probe_curve(
        "relearn", model, tokenizer, rows_a, rows_e, [0, 10, 20], settings, EVAL, progress=False
    )
    assert [p["budget"] for p in points] == [0, 10, 20]
    assert points[0]["train_loss"] is None and points[1]["train_loss"] > points[2]["train_loss"]

    questions, answers = [r["question"] for r in rows_a], [r["answer"] for r in rows_a]
    kwargs = dict(prompt_format="chat_template", max_length=128)
    nll_before = answer_losses(model, tokenizer, questions, answers, **kwargs).mean()
    nll_after = answer_losses(probed, tokenizer, questions, answers, **kwargs).mean()
    assert nll_after < nll_before - 0.01  # the micro model learns slowly through rank-8 adapters

    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model
    trained = {name for name, p in probed.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in name for name in trained)
    for name, p in probed.named_parameters():
        if "lora_" not in name:  # frozen base weights, unchanged
            key = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert torch.equal(p, before[key]), name
    assert any(p.abs().sum() > 0 for name, p in probed.named_parameters() if "lora_B" in name)

    again, _ = probe_curve(
        "relearn", model, tokenizer, rows_a, rows_e, [0, 10, 20], settings, EVAL, progress=False
    )
    assert again == points


def test_piggyback_binarizes_at_the_threshold_and_passes_the_gradient_straight_through():
    layer = nn.Linear(3, 2, bias=False)
    w = torch.tensor([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]])
    with torch.no_grad():
        layer.weight.copy_(w)
    holder = nn.Sequential()
    holder.add_module("up_proj", layer)
    (mask,) = add_piggyback_masks(holder, ProbeSettings())
    assert torch.equal(mask.scores, torch.full((2, 3), 1e-2))
    with torch.no_grad():
        mask.scores.copy_(torch.tensor([[1e-2, 4e-3, 5e-3], [6e-3, -1.0, 5.01e-3]]))  # 5e-3 itself is off
    x = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0]])
    y = layer(x)
    m = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    assert torch.allclose(y, x @ (w * m).T)
    y.sum().backward()
    # L = sum_b sum_i sum_j x_bj w_ij m_ij, so dL/dm_ij = w_ij * sum_b x_bj, and straight through dL/ds = dL/dm,
    # also where the mask is 0 (that is how a switched-off weight can come back).
    column_sums = x.sum(0)  # [0, 2.5, 5]
    assert torch.allclose(mask.scores.grad, w * column_sums)
    assert layer.parametrizations.weight.original.grad is None  # the weight itself is frozen
    assert torch.equal(layer.parametrizations.weight.original, w)


def test_piggyback_masks_only_the_mlp_weights_and_cannot_flip_a_bit_within_fifty_steps_at_the_spec_lr(
    target, forget_rows
):
    model, tokenizer = target
    attack, heldout = attack_heldout_split(forget_rows)
    rows_a, rows_e = [forget_rows[i] for i in attack], [forget_rows[i] for i in heldout]
    points, probed = probe_curve(
        "piggyback", model, tokenizer, rows_a, rows_e, [2], ProbeSettings(), EVAL, progress=False
    )
    assert [p["budget"] for p in points] == [2] and points[0]["masked_fraction"] == 0.0
    masked = {name for name, m in probed.named_modules() if parametrize.is_parametrized(m)}
    assert masked == {
        "model.layers.0.mlp.gate_proj",
        "model.layers.0.mlp.up_proj",
        "model.layers.0.mlp.down_proj",
    }
    assert all(not p.requires_grad for name, p in probed.named_parameters() if not name.endswith("scores"))

    fast = ProbeSettings(piggyback_lr=5e-3)  # one Adam step moves a score by ~lr: bits flip at once
    points, probed = probe_curve(
        "piggyback", model, tokenizer, rows_a, rows_e, [0, 2], fast, EVAL, progress=False
    )
    assert points[0]["masked_fraction"] == 0.0 and 0.0 < points[1]["masked_fraction"] < 1.0
    for name, module in probed.named_modules():
        if parametrize.is_parametrized(module):
            assert torch.equal(module.parametrizations.weight.original, model.get_submodule(name).weight)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())  # the probe ran on a copy


def test_recovery_formula_and_its_guard_on_hand_numbers():
    assert recovery(0.5, 0.2, 0.8, 0.2) == (pytest.approx(0.5), None)  # halfway back
    assert recovery(0.2, 0.2, 0.8, 0.2) == (0.0, None)  # no more than the probe gives the retain model
    assert recovery(0.9, 0.3, 0.7, 0.1) == (pytest.approx(1.0), None)  # differences, not levels
    assert recovery(0.55, 0.6, 0.4, 0.6) == (pytest.approx(0.25), None)  # metrics where original < retain
    value, note = recovery(0.5, 0.2, 0.3004, 0.3)
    assert value is None and "differ by 0.0004 < 0.001" in note
    value, note = recovery(0.5, 0.2, math.nan, 0.3)
    assert value is None and "nothing to recover" in note


def test_quantization_probe_reports_each_precision_with_forget_metrics_and_mia(
    micro_models, micro_world, target
):
    forget = load_split("forget10_perturbed", data_dir=micro_world)
    holdout = load_split("holdout10", data_dir=micro_world)
    ref_model, ref_tok = load_model_and_tokenizer(str(micro_models["retain"]["forget10"]))
    ref, ref_scores = quant_variants(ref_model, ref_tok, forget, holdout, (8, 4), 16, EVAL, progress=False)
    model, tokenizer = target
    out, _ = quant_variants(model, tokenizer, forget, holdout, (8, 4), 16, EVAL, reference_scores=ref_scores,
                            progress=False)  # fmt: skip
    assert list(out) == list(ref) == ["32", "8", "4"]
    forget_names = {"forget_prob", "forget_rouge_l", "forget_truth_ratio", "forget_fact_recall"}
    auc_names = {f"mia_auc_{a}" for a in ("loss", "zlib", "min_k", "min_k_plus_plus")}
    assert set(ref["4"]["metrics"]) == forget_names | auc_names
    assert set(out["4"]["metrics"]) == forget_names | auc_names | {"mia_auc_reference", "privleak"}
    assert out["32"]["quantization"] == {"method": "none", "bits": 32}
    report = out["4"]["quantization"]
    assert report["bits"] == 4 and report["group_size"] == 16 and report["skipped_modules"] == ["lm_head"]
    for variant in out.values():
        assert len(variant["metrics"]["forget_prob"]["per_sample"]) == len(forget)
        assert 0.0 <= variant["metrics"]["mia_auc_loss"]["value"] <= 1.0
    assert out["8"]["metrics"]["forget_prob"]["value"] != out["32"]["metrics"]["forget_prob"]["value"]


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def micro_run(micro_world, micro_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("probe") / "run"
    argv = ["unlearn", "--model_name_or_path", str(micro_models["target"]), "--data_dir", str(micro_world),
            "--forget_split", "forget10", "--output_dir", str(out), "--max_steps", "2", "--learning_rate", "1e-2",
            "--per_device_train_batch_size", "4", "--max_length", "128", "--use_cpu", "true",
            "--reference_model", str(micro_models["retain"]["forget10"]), "--do_final_eval", "false"]  # fmt: skip
    assert main(argv) == 0
    return out


def test_probe_command_writes_probe_json_with_defaults_from_the_run(micro_run, micro_models, capsys):
    argv = [
        "probe",
        str(micro_run),
        "--budgets",
        "2,0",
        "--max_new_tokens",
        "8",
        "--group_size",
        "16",
        "--no_progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads((micro_run / "probe.json").read_text())
    meta = result["meta"]
    assert "wrote" in printed  # and which questions its values score, since they are not all eval.json's
    assert f"relearn and piggyback: scored on the {meta['n_heldout']} held-out forget questions\n" in printed
    assert f"quant: scored on all {meta['n_forget']} forget questions, as eval.json\n" in printed
    assert meta["models"]["original"] == str(micro_models["target"])
    assert meta["models"]["reference"] == str(micro_models["retain"]["forget10"])
    assert (
        meta["budgets"] == [0, 2]
        and meta["eval_split"] == "forget10_perturbed"
        and meta["holdout_split"] == "holdout10"
    )
    assert not set(result["split"]["attack"]) & set(result["split"]["heldout"])
    for probe in ("relearn", "piggyback"):
        assert [p["budget"] for p in result[probe]["unlearned"]] == [0, 2]
        assert [p["budget"] for p in result[probe]["reference"]] == [0, 2]
        assert set(result[probe]["original"]) >= {"forget_prob", "forget_rouge_l", "forget_truth_ratio"}
    assert set(result["quant"]) >= {"unlearned", "original", "reference", "recovery"}
    assert "bnb_nf4_skipped" in result["quant"] or torch.cuda.is_available()
    probes = {(r["probe"], r["budget"], r["bits"]) for r in result["rows"]}
    assert {
        ("relearn", 2, None),
        ("piggyback", 0, None),
        ("quant", None, "4"),
        ("quant", None, "32"),
    } <= probes
    for row in result["rows"]:
        assert (row["recovery"] is None) == (row["recovery_note"] is not None)
        assert row["recovery"] is None or math.isfinite(row["recovery"])


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_probe_command_refuses_bad_input_with_one_line(micro_run, tmp_path, capsys):
    assert "does not exist" in _error(capsys, ["probe", str(tmp_path / "nope")])
    assert "non-negative integers" in _error(capsys, ["probe", str(micro_run), "--budgets", "0,-5"])
    assert "non-negative integers" in _error(capsys, ["probe", str(micro_run), "--budgets", "0,ten"])
    assert "did you mean 'relearn'" in _error(capsys, ["probe", str(micro_run), "--probes", "relern"])
    assert "bit widths from 2 to 8" in _error(capsys, ["probe", str(micro_run), "--quant_bits", "16"])
    assert "is a folder; pass the file to write" in _error(
        capsys, ["probe", str(micro_run), "--out", str(tmp_path)]
    )
    failed = tmp_path / "failed"
    shutil.copytree(micro_run, failed, ignore=shutil.ignore_patterns("probe.json"))
    write_status(failed, "failed", error="NonFiniteLossError: boom")
    assert "probe needs a complete run" in _error(capsys, ["probe", str(failed)])
    plain = tmp_path / "plain"
    plain.mkdir()
    assert "not a run directory" in _error(capsys, ["probe", str(plain)])
    assert not (failed / "probe.json").exists()


@pytest.mark.slow
def test_robustness_benchmark_quick_mode_writes_rows_for_every_method_and_a_table(
    micro_models, tmp_path, monkeypatch
):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "robustness.py"
    monkeypatch.syspath_prepend(
        str(path.parent)
    )  # as `python benchmarks/robustness.py` has its folder on sys.path
    spec = importlib.util.spec_from_file_location("robustness_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--size", "micro", "--quick", "--out", str(tmp_path / "robustness.json")])
    state = json.loads(out.read_text())
    methods = {r["method"] for r in state["rows"]}
    assert methods == {"graddiff", "ngdiff", "npo", "gc", "target", "retain"} and state["budgets"] == [0, 2]
    assert {r["probe"] for r in state["rows"]} == {"relearn", "piggyback", "quant"}
    assert {r["bits"] for r in state["rows"] if r["probe"] == "quant"} == {"32", "8", "4"}
    fields = {"method", "probe", "budget", "bits", "metric", "value", "recovery"}
    assert all(fields <= r.keys() for r in state["rows"])
    table = out.with_suffix(".md").read_text()
    assert "Smoke run" in table and "| gc | forget_prob |" in table
