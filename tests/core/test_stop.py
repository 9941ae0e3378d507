"""The stop rule (`llm_unlearn.stop`) and `--auto`. `pytest tests/test_stop.py`"""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import TrainerControl

from llm_unlearn.cli import main
from llm_unlearn.cli.parse import parse_config
from llm_unlearn.core.stop import IndistinguishableStop, signed_gap
from llm_unlearn.core.stop_data import load_stop_data
from llm_unlearn.data.qa import load_split


def test_signed_gap_by_hand():
    # forget losses below every holdout loss: AUC 1, gap +1/2; above: gap -1/2; equal sets: 0
    assert signed_gap([1, 2], [3, 4]) == 0.5
    assert signed_gap([3, 4], [1, 2]) == -0.5
    assert signed_gap([1, 2, 3], [1, 2, 3]) == 0.0
    # [1, 3] vs [2]: one of two forget losses below 2 -> AUC 1/2, gap 0
    assert signed_gap([1, 3], [2]) == 0.0
    # KS: the largest CDF gap, + when the forget median loss is the lower
    assert signed_gap([1, 2, 3, 4], [3, 4, 5, 6], "ks") == pytest.approx(0.5)
    assert signed_gap([3, 4, 5, 6], [1, 2, 3, 4], "ks") == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="unknown stop statistic"):
        signed_gap([1], [2], "t")


def _rule(
    losses: list[tuple[list[float], list[float], float]], patience=3, tolerance=0.5, heldout=(), damping=False
):
    """A stop rule whose scores are scripted: check k returns losses[k] (forget, holdout, retain)."""
    config = SimpleNamespace(stop_statistic="auc", stop_check_interval=1, stop_patience=patience,
                             stop_retain_tolerance=tolerance, stop_lr_damping=damping)  # fmt: skip
    n = len(losses[0][0])
    data = {"statistic": "auc", "holdout": [None] * n, "heldout": list(heldout), "retain_sample": [None]}
    records: list[dict] = []
    rule = IndistinguishableStop(None, [None] * n, data, config, {}, records.append, "/nonexistent")
    script = iter(losses)

    def scripted(model, rows, desc):
        if "forget" in desc:
            rule._current = next(script)
            return np.array(rule._current[0])
        return np.array(rule._current[1] if "holdout" in desc else [rule._current[2]])

    rule.scorer.losses = scripted
    return rule, records


def _train(rule, model, steps: int):
    """Drive the callback like Trainer: begin, a step at a time (weights move), end."""
    args = SimpleNamespace(max_steps=steps, num_train_epochs=1)
    state = SimpleNamespace(global_step=0, max_steps=steps)
    control = TrainerControl()
    rule.on_train_begin(args, state, control, model=model)
    weights = {0: model.weight.detach().clone()}
    for step in range(1, steps + 1):
        with torch.no_grad():
            model.weight += 1.0
        state.global_step = step
        weights[step] = model.weight.detach().clone()
        rule.on_step_end(args, state, control, model=model)
        if control.should_training_stop:
            break
    rule.on_train_end(args, state, control, model=model)
    return weights, state.global_step


def test_stops_at_the_crossing_and_restores_the_check_closest_to_indistinguishable():
    forget_down = [
        ([1, 2], [3, 4], 1.0),
        ([1, 3.5], [3, 4], 1.0),
        ([3.5, 3.6], [3, 4], 1.0),
        ([5, 6], [3, 4], 1.0),
    ]
    # gaps: +0.5 (start), +0.25, 0.0 (crossed, and the closest), never reaches the 4th
    rule, records = _rule(forget_down)
    model = torch.nn.Linear(1, 1, bias=False)
    weights, last = _train(rule, model, steps=10)
    assert last == 2 and records[-1]["stop_reason"] == "crossed"
    assert [r["stop_decision"] for r in records[:-1]] == ["continue", "continue", "crossed"]
    assert records[-1]["stop_best_step"] == 2 and not records[-1]["stop_restored"]
    assert torch.equal(model.weight, weights[2])


def test_an_overshoot_restores_the_earlier_closer_weights():
    scripted = [([1, 2], [3, 4], 1.0), ([2.5, 3.5], [3, 4], 1.0), ([9, 9], [3, 4], 1.0)]
    # gaps +0.5, +0.125 (best), -0.5 (crossed far): the weights of step 1 come back
    rule, records = _rule(scripted)
    model = torch.nn.Linear(1, 1, bias=False)
    weights, last = _train(rule, model, steps=10)
    assert last == 2 and records[-1] == {
        **records[-1],
        "stop_reason": "crossed",
        "stop_best_step": 1,
        "stop_restored": True,
    }
    assert torch.equal(model.weight, weights[1])


def test_a_retain_loss_rise_before_the_crossing_raises_the_alarm():
    # holdout mean 3.5, retain 1.0 before training: a lead of 2.5 nats. +0.7 (28% of it) is tolerated,
    # +1.5 (60%) is not, although both are large rises relative to the retain loss itself.
    scripted = [([1, 2], [3, 4], 1.0), ([1, 3.5], [3, 4], 1.7), ([1, 3.6], [3, 4], 2.5)]
    rule, records = _rule(scripted, tolerance=0.5)
    weights, last = _train(rule, torch.nn.Linear(1, 1, bias=False), steps=10)
    assert last == 2 and records[-1]["stop_reason"] == "retain_alarm"
    assert [records[1]["stop_decision"], records[2]["stop_decision"]] == ["continue", "retain_alarm"]
    assert records[1]["stop_retain_rise"] == pytest.approx(0.7 / 2.5)
    assert records[2]["stop_retain_rise"] == pytest.approx(1.5 / 2.5)
    assert records[-1]["stop_best_step"] == 1 and torch.equal(weights[1], rule.best_weights["weight"])


def test_a_crossing_that_gave_up_too_much_of_the_retain_set_is_not_kept():
    # Step 2 crosses (gap -1/2) but its retain loss gave up 80% of the lead: the alarm wins, and the
    # weights of step 1 (gap +1/4, within the tolerance) are restored, not the crossing's.
    scripted = [([1, 2], [3, 4], 1.0), ([1, 3.5], [3, 4], 1.5), ([5, 6], [3, 4], 3.0)]
    rule, records = _rule(scripted, tolerance=0.5)
    model = torch.nn.Linear(1, 1, bias=False)
    weights, last = _train(rule, model, steps=10)
    assert last == 2 and records[2]["stop_decision"] == "retain_alarm"
    assert records[-1]["stop_reason"] == "retain_alarm" and records[-1]["stop_best_step"] == 1
    assert records[-1]["stop_restored"] and torch.equal(model.weight, weights[1])


def test_no_progress_for_patience_checks_stops_as_stalled():
    scripted = [([1, 2], [3, 4], 1.0), ([1, 3.5], [3, 4], 1.0)] + [([1, 2], [3, 4], 1.0)] * 3
    rule, records = _rule(scripted, patience=2)
    _, last = _train(rule, torch.nn.Linear(1, 1, bias=False), steps=10)
    assert last == 3 and records[-1]["stop_reason"] == "stalled" and records[-1]["stop_best_step"] == 1


def test_the_safety_net_ends_the_run_and_the_final_weights_are_checked():
    scripted = [([1, 2], [3, 4], 1.0), ([1, 2.5], [3, 4], 1.0), ([1, 3.5], [3, 4], 1.0)]
    rule, records = _rule(scripted, patience=5)
    weights, last = _train(rule, torch.nn.Linear(1, 1, bias=False), steps=2)
    assert last == 2 and records[-1]["stop_reason"] == "max_steps" and records[-1]["stop_best_step"] == 2


def test_auto_sets_its_first_regime_and_the_rule_below_explicit_options():
    _, _, config, _ = parse_config(["--auto", "--output_dir", "x"])
    assert (config.method, config.combine, config.gen, config.stop_rule, config.learning_rate) == (
        "npo",
        "normalized",
        True,
        "indistinguishable",
        0.1,
    )
    assert (config.forget_token_max_df, config.stop_repair, config.stop_utility_tolerance) == (0.0, True, 0.2)
    assert config.auto_fallback and config.max_grad_norm == 0.0  # NGDiff's direction is not clipped
    _, _, config, _ = parse_config(
        ["--auto", "--learning_rate", "0.05", "--method", "graddiff", "--output_dir", "x"]
    )
    assert (config.method, config.learning_rate, config.stop_rule) == ("graddiff", 0.05, "indistinguishable")
    _, _, config, _ = parse_config(["--output_dir", "x"])
    assert config.stop_rule is None and not config.gen


# `--auto` until 2026-12-07: NGDiff on whole answers, stopped by the recall guard, no repair and no fallback.
AUTO_V5 = ["--method", "ngdiff", "--forget_token_max_df", "1", "--stop_repair", "false",
           "--stop_utility_tolerance", "0"]  # fmt: skip


@pytest.mark.parametrize("repair", [False, True], ids=["whole-answers", "auto"])
def test_auto_end_to_end_stops_records_its_trajectory_and_agrees_with_the_evaluation(
    micro_models, micro_world, tmp_path, capsys, monkeypatch, repair
):
    """`--auto` (NPO on rare forget tokens, unlearning past the recall guard, then the retain repair), and
    the earlier `--auto` on whole answers without repair: the same rule records, and the evaluation of the
    weights returned agrees with the last check that scored them."""
    import llm_unlearn.pipeline.unlearn as pipeline

    built = []  # the question sets of every dataset the run tokenizes for training

    class Recording(pipeline.QADataset):
        def __init__(self, rows, *args, **kwargs):
            built.append({r["question"] for r in rows})
            super().__init__(rows, *args, **kwargs)

    monkeypatch.setattr(pipeline, "QADataset", Recording)
    out = tmp_path / "auto"
    argv = ["unlearn", "--auto", "--model_name_or_path", str(micro_models["target"]), "--data_dir", str(micro_world),
            "--forget_split", "forget10", "--output_dir", str(out), "--eval_batch_size", "64", "--max_new_tokens", "2",
            "--disable_tqdm", "true", *([] if repair else AUTO_V5)]  # fmt: skip
    assert main(argv) == 0
    assert "forget quality not computed" in capsys.readouterr().out
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    repairs = [r for r in log if r.get("stop_phase") == "repair"]
    assert (not repairs) or repair  # only --stop_repair repairs
    checks = [r for r in log if "stop_decision" in r and r.get("stop_phase") != "repair"]
    end = [r for r in log if "stop_reason" in r]
    # The built-in world's holdout has perturbed answers, so `auto` compares truth ratios.
    assert {r["stop_statistic"] for r in checks} == {"truth_ratio"}
    # The target knows its forget set, if only a little at the micro size: loss AUC 0.64 against the
    # retain-only model's 0.43 (world seed 0). Before forget and holdout authors were made
    # exchangeable (world.py), the tokenizer alone gave the retain-only model 0.78 here.
    assert checks[0]["step"] == 0 and checks[0]["stop_gap_loss_auc"] > 0.1
    assert checks[0]["stop_forget_loss"] < checks[0]["stop_holdout_loss"]
    assert len(end) == 1 and end[0]["stop_reason"] in ("crossed", "stalled", "retain_alarm", "max_steps")
    # Screening: answers only while their loss gap is > 0 (the check before training included), then
    # truth ratios at every check.
    screened = [r for r in checks if r["stop_screened"]]
    assert checks[0]["stop_screened"] and checks[0]["stop_gap"] is None
    assert all(r["stop_gap"] is None and r["stop_gap_loss_auc"] > 0 for r in screened)
    first_full = next((i for i, r in enumerate(checks) if not r["stop_screened"]), len(checks))
    assert screened == checks[:first_full], "once truth ratios are scored, every later check scores them"
    assert first_full < len(checks), "the answer losses crossed, so truth ratios were scored"
    assert checks[first_full]["stop_forget_truth_ratio"] > 0 and checks[first_full]["stop_gap"] is not None
    # Every forget question is trained on under --auto (issue 22): no held-out part, so the gap on the
    # trained questions is the gap itself.
    assert all(r["stop_gap_heldout"] is None for r in checks)
    assert all(r["stop_gap_trained"] == r["stop_gap"] for r in checks if not r["stop_screened"])
    forget_questions = {r["question"] for r in load_split("forget10", data_dir=micro_world)}
    assert forget_questions in built, "the forget dataset trained on is the whole forget split"
    # The evaluation (separate code: eval/tofu.py, eval/mia.py) of the weights the rule kept agrees with
    # that check's record: the loss AUC of forget vs holdout, and the forget set's median truth ratio.
    kept = end[0]["stop_best_check"]  # as finally scored: a screened check may be re-scored at the crossing
    logged = next(r for r in checks if r["step"] == end[0]["stop_best_step"])
    assert kept["step"] == logged["step"] and kept["stop_gap"] == end[0]["stop_best_gap"] is not None
    assert kept["stop_gap_loss_auc"] == logged["stop_gap_loss_auc"]
    if end[0].get("stop_repair_steps"):  # the weights returned are the kept ones repaired: their last check
        kept = repairs[-1]  # the final full check (core/repair.py)
        assert kept["stop_gap"] is not None and kept["stop_repair_steps"] == end[0]["stop_repair_steps"]
    result = json.loads((out / "eval.json").read_text())
    assert result["metrics"]["mia_auc_loss"]["value"] - 0.5 == pytest.approx(
        kept["stop_gap_loss_auc"], abs=0.02
    )
    ratios = result["metrics"]["forget_truth_ratio"]["per_sample_ratio"]
    assert float(np.median(ratios)) == pytest.approx(kept["stop_forget_truth_ratio"], rel=0.02)
    assert json.loads((out / "status.json").read_text())["state"] == "complete"


def test_at_an_equal_gap_the_check_with_the_lower_retain_loss_is_kept_and_the_patience_still_runs():
    # gaps +0.5 (start), then +0.25 three times with retain losses 1.5, 1.2, 1.3: step 2 is kept (the same gap
    # at less cost to the retain set), and since a tie is no progress the run stalls two checks after step 1.
    scripted = [
        ([1, 2], [3, 4], 1.0),
        ([1, 3.5], [3, 4], 1.5),
        ([1, 3.5], [3, 4], 1.2),
        ([1, 3.5], [3, 4], 1.3),
    ]
    rule, records = _rule(scripted, patience=2)
    model = torch.nn.Linear(1, 1, bias=False)
    weights, last = _train(rule, model, steps=10)
    assert [r["stop_gap"] for r in records[:-1]] == [0.5, 0.25, 0.25, 0.25]
    assert last == 3 and records[-1]["stop_reason"] == "stalled" and records[-1]["stop_best_step"] == 2
    assert records[2]["stop_tie_of"] == 1 and "stop_tie_of" not in records[3]
    assert torch.equal(model.weight, weights[2])
    # At an equal retain loss the earlier check stays (test_no_progress_for_patience_checks_stops_as_stalled).


def test_a_saturated_gap_is_not_a_stall():
    # Forget losses rise but stay below every holdout loss (gap +0.5) for longer than the patience:
    # the rule must keep going, not stop and restore the untouched target (step 0).
    scripted = [([1, 2], [3, 4], 1.0), ([1.5, 2.2], [3, 4], 1.0), ([2, 2.5], [3, 4], 1.0),
                ([2.5, 2.9], [3, 4], 1.0), ([3.5, 3.6], [3, 4], 1.0)]  # fmt: skip
    rule, records = _rule(scripted, patience=2)
    weights, last = _train(rule, torch.nn.Linear(1, 1, bias=False), steps=10)
    assert [r["stop_decision"] for r in records[:-1]] == ["continue"] * 4 + ["crossed"]
    assert last == 4 and records[-1]["stop_best_step"] == 4


def test_statistic_auto_compares_truth_ratios_when_the_holdout_has_perturbed_answers(micro_world, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(micro_world, world)
    _, data, config, _ = parse_config(
        ["--auto", "--data_dir", str(world), "--forget_split", "forget10", "--output_dir", "x"]
    )
    forget, retain = load_split("forget10", data_dir=world), load_split("retain90", data_dir=world)
    got = load_stop_data(data, forget, retain, config)
    assert got["statistic"] == "truth_ratio"
    assert [r["question"] for r in got["forget_scored"]] == [r["question"] for r in forget]  # forget order
    assert all(
        r["perturbed_answer"] and r["paraphrased_answer"] for r in got["forget_scored"] + got["holdout"]
    )
    (world / "holdout10_perturbed.json").unlink()  # like TOFU: the holdout has question and answer only
    got = load_stop_data(data, forget, retain, config)
    # Wrong answers built from the retain split instead (tests/core/test_constructed.py), on both sides.
    assert got["statistic"] == "truth_ratio_constructed"
    assert all(
        len(r["perturbed_answer"]) == 5 and r["paraphrased_answer"] == r["answer"]
        for r in got["forget_scored"] + got["holdout"]
    )


def test_truth_ratio_values_by_hand():
    # Per row, one scoring pass over [answer, paraphrase, perturbed...]; R = exp(l_para - mean_j l_pert_j).
    rows = [dict(question="q1", answer="a", paraphrased_answer="p", perturbed_answer=["x", "y"]),
            dict(question="q2", answer="b", paraphrased_answer="r", perturbed_answer=["z", "w", "v"])]  # fmt: skip
    flat = {"a": 0.5, "p": 1.0, "x": 2.0, "y": 3.0, "b": 0.25, "r": 2.0, "z": 1.0, "w": 1.5, "v": 2.0}
    config = SimpleNamespace(
        stop_check_interval=1, stop_patience=3, stop_retain_tolerance=0.5, stop_lr_damping=False
    )
    data = {"statistic": "truth_ratio", "holdout": rows, "heldout": [], "retain_sample": []}
    rule = IndistinguishableStop(None, rows, data, config, {}, lambda record: None, "/nonexistent")
    asked = []
    rule.scorer.losses = lambda model, rs, desc: asked.append(rs) or np.array([flat[r["answer"]] for r in rs])
    answer, log_ratio = rule.scorer.values(None, rows, "forget")
    assert [r["question"] for r in asked[0]] == ["q1"] * 4 + ["q2"] * 5
    assert answer.tolist() == [0.5, 0.25]
    assert np.exp(log_ratio) == pytest.approx([math.exp(1.0 - 2.5), math.exp(2.0 - 1.5)])
    # A paraphrase 1000 nats less likely than its perturbations: R overflows, log R does not.
    flat["p"] = 1002.5
    assert np.isfinite(rule.scorer.values(None, rows, "forget")[1]).all()


@pytest.mark.parametrize("schedule", ["lambda", "gen"])
def test_lr_damping_scales_the_schedule_by_the_share_of_the_gap_left(schedule):
    from llm_unlearn.core.gen import GenScheduler

    # Gaps +1/2, +1/4, +1/4 (AUC): after the second check the lr is half the schedule's, at once and
    # for every later step; GeN's own estimate (eta) is not touched.
    scripted = [([1, 2], [3, 4], 1.0), ([1, 3.5], [3, 4], 1.0), ([2.5, 3.5], [3, 4], 1.0)]
    rule, records = _rule(scripted, damping=True)
    model = torch.nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = (
        GenScheduler(optimizer)
        if schedule == "gen"
        else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1.0)
    )
    args = SimpleNamespace(max_steps=10, num_train_epochs=1)
    state, control = SimpleNamespace(global_step=0, max_steps=10), TrainerControl()
    rule.on_train_begin(args, state, control, model=model)
    lrs = []
    for step in (1, 2):
        optimizer.step()
        sched.step()
        state.global_step = step
        rule.on_step_end(args, state, control, model=model, optimizer=optimizer, lr_scheduler=sched)
        lrs.append(optimizer.param_groups[0]["lr"])
    sched.step()
    assert lrs == pytest.approx([0.05, 0.05]) and optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    assert [r["stop_lr_damping"] for r in records] == [1.0, 0.5, 0.5]
    if schedule == "gen":
        assert sched.etas == [0.1]


def test_lr_damping_needs_the_stop_rule_and_a_multiplier_schedule():
    from llm_unlearn.runs.options import ConfigError

    with pytest.raises(ConfigError, match="--stop_lr_damping scales the lr by the stop rule's gap"):
        parse_config(["--output_dir", "x", "--stop_lr_damping", "true"])
    with pytest.raises(ConfigError, match="--stop_lr_damping composes with multiplier schedules"):
        parse_config(["--auto", "--output_dir", "x", "--stop_lr_damping", "true", "--gen", "false",
                      "--lr_scheduler_type", "reduce_lr_on_plateau", "--eval_strategy", "epoch"])  # fmt: skip


def _screening_rule(script: dict[int, tuple], tolerance=0.5):
    """A truth-ratio rule and a one-weight model; the scores are scripted by the weight w: script[w] =
    (forget answer losses, holdout answer losses, forget log R, holdout log R, retain loss)."""
    config = SimpleNamespace(stop_check_interval=1, stop_patience=3, stop_retain_tolerance=tolerance,
                             stop_lr_damping=False, stop_screen=True)  # fmt: skip
    data = {"statistic": "truth_ratio", "holdout": [None] * 2, "heldout": [], "retain_sample": [None]}
    records: list[dict] = []
    rule = IndistinguishableStop(None, [None] * 2, data, config, {}, records.append, "/nonexistent")
    full = []  # the weights at which truth ratios were scored

    def at(model):
        return script[int(model.weight.item())]

    def losses(model, rows, desc):
        fa, ha, _, _, retain = at(model)
        return np.array(fa if "forget" in desc else ha if "holdout" in desc else [retain], dtype=float)

    def values(model, rows, desc):
        fa, ha, ftr, htr, _ = at(model)
        if "forget" in desc:
            full.append(int(model.weight.item()))
        return (
            (np.array(fa, float), np.array(ftr, float))
            if "forget" in desc
            else (np.array(ha, float), np.array(htr, float))
        )

    rule.scorer.losses, rule.scorer.values = losses, values
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()  # _train adds 1 per step: the weight is the step
    return rule, records, full, model


# (forget answers, holdout answers): loss AUC gap +1/2, +1/4, -1/2; (forget, holdout) log R: KS gap +1, +1/2, 0, -1
A_FAR, A_NEAR, A_CROSSED = ([1, 1], [3, 3]), ([1, 3], [3, 3]), ([5, 5], [3, 3])
R_FAR, R_HALF, R_SAME, R_OVER = ([0, 0], [5, 5]), ([0, 6], [5, 5]), ([5, 5], [5, 5]), ([9, 9], [5, 5])


def test_screening_scores_truth_ratios_only_after_the_answer_loss_gap_crosses():
    script = {0: (*A_FAR, *R_FAR, 1.0), 1: (*A_FAR, *R_FAR, 1.1), 2: (*A_NEAR, *R_FAR, 1.2),
              3: (*A_CROSSED, *R_HALF, 1.3), 4: (*A_CROSSED, *R_SAME, 1.4), 5: (*A_CROSSED, *R_OVER, 1.5)}  # fmt: skip
    rule, records, full, model = _screening_rule(script)
    weights, last = _train(rule, model, steps=5)
    checks = [r for r in records if "stop_decision" in r]
    assert [r["stop_screened"] for r in checks] == [True, True, True, False, False]
    assert [r["stop_gap"] for r in checks] == [None, None, None, 0.5, 0.0]
    assert [r["stop_gap_loss_auc"] for r in checks] == [0.5, 0.5, 0.25, -0.5, -0.5]
    assert full == [3, 4]  # truth ratios from the crossing of the answer losses on (none before training)
    assert last == 4 and records[-1]["stop_reason"] == "crossed" and records[-1]["stop_best_step"] == 4


def test_screening_rescores_the_kept_check_when_the_first_scored_check_has_overshot():
    # Answers and truth ratios cross at the same check, the truth ratios far past 0 (-1): the screened
    # check before it (step 2) is scored with its own weights (+1/2), is nearer 0, and is kept.
    script = {0: (*A_FAR, *R_FAR, 1.0), 1: (*A_FAR, *R_FAR, 1.1), 2: (*A_NEAR, *R_HALF, 1.2),
              3: (*A_CROSSED, *R_OVER, 1.3)}  # fmt: skip
    rule, records, full, model = _screening_rule(script)
    weights, last = _train(rule, model, steps=3)
    checks = [r for r in records if "stop_decision" in r]
    assert full == [3, 2]  # step 2 scored with step 2's weights, after step 3's
    assert checks[-1]["stop_gap"] == -1.0 and checks[-1]["stop_previous_gap"] == 0.5
    end = {k: v for k, v in records[-1].items() if k != "stop_best_check"}
    assert end == {
        "step": 3,
        "stop_reason": "crossed",
        "stop_best_step": 2,
        "stop_best_gap": 0.5,
        "stop_restored": True,
    }
    assert records[-1]["stop_best_check"]["stop_rescored"] and records[-1]["stop_best_check"]["stop_screened"]
    assert torch.equal(model.weight, weights[2])


def test_a_retain_alarm_while_screening_keeps_the_last_screened_check_within_tolerance():
    # lead = holdout answer loss 3 - retain loss 1 = 2; tolerance 0.5: a retain loss above 2 alarms.
    script = {0: (*A_FAR, *R_FAR, 1.0), 1: (*A_FAR, *R_FAR, 1.5), 2: (*A_NEAR, *R_FAR, 2.5)}
    rule, records, full, model = _screening_rule(script)
    weights, last = _train(rule, model, steps=2)
    assert full == []  # no truth ratio was ever needed
    assert records[-1]["stop_reason"] == "retain_alarm" and records[-1]["stop_best_step"] == 1
    assert records[-1]["stop_best_gap"] is None and torch.equal(model.weight, weights[1])


def test_a_first_check_already_past_the_holdout_is_scored_in_full_and_keeps_the_model():
    # Answer losses already crossed before training: no screening; the truth ratios say the forget set
    # looks like unseen data, so there is nothing to unlearn and the untouched weights are kept.
    script = {0: (*A_CROSSED, *R_SAME, 1.0), 1: (*A_CROSSED, *R_OVER, 1.1)}
    rule, records, full, model = _screening_rule(script)
    weights, last = _train(rule, model, steps=1)
    checks = [r for r in records if "stop_decision" in r]
    assert full[0] == 0 and checks[0]["stop_screened"] is False
    assert checks[0]["stop_decision"] == "already_indistinguishable"
    assert records[-1]["stop_best_step"] == 0 and torch.equal(model.weight, weights[0])


def test_a_kept_check_before_training_is_scored_when_the_first_scored_check_overshoots():
    # The guard allows nothing between step 0 and the crossing: step 0 (screened) stays the kept check
    # until step 1 crosses far past 0; step 0's weights are then scored (+1) and compared: -1 vs +1 is a
    # tie, so the check already kept stays (ties never replace it).
    script = {0: (*A_FAR, *R_FAR, 1.0), 1: (*A_CROSSED, *R_OVER, 1.1)}
    rule, records, full, model = _screening_rule(script)
    weights, last = _train(rule, model, steps=1)
    checks = [r for r in records if "stop_decision" in r]
    assert full == [1, 0] and checks[-1]["stop_previous_gap"] == 1.0
    assert records[-1]["stop_reason"] == "crossed" and records[-1]["stop_best_step"] == 0
    assert records[-1]["stop_best_gap"] == 1.0 and torch.equal(model.weight, weights[0])


def test_a_resumed_run_goes_on_screening_only_if_no_truth_ratio_check_has_been_scored(tmp_path):
    script = {0: (*A_FAR, *R_FAR, 1.0), 1: (*A_FAR, *R_FAR, 1.1), 2: (*A_NEAR, *R_FAR, 1.2),
              3: (*A_CROSSED, *R_HALF, 1.3), 4: (*A_CROSSED, *R_HALF, 1.4)}  # fmt: skip
    args = SimpleNamespace(max_steps=4, num_train_epochs=1)
    for stopped_at, screening in ((2, True), (3, False)):
        out = tmp_path / f"at{stopped_at}"
        out.mkdir()
        first, _, _, model = _screening_rule(script)
        first.output_dir = out
        weights, _ = _train(first, model, steps=stopped_at)  # stop_rule.json and the best weights on disk
        resumed, records, full, model = _screening_rule(script)
        resumed.output_dir = out
        state = SimpleNamespace(global_step=stopped_at, max_steps=4)
        resumed.on_train_begin(args, state, TrainerControl(), model=model)
        assert resumed.screening is screening and resumed.best["step"] == stopped_at
        assert torch.equal(resumed.best_weights["weight"], weights[stopped_at])


def test_utility_guard_stops_on_the_estimated_utility_and_never_keeps_such_weights():
    # AUC gaps +1/2, +1/4, +1/4 (not crossing); the estimate falls 10%, then 30% (tolerance 20%).
    scripted = [
        ([1, 2], [3, 4], 1.0),
        ([1, 3.5], [3, 4], 1.0),
        ([1, 3.75], [3, 4], 1.0),
        ([3, 3], [3, 4], 1.0),
    ]
    rule, records = _rule(scripted)
    rule.scorer.utility_rows, rule.utility_tolerance = {"retain": [None]}, 0.2
    estimates = iter([0.8, 0.72, 0.56])
    rule.scorer.utility = lambda model: next(estimates)
    weights, last = _train(rule, torch.nn.Linear(1, 1, bias=False), steps=5)
    checks = [r for r in records if "stop_decision" in r]
    assert [r["stop_utility_drop"] for r in checks] == pytest.approx([0.0, 0.1, 0.3])
    assert [r["stop_decision"] for r in checks] == ["continue", "continue", "utility_alarm"]
    assert last == 2 and records[-1]["stop_reason"] == "utility_alarm" and records[-1]["stop_best_step"] == 1


def test_utility_estimate_is_the_evaluations_model_utility_on_the_sample(micro_models, micro_world, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_unlearn.core.stop_data import load_stop_data
    from llm_unlearn.eval.tofu import evaluate

    # With a sample as large as the splits, the guard's estimate is the evaluation's model utility.
    _, data, config, _ = parse_config(["--auto", "--data_dir", str(micro_world), "--forget_split", "forget10",
                                       "--output_dir", "x", "--stop_utility_tolerance", "0.2",
                                       "--stop_utility_sample", "100000"])  # fmt: skip
    forget, retain = (
        load_split("forget10", data_dir=micro_world),
        load_split("retain90", data_dir=micro_world),
    )
    stop_data = load_stop_data(data, forget, retain, config)
    assert len(stop_data["utility_rows"]["wf"]) == len(
        load_split("world_facts_perturbed", data_dir=micro_world)
    )
    model = AutoModelForCausalLM.from_pretrained(micro_models["target"])
    tok = AutoTokenizer.from_pretrained(micro_models["target"])
    settings = dict(
        prompt_format="chat_template", max_length=512, system_prompt=None, batch_size=64, max_new_tokens=8
    )
    rule = IndistinguishableStop(tok, forget, stop_data, config, settings, lambda r: None, tmp_path)
    result = evaluate(model, tok, data_dir=micro_world, forget_split="forget10", batch_size=64, max_new_tokens=8,
                      max_length=512, progress=False, mia=False)  # fmt: skip
    assert rule.scorer.utility(model) == pytest.approx(result["metrics"]["model_utility"]["value"], rel=1e-9)


def test_retain_recall_guard_stops_on_the_sampled_recall_and_never_keeps_such_weights(caplog):
    # AUC gaps +1/2, +1/4, +1/4, then a crossing; recall 0.9 -> 0.85 (5.6% lost) -> 0.72 (20%; tolerance 12%).
    scripted = [
        ([1, 2], [3, 4], 1.0),
        ([1, 3.5], [3, 4], 1.0),
        ([1, 3.75], [3, 4], 1.0),
        ([3, 3], [3, 4], 1.0),
    ]
    rule, records = _rule(scripted)
    rule.scorer.recall_rows, rule.recall_tolerance = [{"question": "q", "answer": "a", "fact": "a"}], 0.12
    recalls = iter([0.9, 0.85, 0.72])
    rule.scorer.recall = lambda model: next(recalls)
    weights, last = _train(rule, torch.nn.Linear(1, 1, bias=False), steps=5)
    checks = [r for r in records if "stop_decision" in r]
    assert [r["stop_retain_recall_drop"] for r in checks] == pytest.approx([0.0, 0.05 / 0.9, 0.2])
    assert [r["stop_decision"] for r in checks] == ["continue", "continue", "retain_recall_alarm"]
    assert (
        last == 2
        and records[-1]["stop_reason"] == "retain_recall_alarm"
        and records[-1]["stop_best_step"] == 1
    )
    assert "fact recall fell 20% below the first check's" in caplog.text
    # The kept weights (gap +1/4) never looked like unseen data: the run says forgetting is incomplete.
    assert "forgetting is incomplete" in caplog.text and "gap 0.250" in caplog.text


def test_retain_recall_is_the_evaluations_collateral_damage_number_on_the_sample(
    micro_models, micro_world, tmp_path, monkeypatch
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_unlearn.core.stop_data import load_stop_data
    from llm_unlearn.eval.metrics import rouge_l_recall
    from llm_unlearn.eval.tofu import evaluate

    # --auto turns the guard on; with a sample as large as the retain split it is the evaluation's
    # retain fact recall, and without a `fact` field it is ROUGE-L recall of the same answers.
    _, data, config, _ = parse_config(["--auto", "--data_dir", str(micro_world), "--forget_split", "forget10",
                                       "--output_dir", "x", "--stop_retain_recall_sample", "100000"])  # fmt: skip
    assert config.stop_retain_recall_tolerance == 0.15 and config.stop_heldout_fraction == 0
    forget, retain = (
        load_split("forget10", data_dir=micro_world),
        load_split("retain90", data_dir=micro_world),
    )
    stop_data = load_stop_data(data, forget, retain, config)
    assert stop_data["heldout"] == [] and len(stop_data["recall_rows"]) == len(retain)
    model = AutoModelForCausalLM.from_pretrained(micro_models["target"])
    tok = AutoTokenizer.from_pretrained(micro_models["target"])
    settings = dict(
        prompt_format="chat_template", max_length=512, system_prompt=None, batch_size=64, max_new_tokens=16
    )
    rule = IndistinguishableStop(tok, forget, stop_data, config, settings, lambda r: None, tmp_path)
    result = evaluate(model, tok, data_dir=micro_world, forget_split="forget10", batch_size=64, max_new_tokens=16,
                      max_length=512, progress=False, mia=False)  # fmt: skip
    # The micro target answers almost nothing right, so the two agree at a low value; the patched
    # generations below make the number itself checkable.
    assert rule.scorer.recall(model) == pytest.approx(
        result["metrics"]["retain_fact_recall"]["value"], abs=1e-12
    )
    rows = rule.scorer.recall_rows
    right = {r["question"] for r in rows[::3]}  # every third question answered with its gold answer
    fake = lambda model, tok, questions, **kw: [  # noqa: E731
        next(r["answer"] for r in rows if r["question"] == q) if q in right else "I do not know."
        for q in questions
    ]
    monkeypatch.setattr("llm_unlearn.eval.scoring.generate_answers", fake)
    assert rule.scorer.recall(model) == pytest.approx(len(right) / len(rows))
    rule.scorer.recall_rows = [{k: v for k, v in r.items() if k != "fact"} for r in rows]
    assert rule.scorer.recall_name() == "ROUGE-L recall"
    expected = rouge_l_recall([r["answer"] for r in rows], fake(None, None, [r["question"] for r in rows]))
    assert rule.scorer.recall(model) == pytest.approx(float(expected.mean())) and 0 < expected.mean() < 1


def test_a_forget_set_already_like_unseen_data_stops_at_once_and_keeps_the_model(caplog):
    # Gap 0 before training (the model never learned its forget set): warn, stop, keep the untouched weights.
    scripted = [([3, 4], [3, 4], 1.0), ([1, 2], [3, 4], 1.0)]
    rule, records = _rule(scripted)
    model = torch.nn.Linear(1, 1, bias=False)
    args = SimpleNamespace(max_steps=10, num_train_epochs=1)
    state, control = SimpleNamespace(global_step=0, max_steps=10), TrainerControl()
    untouched = model.weight.detach().clone()
    with caplog.at_level("WARNING", logger="llm_unlearn"):
        rule.on_train_begin(args, state, control, model=model)
    assert control.should_training_stop and "nothing for the rule to unlearn" in caplog.text
    with torch.no_grad():
        model.weight += 1.0  # the one step the Trainer takes before it sees the stop
    state.global_step = 1
    rule.on_train_end(args, state, control, model=model)
    assert records[-1]["stop_reason"] == "already_indistinguishable" and records[-1]["stop_best_step"] == 0
    assert len([r for r in records if "stop_decision" in r]) == 1  # no check of the stepped weights
    assert torch.equal(model.weight, untouched)


def test_a_stop_of_the_trainers_own_is_the_reason_unless_the_rule_decides_at_the_same_step():
    # --vanish_stop (core/trainer.py) ends training at step 2, before any crossing: the reason is the trainer's,
    # the final weights are checked as a candidate, and the closest check is kept as always.
    scripted = [([1, 2], [3, 4], 1.0), ([1, 2.5], [3, 4], 1.0), ([1, 3.5], [3, 4], 1.0)]
    rule, records = _rule(scripted, patience=5)
    model = torch.nn.Linear(1, 1, bias=False)
    args = SimpleNamespace(max_steps=10, num_train_epochs=1)
    state = SimpleNamespace(global_step=0, max_steps=10)
    control = TrainerControl()
    rule.on_train_begin(args, state, control, model=model)
    for step in (1, 2):
        state.global_step = step
        if step == 2:
            rule.stopped_by("forget_vanished")  # in the step's training, before its check
            control.should_training_stop = True
        rule.on_step_end(args, state, control, model=model)
    rule.on_train_end(args, state, control, model=model)
    assert records[-1]["stop_reason"] == "forget_vanished" and records[-1]["stop_best_step"] == 2
    # At a step whose check crosses, the crossing is the reason.
    crossing = [([1, 2], [3, 4], 1.0), ([3.5, 3.6], [3, 4], 1.0)]
    rule, records = _rule(crossing)
    state.global_step = 0
    rule.on_train_begin(args, state, TrainerControl(), model=model)
    state.global_step = 1
    rule.stopped_by("forget_vanished")
    rule.on_step_end(args, state, TrainerControl(), model=model)
    rule.on_train_end(args, state, TrainerControl(), model=model)
    assert records[-1]["stop_reason"] == "crossed"


def test_running_out_of_steps_before_the_crossing_says_forgetting_is_incomplete(caplog):
    # AUC gaps +1/2, +1/4, +1/4 and no more steps: the kept weights still look more familiar than unseen data.
    scripted = [([1, 2], [3, 4], 1.0), ([1, 3.5], [3, 4], 1.0), ([1, 3.5], [3, 4], 1.0)]
    rule, records = _rule(scripted, patience=10)
    _, last = _train(rule, torch.nn.Linear(1, 1, bias=False), steps=2)
    assert last == 2 and records[-1]["stop_reason"] == "max_steps"
    assert (
        "forgetting is incomplete: the run used all its steps (2)" in caplog.text
        and "gap 0.250" in caplog.text
    )


def test_running_out_of_steps_at_the_crossing_warns_nothing(caplog):
    # gaps +1/2, +1/4, then 0 (crossed) at the last step there is
    rule, records = _rule([([1, 2], [3, 4], 1.0), ([1, 3.5], [3, 4], 1.0), ([3.5, 3.6], [3, 4], 1.0)])
    _train(rule, torch.nn.Linear(1, 1, bias=False), steps=2)
    assert records[-1]["stop_reason"] == "crossed" and "incomplete" not in caplog.text
