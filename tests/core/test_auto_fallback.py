"""`--auto`'s fallback (core/auto.py): a utility alarm in the first regime starts the run again from the
original weights in the second, and a run killed there resumes there. `pytest tests/core/test_auto_fallback.py`"""

from __future__ import annotations

import json

import pytest
import yaml
from transformers import TrainerCallback

from llm_unlearn.cli.parse import parse_config
from llm_unlearn.core import auto
from llm_unlearn.core.stop_checks import CheckScorer
from llm_unlearn.eval.report import training_end
from llm_unlearn.pipeline.unlearn import unlearn


def _config(*flags: str):
    return parse_config(["--auto", *flags, "--output_dir", "x"])[2]


def test_the_fallback_applies_only_while_the_regime_is_autos_own():
    assert auto.fallback_applies(_config())
    assert auto.fallback_applies(_config("--learning_rate", "0.1"))  # the same value, given explicitly
    for flags in (("--learning_rate", "0.05"), ("--method", "ngdiff"), ("--optim", "adamw_torch"),
                  ("--forget_token_max_df", "1"), ("--num_train_epochs", "5"), ("--auto_fallback", "false"),
                  ("--stop_utility_tolerance", "0")):  # fmt: skip
        assert not auto.fallback_applies(_config(*flags)), flags
        assert not _config(*flags).auto_fallback or "stop_utility_tolerance" in flags[0], flags  # as recorded
    assert _config("--learning_rate", "0.1").auto_fallback
    assert not auto.fallback_applies(parse_config(["--output_dir", "x"])[2])  # no --auto
    second = auto.fallback_config(_config())
    assert (second.method, second.combine, second.optim, second.learning_rate, second.gen) == (
        "npo", "sum", "adamw_torch", 1e-4, False,
    )  # fmt: skip
    assert (second.lr_scheduler_type, second.num_train_epochs, second.weight_decay) == ("linear", 5, 0.01)
    assert (second.forget_token_max_df, second.stop_utility_tolerance, second.max_grad_norm) == (
        None,
        0.0,
        1.0,
    )
    assert (
        second.stop_repair and second.stop_rule == "indistinguishable" and not auto.fallback_applies(second)
    )
    assert (
        auto.fallback_config(_config("--max_grad_norm", "0.5")).max_grad_norm == 0.5
    )  # the user's own stays


def _scripted_utility(monkeypatch, values: list[float]) -> list[int]:
    """The utility estimate returns `values` in turn (a drop the micro model would not show reliably)."""
    calls = []

    def utility(self, model):
        calls.append(len(calls))
        return values[min(len(calls) - 1, len(values) - 1)]

    monkeypatch.setattr(CheckScorer, "utility", utility)
    return calls


# Two steps, a check after each, no final evaluation: enough to see what each check records.
SHORT = ("--max_steps", "2", "--stop_check_interval", "1", "--do_final_eval", "false")


def _run(micro_models, micro_world, out, callbacks=(), *flags):
    model_args, data, config, eval_args = parse_config([
        "--auto", "--model_name_or_path", str(micro_models["target"]), "--data_dir", str(micro_world),
        "--forget_split", "forget10", "--output_dir", str(out), "--eval_batch_size", "64", "--max_new_tokens", "2",
        "--disable_tqdm", "true", "--report_to", "none", *flags,
    ])  # fmt: skip
    return unlearn(model_args, data, config, eval_args, callbacks=list(callbacks))


class _WeightsAtStart(TrainerCallback):
    """The sum of every weight when each attempt starts training."""

    def __init__(self):
        self.sums = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.sums.append(sum(float(p.detach().double().sum()) for p in model.parameters()))


def _log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_utility_alarm_starts_again_from_the_original_weights_in_the_second_regime(
    micro_models, micro_world, tmp_path, monkeypatch, caplog
):
    calls = _scripted_utility(monkeypatch, [0.5, 0.3])  # -40% at the first check after training
    out = tmp_path / "run"
    start = _WeightsAtStart()
    with caplog.at_level("WARNING", logger="llm_unlearn"):
        _run(micro_models, micro_world, out, [start])
    assert "starting again from the original weights" in caplog.text
    assert len(calls) == 2, "the second regime estimates no utility"
    mark = json.loads((out / auto.MARK_FILE).read_text())
    first = _log(out / auto.FIRST_ATTEMPT_DIR / "train_log.jsonl")
    first_checks = [r for r in first if "stop_decision" in r]
    assert [r["stop_decision"] for r in first_checks] == ["continue", "utility_alarm"]
    assert mark["reason"] == "utility_alarm" and mark["at_step"] == first_checks[-1]["step"] > 0
    assert mark["utility_drop"] == pytest.approx(0.4)
    end = [r for r in first if "stop_reason" in r]
    assert end == [{"step": mark["at_step"], "stop_reason": "utility_alarm", "stop_fallback": True}]
    assert not any(r.get("stop_phase") == "repair" for r in first), (
        "the first attempt's weights are not repaired"
    )
    second = _log(out / "train_log.jsonl")
    assert second[0] == {"step": 0, "auto_fallback": mark}  # the log says why it is the second regime's
    said = training_end(second)  # the report's sentence on how training ended
    assert said.startswith("`--auto` started again from the original weights") and "fell 40% at step" in said
    checks = [r for r in second if "stop_decision" in r and r.get("stop_phase") != "repair"]
    # From the original weights, so the first attempt's check before training stands for the second's.
    assert len(start.sums) == 2 and start.sums[0] == start.sums[1]
    assert checks[0]["step"] == 0 and checks[0]["stop_replayed"] is True
    assert checks[0]["stop_forget_loss"] == first_checks[0]["stop_forget_loss"]
    assert checks[0]["stop_retain_recall"] == first_checks[0]["stop_retain_recall"]
    assert all("stop_utility" not in r for r in checks)
    assert all(r["learning_rate"] <= 1e-4 for r in second if "learning_rate" in r)
    assert [r for r in second if "stop_reason" in r][0]["stop_reason"] != "utility_alarm"
    saved = yaml.safe_load((out / "unlearn_config.yaml").read_text())
    assert (saved["method"], saved["optim"], saved["learning_rate"], saved["auto_fallback"]) == (
        "npo", "adamw_torch", 1e-4, False,
    )  # fmt: skip
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "complete" and status["method"] == "npo"
    assert (out / "model.safetensors").is_file() and not list(out.glob("checkpoint-*"))
    # The model card (hub/card.py) names the second regime's settings and says why they are not --auto's first.
    from llm_unlearn.hub.card import build_card

    text = build_card(out, "org/auto", adapter=False).text
    assert (
        "started again from the original weights in its second regime" in text and "fell 40% at step" in text
    )
    assert "learning rate `0.0001`" in text


class _Crash(TrainerCallback):
    """Raise once the second regime (AdamW) has saved the checkpoint of step 2."""

    def on_save(self, args, state, control, **kwargs):
        if args.optim == "adamw_torch" and state.global_step == 2:
            raise RuntimeError("killed")


def test_a_run_stopped_in_the_second_regime_resumes_there(micro_models, micro_world, tmp_path, monkeypatch):
    calls = _scripted_utility(monkeypatch, [0.5, 0.3])
    out = tmp_path / "run"
    save = ("--save_strategy", "steps", "--save_steps", "1")
    with pytest.raises(RuntimeError, match="killed"):
        _run(micro_models, micro_world, out, [_Crash()], *save)
    assert json.loads((out / "status.json").read_text())["state"] == "failed"
    assert (out / auto.MARK_FILE).is_file() and len(calls) == 2
    _run(micro_models, micro_world, out, [], *save)  # the same command again
    assert len(calls) == 2, "the resumed run did not go back to the first regime"
    second = _log(out / "train_log.jsonl")
    assert [r for r in second if "auto_fallback" in r] == second[:1]
    steps = [r["step"] for r in second if "loss" in r]
    assert steps == sorted(set(steps)) and steps[0] == 1, "one record per step, from the first"
    assert all(r["learning_rate"] <= 1e-4 for r in second if "learning_rate" in r)
    assert json.loads((out / "status.json").read_text())["state"] == "complete"
    assert (
        len([r for r in _log(out / auto.FIRST_ATTEMPT_DIR / "train_log.jsonl") if "stop_fallback" in r]) == 1
    )


class _CrashEarly(TrainerCallback):
    """Raise at the second regime's first step, before any checkpoint."""

    def on_step_end(self, args, state, control, **kwargs):
        if args.optim == "adamw_torch":
            raise RuntimeError("killed")


def test_a_second_regime_stopped_before_its_first_checkpoint_restarts_there_and_logs_why_again(
    micro_models, micro_world, tmp_path, monkeypatch
):
    calls = _scripted_utility(monkeypatch, [0.5, 0.3])
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed"):
        _run(micro_models, micro_world, out, [_CrashEarly()])
    _run(micro_models, micro_world, out)
    assert len(calls) == 2
    second = _log(out / "train_log.jsonl")
    # The reason first, then the second regime's check before training.
    assert second[0]["auto_fallback"]["reason"] == "utility_alarm" and second[1]["step"] == 0
    assert [r for r in second if "auto_fallback" in r] == second[:1]
    assert json.loads((out / "status.json").read_text())["state"] == "complete"


def _powers_of_two_or_zero(k: int) -> bool:
    return k & (k - 1) == 0


def test_auto_estimates_utility_at_doubling_checks_and_on_the_weights_it_keeps(
    micro_models, micro_world, tmp_path, monkeypatch
):
    """Where the estimate only picks the regime: at checks 0, 1, 2, 4, ... and on the kept weights if their
    check was not one of those; elsewhere (the fallback off) at every check, as before."""
    calls = _scripted_utility(monkeypatch, [0.5])  # never an alarm
    out = tmp_path / "run"
    _run(
        micro_models,
        micro_world,
        out,
        [],
        "--stop_check_interval",
        "1",
        "--max_steps",
        "9",
        "--stop_repair",
        "false",
    )
    log = _log(out / "train_log.jsonl")
    checks = [r for r in log if "stop_decision" in r and r.get("stop_phase") is None]
    assert len(checks) >= 4
    assert [i for i, r in enumerate(checks) if "stop_utility" in r] == [
        i for i in range(len(checks)) if _powers_of_two_or_zero(i)
    ]
    end = next(r for r in log if "stop_reason" in r)
    kept_check = next(r for r in checks if r["step"] == end["stop_best_step"])
    kept = [r for r in log if r.get("stop_phase") == "kept"]
    # The kept weights are estimated once: at their own check, or at the end as a record of their own.
    assert len(kept) == (0 if "stop_utility" in kept_check else 1)
    assert [r["step"] for r in kept] == [end["stop_best_step"]] * len(kept)
    assert end["stop_best_check"].get("stop_utility", end["stop_best_check"].get("stop_kept_utility")) == 0.5
    assert len(calls) == sum("stop_utility" in r for r in checks) + len(kept)
    saved = json.loads((out / "stop_rule.json").read_text())
    best = next(
        r for r in saved["history"] if r["step"] == saved["best_step"] and r.get("stop_phase") is None
    )
    assert best.get("stop_utility", best.get("stop_kept_utility")) == 0.5

    calls.clear()
    plain = tmp_path / "plain"
    _run(micro_models, micro_world, plain, [], "--stop_check_interval", "1", "--max_steps", "9", "--stop_repair", "false",
         "--auto_fallback", "false")  # fmt: skip
    every = [r for r in _log(plain / "train_log.jsonl") if "stop_decision" in r]
    assert all("stop_utility" in r for r in every) and len(calls) == len(every)


def test_kept_weights_out_of_tolerance_fall_back_though_no_check_estimated_them(
    micro_models, micro_world, tmp_path, monkeypatch
):
    from llm_unlearn.core.stop import IndistinguishableStop

    # The first check only (where a guard is on).
    monkeypatch.setattr(
        IndistinguishableStop,
        "_utility_due",
        lambda self: bool(self.scorer.utility_rows) and not self.history,
    )
    calls = _scripted_utility(monkeypatch, [0.5, 0.3])  # the kept weights' estimate: -40%
    out = tmp_path / "run"
    _run(micro_models, micro_world, out, [], "--stop_check_interval", "1", "--max_steps", "4")
    first = _log(out / auto.FIRST_ATTEMPT_DIR / "train_log.jsonl")
    kept = [r for r in first if r.get("stop_phase") == "kept"]
    assert [r["stop_decision"] for r in kept] == ["utility_alarm"] and kept[0]["step"] > 0
    mark = json.loads((out / auto.MARK_FILE).read_text())
    assert (mark["at_step"], mark["utility_drop"]) == (kept[0]["step"], pytest.approx(0.4))
    assert [r["stop_reason"] for r in first if "stop_reason" in r] == ["utility_alarm"]
    assert not any(r.get("stop_phase") == "repair" for r in first)
    second = _log(out / "train_log.jsonl")
    assert second[0] == {"step": 0, "auto_fallback": mark} and len(calls) == 2


def test_a_run_killed_between_the_kept_weights_alarm_and_the_fallback_falls_back_when_resumed(
    micro_models, micro_world, tmp_path, monkeypatch
):
    """The kept weights' estimate is not read back from stop_rule.json: the resumed run estimates again."""
    from llm_unlearn.core.stop import IndistinguishableStop
    from llm_unlearn.pipeline import unlearn as pipeline

    monkeypatch.setattr(
        IndistinguishableStop,
        "_utility_due",
        lambda self: bool(self.scorer.utility_rows) and not self.history,
    )
    calls = _scripted_utility(monkeypatch, [0.5, 0.3])
    archive = pipeline.archive_first_attempt

    def killed(*args):
        monkeypatch.setattr(pipeline, "archive_first_attempt", archive)
        raise RuntimeError("killed")

    monkeypatch.setattr(pipeline, "archive_first_attempt", killed)
    out = tmp_path / "run"
    flags = (
        "--stop_check_interval",
        "1",
        "--max_steps",
        "4",
        "--save_strategy",
        "steps",
        "--save_steps",
        "1",
    )
    with pytest.raises(RuntimeError, match="killed"):
        _run(micro_models, micro_world, out, [], *flags)
    assert not (out / auto.MARK_FILE).exists() and len(calls) == 2
    _run(micro_models, micro_world, out, [], *flags)  # the same command again
    assert len(calls) == 3, "the kept weights were estimated again"
    first = _log(out / auto.FIRST_ATTEMPT_DIR / "train_log.jsonl")
    assert max(r["step"] for r in first if "loss" in r) == 4, "no step past --max_steps on resume"
    mark = json.loads((out / auto.MARK_FILE).read_text())
    assert mark["utility_drop"] == pytest.approx(0.4)
    assert yaml.safe_load((out / "unlearn_config.yaml").read_text())["optim"] == "adamw_torch"
    assert json.loads((out / "status.json").read_text())["state"] == "complete"


def test_a_run_killed_before_it_saved_the_second_regimes_settings_resumes_and_other_settings_are_refused(
    micro_models, micro_world, tmp_path, monkeypatch
):
    from llm_unlearn.pipeline import unlearn as pipeline
    from llm_unlearn.runs.folder import RunError

    calls = _scripted_utility(monkeypatch, [0.5, 0.3])
    write = pipeline._Attempt.write_config

    def killed(self, config):
        if config.optim == "adamw_torch":  # the second regime's settings: the process dies first
            monkeypatch.setattr(pipeline._Attempt, "write_config", write)
            raise RuntimeError("killed")
        write(self, config)

    monkeypatch.setattr(pipeline._Attempt, "write_config", killed)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed"):
        _run(micro_models, micro_world, out)
    assert (out / auto.MARK_FILE).is_file()
    assert yaml.safe_load((out / "unlearn_config.yaml").read_text())["optim"] == "sgd"  # the first regime's
    with pytest.raises(RunError, match=r"other settings \(auto_fallback: True there, False now"):
        _run(micro_models, micro_world, out, [], "--auto_fallback", "false")
    _run(micro_models, micro_world, out)  # the same command again
    assert yaml.safe_load((out / "unlearn_config.yaml").read_text())["optim"] == "adamw_torch"
    assert json.loads((out / "status.json").read_text())["state"] == "complete" and len(calls) == 2


def test_auto_estimates_utility_on_the_evaluation_splits_it_finds(
    micro_models, micro_world, tmp_path, caplog
):
    """Data without TOFU's real-author and world-fact splits: --auto estimates on what there is and says so;
    without any evaluation split its guard is off. An explicit --stop_utility_tolerance still refuses."""
    import shutil

    import numpy as np

    from llm_unlearn.core.stop_data import load_stop_data
    from llm_unlearn.data.qa import DataError, load_split
    from llm_unlearn.eval.metrics import SplitScores, model_utility, tofu_metrics

    world = tmp_path / "world"
    shutil.copytree(micro_world, world)
    forget, retain = load_split("forget10", data_dir=world), load_split("retain90", data_dir=world)

    def stop_data(*flags):
        _, data, config, _ = parse_config([*flags, "--data_dir", str(world), "--forget_split", "forget10",
                                           "--output_dir", "x"])  # fmt: skip
        return load_stop_data(data, forget, retain, config)

    assert set(stop_data("--auto")["utility_rows"]) == {"retain", "ra", "wf"}
    (world / "world_facts_perturbed.json").unlink()
    with caplog.at_level("WARNING", logger="llm_unlearn"):
        assert set(stop_data("--auto")["utility_rows"]) == {"retain", "ra"}
    assert "the utility guard leaves out the wf questions" in caplog.text
    out = tmp_path / "run"  # a run's checks estimate it on the two roles
    _run(micro_models, world, out, [], *SHORT)
    checks = [r for r in _log(out / "train_log.jsonl") if "stop_utility" in r]
    # (the micro model answers too little for a nonzero harmonic mean: the point is that the two roles score)
    assert len(checks) == 3 and all(isinstance(r["stop_utility"], float) for r in checks)
    with pytest.raises(DataError, match="world_facts_perturbed.*pass --stop_utility_tolerance 0"):
        stop_data("--stop_rule", "indistinguishable", "--stop_utility_tolerance", "0.2")
    for name in ("real_authors_perturbed", "retain_perturbed"):
        (world / f"{name}.json").unlink()
    caplog.clear()
    with caplog.at_level("WARNING", logger="llm_unlearn"):
        assert stop_data("--auto")["utility_rows"] is None
    assert "the utility guard is off" in caplog.text
    # ... and a run without any of them keeps its first regime to the end (it crashed at the end once).
    out = tmp_path / "run-no-utility"
    _run(micro_models, world, out, [], *SHORT)
    assert json.loads((out / "status.json").read_text())["state"] == "complete"
    assert not any("stop_utility" in r for r in _log(out / "train_log.jsonl"))
    assert not (out / "auto_fallback.json").exists()
    # The estimate over the roles present: the harmonic mean of their three numbers each.
    scores = SplitScores(
        answer_loss=np.array([0.5, 1.0]), perturbed_loss=[np.array([2.0, 3.0]), np.array([1.5])],
        rouge_l=np.array([0.8, 0.6]), paraphrased_loss=np.array([0.7, 1.2]),
    )  # fmt: skip
    metrics = tofu_metrics({"retain": scores})
    parts = [metrics[k]["value"] for k in ("retain_prob", "retain_rouge_l", "retain_truth_ratio")]
    assert metrics["model_utility"]["value"] == pytest.approx(model_utility(parts, partial=True))
    with pytest.raises(ValueError, match="needs 9 numbers"):  # the evaluation's model utility takes all nine
        model_utility(parts)
    assert metrics["model_utility"]["value"] == pytest.approx(3 / sum(1 / p for p in parts))
    assert list(metrics["model_utility"]["inputs"]) == ["retain_prob", "retain_rouge_l", "retain_truth_ratio"]


@pytest.mark.slow
def test_a_fallback_under_two_ranks_starts_both_again_from_the_original_weights(
    micro_models, micro_world, tmp_path
):
    """Every rank takes the alarm, drops its weights, replays the same first check and ends with the same
    weights as the one saved; the first attempt's records are archived once."""
    from llm_unlearn.models.loading import load_model
    from tests._two_ranks import run_two_ranks

    out = tmp_path / "run"
    run_two_ranks("_dist_fallback.py", str(micro_models["target"]), str(micro_world), str(out))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["sums"] == ranks[1]["sums"]
    timeless = [
        [{k: v for k, v in r.items() if k != "stop_seconds"} for r in rank["first"]] for rank in ranks
    ]
    assert timeless[0] == timeless[1]  # every rank took the same decisions on the same numbers
    assert ranks[0]["first"][0]["stop_replayed"] is True and ranks[0]["first"][0]["step"] == 0
    saved = {n: float(p.detach().double().sum()) for n, p in load_model(str(out)).named_parameters()}
    assert saved == pytest.approx(ranks[0]["sums"], rel=1e-6)
    mark = json.loads((out / auto.MARK_FILE).read_text())
    assert mark["at_step"] > 0 and mark["utility_drop"] == pytest.approx(0.4)
    first = _log(out / auto.FIRST_ATTEMPT_DIR / "train_log.jsonl")
    assert [r["stop_reason"] for r in first if "stop_reason" in r] == ["utility_alarm"]
    second = _log(out / "train_log.jsonl")
    assert [r for r in second if "auto_fallback" in r] == second[:1]
    assert json.loads((out / "status.json").read_text())["state"] == "complete"
    assert yaml.safe_load((out / "unlearn_config.yaml").read_text())["optim"] == "adamw_torch"
