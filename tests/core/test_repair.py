"""`--stop_repair` (`llm_unlearn/core/repair.py`): unlearn past the retain-recall guard, then repair."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerControl

from llm_unlearn.cli import main
from llm_unlearn.cli.parse import parse_config
from llm_unlearn.core.repair import RetainRepair
from llm_unlearn.data.qa import QACollator, QADataset, load_split, pad_id
from llm_unlearn.models.loading import load_model, load_tokenizer
from llm_unlearn.runs.options import ConfigError

from .test_stop import _rule, _train


def test_repair_needs_the_recall_guard_and_checks_its_ranges():
    with pytest.raises(
        ConfigError, match="--stop_repair repairs until the retain-recall guard is met: pass --auto"
    ):
        parse_config(["--output_dir", "x", "--stop_repair", "true"])
    with pytest.raises(ConfigError, match="--stop_repair repairs until the retain-recall guard"):
        parse_config(
            ["--auto", "--output_dir", "x", "--stop_repair", "true", "--stop_retain_recall_tolerance", "0"]
        )
    for option, value in (("stop_repair_lr", "0"), ("stop_repair_interval", "0"), ("stop_repair_max_steps", "0"),
                          ("stop_repair_tolerance", "1")):  # fmt: skip
        with pytest.raises(ConfigError, match=option):
            parse_config(["--auto", "--output_dir", "x", "--stop_repair", "true", f"--{option}", value])
    config = parse_config(["--auto", "--output_dir", "x", "--stop_repair", "true"])[2]
    assert (
        config.stop_repair and config.stop_repair_lr == 1e-4 and config.stop_retain_recall_tolerance == 0.15
    )
    assert config.stop_repair_tolerance == 0.1


class _ScriptedRepair(RetainRepair):
    """RetainRepair whose training is scripted: each interval adds 1 to the weight and reports the next
    scripted recall (`after`, the bookkeeping around it, is the real one)."""

    def __init__(self, interval: int, max_steps: int, tolerance: float = 0.15):
        self.interval, self.max_steps, self.tolerance, self.targets = interval, max_steps, tolerance, []

    def run(self, model, recall, target, on_check):
        self.targets.append(target)
        steps = 0
        while steps < self.max_steps:
            with torch.no_grad():
                model.weight += 1.0
            steps += self.interval
            value, seconds = recall()
            on_check(steps, value, 0.5, seconds)
            if value >= target:
                break
        return steps


def _repair_rule(recalls: list[float], max_steps=100, repaired=(1, 3.5)):
    # AUC gaps +1/2, +1/4, then a crossing (-3/8) at the third check (step 2), so step 1 is kept; the
    # final full check of the repaired weights gets the last scripted losses (`repaired`: +1/4).
    scripted = [
        ([1, 2], [3, 4], 1.0),
        ([1, 3.5], [3, 4], 1.0),
        ([4, 5], [3, 4], 1.0),
        (list(repaired), [3, 4], 1.0),
    ]
    rule, records = _rule(scripted)
    rule.scorer.recall_rows, rule.recall_tolerance = [{"question": "q", "answer": "a", "fact": "a"}], 0.15
    calls = iter(recalls)
    rule.scorer.recall = lambda model: next(calls)
    rule.repair = _ScriptedRepair(interval=5, max_steps=max_steps)
    return rule, records


def test_the_recall_guard_stops_nothing_and_the_kept_weights_are_repaired_to_its_tolerance():
    # Recall 0.8 before training (the baseline, the only one measured while unlearning); 0.5 at the kept
    # weights; then 0.6 and 0.7 after 5 and 10 repair steps: 0.7 >= (1 - 0.15) * 0.8 = 0.68 ends it.
    rule, records = _repair_rule([0.8, 0.5, 0.6, 0.7])
    model = torch.nn.Linear(1, 1, bias=False)
    weights, last = _train(rule, model, steps=5)
    checks = [r for r in records if "stop_decision" in r and r.get("stop_phase") != "repair"]
    assert [r["stop_decision"] for r in checks] == ["continue", "continue", "crossed"]
    assert "stop_retain_recall" in checks[0] and all("stop_retain_recall" not in r for r in checks[1:])
    assert rule.repair.targets == [pytest.approx(0.68)]
    repair = [r for r in records if r.get("stop_phase") == "repair"]
    assert [(r["step"], r["stop_retain_recall"], r["stop_decision"]) for r in repair[:3]] == [
        (2, 0.5, "repair"), (7, 0.6, "repair"), (12, 0.7, "repaired"),
    ]  # fmt: skip
    # A last full check records what the rule sees in the repaired weights.
    assert repair[3]["step"] == 12 and repair[3]["stop_gap"] == pytest.approx(0.25)
    end = records[-1]
    assert end["stop_reason"] == "crossed" and end["stop_best_step"] == 1 and end["stop_repair_steps"] == 10
    assert end["step"] == 12
    # The weights returned are the kept check's (step 1), repaired: two scripted intervals added 2.
    assert model.weight.item() == pytest.approx(weights[1].item() + 2)


def test_weights_already_within_the_tolerance_are_not_repaired():
    rule, records = _repair_rule([0.8, 0.75])  # 0.75 >= 0.68
    model = torch.nn.Linear(1, 1, bias=False)
    weights, _ = _train(rule, model, steps=5)
    assert records[-1]["stop_repair_steps"] == 0 and rule.repair.targets == []
    assert model.weight.item() == pytest.approx(weights[1].item())


@pytest.mark.parametrize("repaired, warned", [((1, 3.5), False), ((1, 2), True), ((4, 5), False)])
def test_a_repair_that_brings_the_forget_set_back_says_forgetting_is_incomplete(caplog, repaired, warned):
    # Kept weights: gap +1/4. After the repair +1/4 (as kept: no warning), +1/2 (more familiar than the kept
    # weights: warned) or -3/8 (less familiar than unseen data: nothing came back).
    rule, records = _repair_rule([0.8, 0.5, 0.7], repaired=repaired)
    _train(rule, torch.nn.Linear(1, 1, bias=False), steps=5)
    final = [r for r in records if r.get("stop_phase") == "repair"][-1]
    assert final["stop_gap"] == pytest.approx({(1, 3.5): 0.25, (1, 2): 0.5, (4, 5): -0.375}[repaired])
    line = "forgetting is incomplete after the repair"
    assert (line in caplog.text) == warned
    if warned:
        assert "gap 0.500, the kept weights' 0.250" in caplog.text


def test_a_repair_that_runs_out_of_steps_says_so(caplog):
    rule, records = _repair_rule([0.8, 0.5, 0.55, 0.6], max_steps=10)
    _train(rule, torch.nn.Linear(1, 1, bias=False), steps=5)
    assert records[-1]["stop_repair_steps"] == 10
    assert "--stop_repair ran its 10 steps" in caplog.text and "raise --stop_repair_max_steps" in caplog.text


def _repairer(micro_models, micro_world, **overrides):
    tokenizer = load_tokenizer(str(micro_models["target"]))
    rows = load_split("retain90", data_dir=micro_world)
    dataset = QADataset(rows, tokenizer, prompt_format="chat_template", max_length=256)
    config = dict(stop_repair_lr=1e-3, stop_repair_interval=3, stop_repair_max_steps=9, stop_repair_tolerance=0.1,
                  retain_batch_size=None, per_device_train_batch_size=4, seed=0) | overrides  # fmt: skip
    return RetainRepair(dataset, QACollator(pad_id(tokenizer)), SimpleNamespace(**config))


def test_retain_repair_trains_on_the_retain_set_until_the_recall_reaches_its_target(
    micro_models, micro_world
):
    model = load_model(str(micro_models["target"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    repair = _repairer(micro_models, micro_world)
    values, seen = iter([0.1, 0.9]), []
    steps = repair.run(model, lambda: (next(values), 0.0), 0.5, lambda *a: seen.append(a))
    assert steps == 6 and [a[:2] for a in seen] == [(3, 0.1), (6, 0.9)]
    assert all(a[2] > 0 for a in seen), "the retain answer NLL of the last batch is reported"
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters()), "the weights moved"
    # Seeded: the same steps on a fresh copy give the same weights.
    again = load_model(str(micro_models["target"]))
    values = iter([0.1, 0.9])
    _repairer(micro_models, micro_world).run(again, lambda: (next(values), 0.0), 0.5, lambda *a: None)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    # Never past max_steps, whatever the recall.
    values = iter([0.0] * 10)
    assert (
        _repairer(micro_models, micro_world).run(model, lambda: (next(values), 0.0), 1.0, lambda *a: None)
        == 9
    )


def test_a_non_finite_retain_loss_is_one_clear_error(micro_models, micro_world):
    model = load_model(str(micro_models["target"]))
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(
        FloatingPointError, match="--stop_repair: the retain loss became nan.*lower --stop_repair_lr"
    ):
        _repairer(micro_models, micro_world).run(model, lambda: (0.0, 0.0), 1.0, lambda *a: None)


def test_auto_with_repair_end_to_end_repairs_the_kept_weights_on_the_retain_set(
    micro_models, micro_world, tmp_path, monkeypatch
):
    # The micro target answers no retain question right (recall 0: nothing to repair), so the recall is
    # scripted here (its scoring is tested in test_stop.py); training, logs and saving are the real ones.
    recalls = iter([0.9, 0.5, 0.6, 0.95])  # the first check; then the kept weights, after 5 and 10 steps
    monkeypatch.setattr("llm_unlearn.core.stop_checks.CheckScorer.recall", lambda self, model: next(recalls))
    out = tmp_path / "repair"
    argv = ["unlearn", "--auto", "--stop_repair", "true", "--model_name_or_path", str(micro_models["target"]),
            "--data_dir", str(micro_world), "--forget_split", "forget10", "--output_dir", str(out),
            "--eval_batch_size", "64", "--max_new_tokens", "8", "--disable_tqdm", "true", "--do_final_eval", "false",
            "--stop_repair_lr", "1e-3"]  # fmt: skip
    from llm_unlearn.pipeline import unlearn as pipeline

    drop = pipeline.drop_training_state
    kept_copy = (
        tmp_path / "kept.safetensors"
    )  # the kept weights go with the run's training state: copied first
    monkeypatch.setattr(pipeline, "drop_training_state",
                        lambda o: (shutil.copy(o / "stop_rule_best.safetensors", kept_copy), drop(o)))  # fmt: skip
    assert main(argv) == 0
    assert not (out / "stop_rule_best.safetensors").exists()  # not a second copy of the weights in the run
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    end = next(r for r in log if "stop_reason" in r)
    repair = [r for r in log if r.get("stop_phase") == "repair"]
    history = json.loads((out / "stop_rule.json").read_text())["history"]
    assert [r for r in history if r.get("stop_phase") == "repair"] == repair, (
        "stop_rule.json and the log agree"
    )
    last = max(r["step"] for r in log if "stop_decision" in r and r.get("stop_phase") != "repair")
    assert [(r["step"], r["stop_retain_recall"], r["stop_decision"]) for r in repair[:3]] == [
        (last, 0.5, "repair"), (last + 5, 0.6, "repair"), (last + 10, 0.95, "repaired"),
    ]  # fmt: skip
    assert all(r["stop_repair_target"] == pytest.approx(0.81) for r in repair[:3])  # 0.9 x (1 - 0.1)
    assert repair[3]["step"] == last + 10 and repair[3]["stop_gap"] is not None, (
        "the returned weights, scored"
    )
    assert end["stop_repair_steps"] == 10 and end["step"] == last + 10
    # The report's training figure reads this log as it is (the repair's records included).
    from llm_unlearn.eval.plots import training_curves

    assert "stop rule: forget vs holdout" in training_curves(log, tmp_path / "train.png", "repair")
    # What was saved is the kept check's weights (stop_rule_best.safetensors) after 10 retain-only steps:
    # it moved, and its retain answers are more likely than the kept weights'.
    from safetensors.torch import load_file

    from llm_unlearn.eval.scoring import answer_losses

    saved, kept = load_model(str(out)), load_model(str(out))
    best = load_file(str(kept_copy))
    kept.load_state_dict(best, strict=False)
    assert any(not torch.equal(p, best[n]) for n, p in saved.named_parameters() if n in best)
    tokenizer = load_tokenizer(str(out))
    retain = load_split("retain90", data_dir=micro_world)
    nll = {
        name: answer_losses(m.eval(), tokenizer, [r["question"] for r in retain], [r["answer"] for r in retain],
                            prompt_format="chat_template").mean()
        for name, m in (("saved", saved), ("kept", kept))
    }  # fmt: skip
    assert nll["saved"] < nll["kept"]


@pytest.mark.slow
def test_repair_on_two_ranks_ends_with_the_same_weights_on_both_and_saves_them(
    micro_models, micro_world, tmp_path
):
    """The repair trains the unwrapped model outside DDP's synchronisation: every rank must run the same
    steps, take part in the final sharded check, and end with the weights that are saved."""
    from tests._two_ranks import run_two_ranks

    out = tmp_path / "run"
    run_two_ranks("_dist_repair.py", str(micro_models["target"]), str(micro_world), str(out))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 10
    assert ranks[0]["sums"] == ranks[1]["sums"]
    saved = {n: float(p.detach().double().sum()) for n, p in load_model(str(out)).named_parameters()}
    assert saved == pytest.approx(ranks[0]["sums"], rel=1e-6)
    end = next(
        json.loads(line)
        for line in (out / "train_log.jsonl").read_text().splitlines()
        if "stop_reason" in line
    )
    assert end["stop_repair_steps"] == 10


def test_a_run_resumed_during_its_repair_keeps_the_unlearnings_decision_and_repairs_again(tmp_path):
    # The first run unlearned to the crossing at step 2 (kept step 1) and was killed during its repair,
    # after its checkpoint at step 2: stop_rule.json holds the repair's first records.
    first, _ = _repair_rule([0.8, 0.5, 0.6, 0.7])
    first.output_dir = tmp_path
    model = torch.nn.Linear(1, 1, bias=False)
    weights, _ = _train(first, model, steps=5)
    saved = json.loads((tmp_path / "stop_rule.json").read_text())
    assert any(r.get("stop_phase") == "repair" for r in saved["history"])
    resumed, records = _repair_rule([0.5, 0.75])  # the resumed run's repair: recall 0.5, then 0.75
    resumed.output_dir = tmp_path
    args = SimpleNamespace(max_steps=5, num_train_epochs=1)
    state, control = SimpleNamespace(global_step=2, max_steps=5), TrainerControl()
    resumed.on_train_begin(args, state, control, model=model)
    assert resumed.decision == "crossed" and control.should_training_stop
    assert [r.get("stop_phase") for r in resumed.history] == [None, None, None]
    assert resumed.best["step"] == 1 and torch.equal(resumed.best_weights["weight"], weights[1])
    resumed.on_train_end(args, state, control, model=model)
    end = records[-1]
    assert end["stop_reason"] == "crossed" and end["stop_repair_steps"] == 5
    assert model.weight.item() == pytest.approx(weights[1].item() + 1)


def test_repair_with_lora_trains_the_adapters_and_saves_the_merged_model(
    micro_models, micro_world, tmp_path, monkeypatch
):
    recalls = iter([0.9, 0.5, 0.6, 0.95])  # scripted as in the end-to-end test above
    monkeypatch.setattr("llm_unlearn.core.stop_checks.CheckScorer.recall", lambda self, model: next(recalls))
    out = tmp_path / "lora"
    argv = ["unlearn", "--auto", "--stop_repair", "true", "--use_lora", "true",
            "--model_name_or_path", str(micro_models["target"]), "--data_dir", str(micro_world),
            "--forget_split", "forget10", "--output_dir", str(out), "--eval_batch_size", "64",
            "--max_new_tokens", "8", "--disable_tqdm", "true", "--do_final_eval", "false"]  # fmt: skip
    assert main(argv) == 0
    end = next(
        json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines() if "stop_reason" in x
    )
    assert end["stop_repair_steps"] == 10
    merged, target = load_model(str(out)), load_model(str(micro_models["target"]))
    assert set(dict(merged.named_parameters())) == set(dict(target.named_parameters())), (
        "a plain merged model"
    )
