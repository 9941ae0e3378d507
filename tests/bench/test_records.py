"""What records say about how they were made: the system prompt actually shown, every part of model
utility, and no machine-specific paths (`benchmarks/smollm2.json` and the script that writes it)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from llm_unlearn.core import auto as auto_fallback
from llm_unlearn.eval.tofu import system_prompt_used
from llm_unlearn.models.tiny import train_tokenizer

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import smollm2_report  # noqa: E402
import smollm2_tofu  # noqa: E402

# A ChatML template that, like SmolLM2's, inserts its own system message when none is given.
DEFAULT_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are Tiny, a test model.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["What did Ada write? She wrote novels."] * 4, vocab_size=120, min_frequency=1)


def test_system_prompt_used_reads_the_templates_default_the_given_one_or_none(tokenizer):
    assert system_prompt_used(tokenizer, "chat_template", None) is None  # the built-in template has none
    assert system_prompt_used(tokenizer, "chat_template", "Be brief.") == "Be brief."
    assert system_prompt_used(tokenizer, "qa", None) is None
    tokenizer.chat_template = DEFAULT_SYSTEM_TEMPLATE
    assert system_prompt_used(tokenizer, "chat_template", None) == "You are Tiny, a test model."
    assert system_prompt_used(tokenizer, "chat_template", "Be brief.") == "Be brief."


def test_a_record_holds_every_part_of_model_utility_and_the_system_prompt_used():
    parts = [f"{role}_{m}" for role in ("retain", "ra", "wf") for m in ("prob", "truth_ratio", "rouge_l")]
    assert set(parts) <= set(smollm2_tofu.KEYS)
    metrics = {k: {"value": 0.5} for k in smollm2_tofu.KEYS}
    result = {"metrics": metrics, "meta": {"system_prompt": None, "system_prompt_used": "Be kind."}}
    row = smollm2_tofu.record(result, model="m")
    assert row["system_prompt"] == "Be kind." and all(row[k] == 0.5 for k in parts)
    del metrics["retain_truth_ratio"]
    with pytest.raises(ValueError, match="retain_truth_ratio"):
        smollm2_tofu.record(result, model="m")


def test_commands_and_slices_hold_no_machine_specific_paths(tmp_path):
    assert smollm2_tofu._portable(REPO / "benchmarks" / "smollm2.json") == "benchmarks/smollm2.json"
    assert smollm2_tofu._portable(REPO.parent / "shared" / "data") == "../shared/data"
    assert smollm2_tofu._portable(tmp_path / "work") == ".../work"
    # The same argv before and after its --out exists: a resumed run records the same command.
    argv = ["--out", str(tmp_path / "out.json"), "--threads", "2", "--tofu_dir", str(REPO.parent / "shared")]
    before = smollm2_tofu._portable_argv(argv)
    (tmp_path / "out.json").write_text("[]")
    assert smollm2_tofu._portable_argv(argv) == before == [
        "--out", ".../out.json", "--threads", "2", "--tofu_dir", "../shared",
    ]  # fmt: skip


def test_committed_smollm2_rows_name_the_system_prompt_and_no_absolute_path():
    rows = json.loads((REPO / "benchmarks" / "smollm2.json").read_text())
    for row in rows:
        assert not any(a.startswith("/") for a in row["command"].split()), row["command"]
        if row["model"] == "check":  # a check of the protocol (precision, generation length), not a model
            continue
        assert row["system_prompt"], "SmolLM2's template inserts a default system prompt: record it"
        for key in smollm2_tofu.KEYS[1:]:
            assert key in row and (row[key] is not None or key in row.get("not_recorded", [])), key


def test_arms_by_label_carry_the_sam_radius_and_the_auto_settings():
    from argparse import Namespace

    args = Namespace(methods=("ngdiff+sam", "auto"), sam_rho=3.0)
    (sam, sam_settings), (auto, auto_settings) = smollm2_tofu.arms(args, smollm2_tofu.SIZES["cpu"])
    assert (sam, auto) == ("ngdiff+sam", "auto")
    assert sam_settings["sam_rho"] == 3.0 and sam_settings["method"] == "ngdiff"
    assert auto_settings["auto"] is True and auto_settings["stop_rule"] == "indistinguishable"
    # The GPU protocol runs every arm of issue 23, the preset's SAM arm with the radius given.
    gpu = dict(smollm2_tofu.arms(Namespace(methods=(), sam_rho=5.0), smollm2_tofu.SIZES["gpu"]))
    assert set(gpu) == set(smollm2_tofu.GPU_ARMS) and gpu["ngdiff+sam"]["sam_rho"] == 5.0
    assert smollm2_tofu.SIZES["gpu"].max_new_tokens == 200 and smollm2_tofu.SIZES["gpu"].bf16
    # An lr chosen on the CPU protocol reaches the GPU preset halved, and the model's recipe says the same.
    import yaml

    for arm, lr in smollm2_tofu.CPU_LR_CHOICE.items():
        assert gpu[arm]["learning_rate"] == lr / 2
        text = (REPO / "recipes" / "tofu" / f"smollm2_{arm.replace('+', '_')}.yaml").read_text()
        recipe = yaml.safe_load(text)
        assert recipe["learning_rate"] == lr / 2
        header = " ".join(line.lstrip("# ") for line in text.splitlines() if line.startswith("#"))
        # The header names the choice with its result.
        assert f"{lr:.0e}".replace("e-0", "e-") + " (FQ" in header
        assert recipe["method"] == smollm2_tofu.ARMS[arm]["method"]
        assert recipe.get("sam_rho", 0) > 0 if arm.endswith("+sam") else "sam_rho" not in recipe
    assert "learning_rate" not in gpu["ngdiff"]  # the preset's own, 5e-5 = recipes/tofu/smollm2_ngdiff.yaml's
    with pytest.raises(SystemExit, match="unknown arm"):
        smollm2_tofu.arms(Namespace(methods=("ngdif",), sam_rho=1.0), smollm2_tofu.SIZES["cpu"])


def test_two_chains_fine_tune_a_shared_model_once(tmp_path, monkeypatch):
    # Two seeds started together reach the target's fine-tune at once: the second waits and reuses it.
    import threading
    import time

    calls = []

    def fake_finetune(base, data_dir, split, out, sizes, seed):
        calls.append(split)
        time.sleep(0.3)  # long enough for the other chain to arrive while this one trains
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_seconds.json").write_text(json.dumps({"seconds": 12.5}))
        return 12.5

    monkeypatch.setattr(smollm2_tofu, "_finetune", fake_finetune)
    results = []
    chains = [
        threading.Thread(
            target=lambda: results.append(
                smollm2_tofu.finetune_stage("base", tmp_path, "full", tmp_path / "target", None, 0)
            )
        )
        for _ in range(2)
    ]
    for chain in chains:
        chain.start()
    for chain in chains:
        chain.join()
    assert calls == ["full"] and results == [12.5, 12.5]


def test_seeds_unlearn_one_target_in_their_own_folders():
    # Seed 0's folder keeps its name (records and probes already point at it); other seeds never reuse it.
    names = {smollm2_tofu.run_name("forget01", "ngdiff+sam", seed) for seed in (0, 1, 2)}
    assert smollm2_tofu.run_name("forget01", "ngdiff+sam", 0) == "forget01-ngdiff-sam"
    assert len(names) == 3
    assert smollm2_tofu.FINETUNE_SEED == 0  # target and reference are shared by every unlearning seed


def test_stop_summary_reads_the_rules_decision_and_nothing_without_one(tmp_path):
    assert smollm2_tofu.stop_summary(tmp_path) == {}  # a run without the stop rule (or not yet run)
    log = [
        {"step": 0, "stop_decision": "continue", "stop_seconds": 2.0, "stop_retain_recall": 1.0},
        {"step": 5, "loss": 0.1},
        {"step": 5, "stop_decision": "retain_recall_alarm", "stop_seconds": 1.5, "stop_retain_recall": 0.8},
        {"step": 5, "stop_reason": "retain_recall_alarm", "stop_best_step": 0, "stop_best_gap": 0.9},
    ]
    (tmp_path / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    summary = smollm2_tofu.stop_summary(tmp_path)
    assert summary["stop_reason"] == "retain_recall_alarm" and summary["stop_best_step"] == 0
    assert summary["check_s"] == 3.5 and summary["stop_checks"] == 2 and summary["steps"] == 5
    assert summary["stop_retain_recall"] == [1.0, 0.8]


def test_records_from_two_chains_at_once_are_all_kept(tmp_path):
    # Two one-thread chains (two seeds) share one records file; neither may drop the other's rows.
    import threading

    out = tmp_path / "records.json"
    rows = [
        dict(protocol="cpu", model="unlearned", method=m, split="forget01", seed=s)
        for m in "abcd"
        for s in (1, 2)
    ]
    threads = [threading.Thread(target=smollm2_tofu.append_records, args=(out, [r])) for r in rows]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(json.loads(out.read_text())) == len(rows)
    smollm2_tofu.append_records(out, [rows[0] | {"x": 1}])  # the same key replaces, not duplicates
    kept = json.loads(out.read_text())
    assert len(kept) == len(rows) and sum("x" in r for r in kept) == 1


def test_a_reused_stage_reports_the_hardware_it_was_measured_on(tmp_path):
    # A rerun with one thread that reuses a two-thread fine-tune must not relabel its seconds.
    assert smollm2_tofu.measured_on(tmp_path, "train_seconds.json") == {"hardware": "not recorded"}
    (tmp_path / "train_seconds.json").write_text(
        json.dumps({"seconds": 5.0, "hardware": "X, 2 torch threads"})
    )
    assert smollm2_tofu.measured_on(tmp_path, "train_seconds.json") == {"hardware": "X, 2 torch threads"}


def test_auto_arms_pass_their_knobs_after_auto_and_the_recipes_their_file():
    import importlib.util

    from llm_unlearn.cli.parse import parse_config

    spec = importlib.util.spec_from_file_location("auto_bench", REPO / "benchmarks" / "auto.py")
    auto_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(auto_bench)

    def config(arm):
        return parse_config([*auto_bench.arm_flags(arm), "--output_dir", "x"])[2]

    auto, rt1 = config("auto"), config("auto-repair-rare0-rt1")
    assert (auto.stop_repair, auto.forget_token_max_df, auto.stop_retain_tolerance) == (True, 0.0, 0.5)
    assert (auto.method, auto.stop_utility_tolerance, auto.auto_fallback) == ("npo", 0.2, True)
    assert (rt1.stop_repair, rt1.forget_token_max_df, rt1.stop_retain_tolerance) == (True, 0.0, 1.0)
    assert rt1.stop_rule == auto.stop_rule == "indistinguishable"
    assert auto_bench.arm_flags("ngdiff-timed") == [
        "--config",
        str(REPO / "recipes" / "world" / "ngdiff.yaml"),
    ]
    # Every diagnostic arm parses (a misspelt knob would end a long benchmark only when its turn came) to the
    # settings it was recorded with: those of its knobs over `--auto` as it was before the fallback (`auto-v5`).
    import dataclasses

    import llm_unlearn.cli.parse as parse

    before = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parse, "AUTO_SETTINGS", dict(smollm2_tofu.AUTO_V5_SETTINGS))
        for arm, knobs in auto_bench.ABLATIONS.items():
            before[arm] = parse_config(["--auto", *knobs, "--output_dir", "x"])[2]
    for arm in auto_bench.ABLATIONS:
        now = config(arm)
        assert not auto_fallback.fallback_applies(now), arm
        differ = [f.name for f in dataclasses.fields(now) if f.init and f.name != "auto_fallback"
                  and getattr(now, f.name) != getattr(before[arm], f.name)]  # fmt: skip
        assert not differ, (arm, differ)
    # The npo-recipe arm of the worlds is the SmolLM2 one (the same loss, optimizer and lr under --auto), and
    # --auto's second regime is that arm's settings (what it was measured with on SmolLM2).
    second = auto_fallback.fallback_config(auto)
    recipe = smollm2_tofu.ARMS["auto-repair-npo-recipe-ties"]
    assert {k: getattr(second, k) for k in recipe if k != "auto"} == {
        k: v for k, v in recipe.items() if k != "auto"
    }
    npo = config("auto-repair-rare0-npo-adam4")
    assert (npo.method, npo.optim, npo.learning_rate, npo.gen) == ("npo", "adamw_torch", 1e-4, False)
    assert (npo.stop_repair, npo.forget_token_max_df, npo.stop_rule) == (True, 0.0, "indistinguishable")
    for smollm2_arm, world_arm, keys in (
        ("auto-npo-adam", "auto-npo-adam4", ("method", "optim", "learning_rate", "gen")),
        ("auto-repair-npo-recipe", "auto-repair-npo-recipe4", ("method", "optim", "learning_rate", "gen",
         "stop_repair", "lr_scheduler_type", "num_train_epochs", "weight_decay")),
    ):  # fmt: skip
        smollm2, world = smollm2_tofu.ARMS[smollm2_arm], config(world_arm)
        assert {k: getattr(world, k) for k in keys} == {k: smollm2[k] for k in keys}
    assert config("auto-repair-npo-recipe4").lr_scheduler_type == "linear"
    # The third and fourth worlds are not in the default plan (the first two, main()): they check results
    # on worlds those were not chosen on, run by name only.
    names = list(auto_bench.worlds("default"))
    assert names == ["seed0-34authors", "seed1-50authors", "seed2-40authors", "seed3-44authors"]


def test_auto_report_reads_the_real_model_rows_and_their_goals(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("auto_bench", REPO / "benchmarks" / "auto.py")
    auto_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(auto_bench)
    records = tmp_path / "smollm2.json"
    assert auto_bench.real_model_lines(records) == []  # no records: no section
    common = dict(protocol="cpu", split="forget01", seed=0, train_s=100.0, hardware="X", max_new_tokens=200)
    target = dict(common, model="target", method="none", forget_quality=0.003, model_utility=0.4,
                  retain_rouge_l=1.0, forget_rouge_l=1.0)  # fmt: skip
    auto = dict(common, model="unlearned", method="auto", forget_quality=0.007, model_utility=0.38,
                retain_rouge_l=0.9, forget_rouge_l=0.6, stop_reason="retain_recall_alarm", stop_best_step=10,
                steps=15, check_s=40.0)  # fmt: skip
    ngdiff = dict(common, model="unlearned", method="ngdiff", forget_quality=0.5, model_utility=0.3,
                  retain_rouge_l=0.7, forget_rouge_l=0.3)  # fmt: skip
    records.write_text(json.dumps([target, auto, ngdiff]))
    text = "\n".join(auto_bench.real_model_lines(records))
    assert (
        "| auto | 0 | 0.007 | 0.95 | 0.90 | 0.60 | retain_recall_alarm | 10 / 15 | 100 | 40.0 | X |" in text
    )
    assert "| ngdiff | 0 | 0.5 | 0.75 | 0.70 | 0.30 | - | - | 100 | - | X |" in text
    assert "FQ >= 0.05 in 0 of 1 runs; retain ROUGE-L >= 0.8 x target's in 1 of 1" in text


def test_attainable_counts_runs_with_one_epoch_meeting_every_floor_at_once(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("auto_bench", REPO / "benchmarks" / "auto.py")
    auto_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(auto_bench)
    assert auto_bench._attainable([]) == []

    def run(arm, seed, *epochs):
        per_epoch = [
            dict(forget_quality=fq, retain_fact_recall=rec, model_utility=mu) for fq, rec, mu in epochs
        ]
        return dict(world="w", split="forget01", seed=seed, arm=arm, per_epoch=per_epoch,
                    target_retain_fact_recall=1.0, target_model_utility=1.0)  # fmt: skip

    runs = [
        # seed 0: graddiff meets FQ and recall only at different epochs (not attained); ngdiff attains at epoch 2
        run("graddiff", 0, (0.01, 0.95, 1.0), (0.2, 0.7, 1.0)),
        run("ngdiff", 0, (0.01, 0.95, 1.0), (0.06, 0.85, 0.9)),
        # seed 1: an epoch with FQ and recall but MU below the floor does not count
        run("graddiff", 1, (0.3, 0.9, 0.7)),
        run("ngdiff", 1, (0.04, 0.9, 1.0)),
        dict(world="w", split="forget01", seed=1, arm="auto", forget_quality=0.9),  # not a recipe: ignored
    ]
    (line,) = auto_bench._attainable(runs)
    assert "`graddiff` in 0 of 2 runs, `ngdiff` in 1 of 2 runs, either in 1 of 2" in line
    assert "by split: forget01 1 of 2, forget05 0 of 0, forget10 0 of 0" in line


def test_report_says_whether_the_token_cap_moved_rouge_beyond_the_tolerance(tmp_path):
    out = tmp_path / "smollm2.json"
    row = dict(protocol="cpu", split="forget01", seed=0, hardware="X", train_s=1.0, eval_s=1.0, model="target", max_new_tokens=200,
               method="none", forget_quality=0.5, **{k: 0.5 for k in smollm2_tofu.KEYS[1:]})  # fmt: skip
    check = dict(model="check", method="token-cap-64-vs-200", arm="ngdiff", split="forget01", protocol="cpu", seed=0,
                 hardware="X", cap=64, moves={"forget_rouge_l": 0.004, "ra_rouge_l": -0.02}, max_abs_move=0.02,
                 tolerance=0.01, passed=False)  # fmt: skip
    out.write_text(json.dumps([row, check]))
    smollm2_report.write_report(out)
    text = out.with_suffix(".md").read_text()
    assert "ROUGE-L moves: forget_rouge_l +0.004, ra_rouge_l -0.020; largest 0.020: **beyond**" in text
    assert "| target | 1 |" in text  # the check is not a model row


def test_an_evaluation_cached_at_another_generation_length_is_redone(tmp_path, monkeypatch):
    import dataclasses

    import llm_unlearn.pipeline.evaluate as evaluate

    calls = []

    def fake_evaluate(model_path, data, ev):
        calls.append(ev.max_new_tokens)
        return {"metrics": {}, "meta": {"generation": {"max_new_tokens": ev.max_new_tokens}}}

    monkeypatch.setattr(evaluate, "evaluate_path", fake_evaluate)
    sizes = dataclasses.replace(smollm2_tofu.SIZES["cpu"], max_new_tokens=200)
    out = tmp_path / "eval.json"
    out.write_text(json.dumps({"metrics": {}, "meta": {"generation": {"max_new_tokens": 64}}}))
    result = smollm2_tofu.eval_stage("m", tmp_path, "forget01", out, sizes)
    assert calls == [200] and smollm2_tofu.generated_tokens(result) == 200
    smollm2_tofu.eval_stage("m", tmp_path, "forget01", out, sizes)  # cached at the right length: reused
    assert calls == [200]
    assert smollm2_tofu.generated_tokens(json.loads(out.read_text())) == 200


def test_a_probe_missing_from_the_cached_file_runs_alone_and_joins_the_row(tmp_path, monkeypatch):
    # ngdiff was relearn-probed at 64 tokens; asking for quant later must run quant only, keep the cached
    # relearn numbers, and label each probe with the generation length it actually used.

    import llm_unlearn.probes.run as probe_run

    def point(value, **key):
        return key | {"metrics": {"forget_rouge_l": {"value": value}}}

    relearn = {"recovery": [{"budget": 10, "forget_rouge_l": {"value": 0.07}}],
               "unlearned": [point(0.3, budget=10)], "reference": [point(0.2, budget=10)]}  # fmt: skip
    cached = {"relearn": relearn, "meta": {"wall_s": 100.0, "eval_settings": {"max_new_tokens": 64}}}
    (tmp_path / "probe.json").write_text(json.dumps(cached))
    calls = []

    def fake_run_probes(run_dir, *, probes, out, **kwargs):
        calls.append(tuple(probes))
        assert kwargs["eval_settings"].max_new_tokens == 200
        return {"quant": {"recovery": [{"bits": "4", "forget_rouge_l": {"value": 0.19}}],
                          "unlearned": {"4": {"metrics": {"forget_rouge_l": {"value": 0.5}}}}},
                "meta": {"eval_settings": {"max_new_tokens": 200}}}  # fmt: skip

    monkeypatch.setattr(probe_run, "run_probes", fake_run_probes)
    sizes = types.SimpleNamespace(eval_batch_size=4, max_new_tokens=200)
    args = types.SimpleNamespace(probes=("relearn", "quant"), budgets=(10,))
    probe = smollm2_tofu.probe_stage
    fields = probe(tmp_path, tmp_path, tmp_path, tmp_path, "forget01", sizes, args, {}, ("relearn", "quant"))
    assert calls == [("quant",)] and (tmp_path / "probe-quant.json").is_file()
    assert fields["relearn_recovery"] == {"10": {"forget_rouge_l": 0.07}}
    assert fields["quant_recovery"] == {"4": {"forget_rouge_l": 0.19}}
    assert fields["probe_max_new_tokens"] == 64 and fields["quant_max_new_tokens"] == 200
    assert "200 tokens" in smollm2_report._probe_name({"seed": 0, "method": "ngdiff", "model": "unlearned"} | fields,
                                                    "quant_max_new_tokens")  # fmt: skip
    # Both files now cached: nothing runs again, and a rerun that does not ask for probes keeps both.
    assert (
        probe(tmp_path, tmp_path, tmp_path, tmp_path, "forget01", sizes, args, {}, ("relearn", "quant"))
        == fields
    )
    assert probe(tmp_path, tmp_path, tmp_path, tmp_path, "forget01", sizes, args, {}) == fields
    assert calls == [("quant",)]


def test_an_lr_tried_on_seed_0_is_its_own_arm_and_the_choice_follows_the_fixed_rule():
    assert smollm2_tofu.arm_lr("ngdiff") == ("ngdiff", None)
    assert smollm2_tofu.arm_lr("ngdiff+gen@3e-5") == ("ngdiff+gen", 3e-5)
    assert smollm2_tofu.run_name("forget01", "ngdiff@3e-5", 0) == "forget01-ngdiff-lr3e-5"
    for bad in ("ngdiff@fast", "ngdiff@0", "ngdiff@2"):
        with pytest.raises(SystemExit, match="learning rate"):
            smollm2_tofu.arm_lr(bad)
    args = types.SimpleNamespace(methods=("npo@3e-4", "ngdiff", "ngdiff+sam@3e-5"), sam_rho=0.07)
    (label, settings), (_, plain), (_, sam) = smollm2_tofu.arms(args, smollm2_tofu.SIZES["cpu"])
    assert label == "npo@3e-4" and settings["learning_rate"] == 3e-4 and "learning_rate" not in plain
    assert sam["learning_rate"] == 3e-5 and sam["sam_rho"] == 0.07  # an lr on a SAM arm keeps its rho

    common = dict(protocol="cpu", split="forget01", max_new_tokens=200, seed=0)
    target = dict(common, model="target", method="none", model_utility=1.0, forget_quality=0.001)

    def run(method, fq, mu, seed=0, **settings):
        return dict(common, model="unlearned", method=method, forget_quality=fq, model_utility=mu, seed=seed,
                    settings=settings, forget_rouge_l=0.4, retain_rouge_l=0.9, train_s=1.0)  # fmt: skip

    rows = [
        target,
        run("ngdiff", 0.165, 0.85),  # the preset's lr 1e-4
        run("ngdiff@3e-4", 0.9, 0.7, learning_rate=3e-4),  # more forgetting, but MU below 0.8 x: not eligible
        run("ngdiff@3e-5", 0.165, 0.95, learning_rate=3e-5),  # ties 1e-4's FQ with more MU: chosen
        run("npo", 0.5, 0.5), run("npo@3e-5", 0.1, 0.6, learning_rate=3e-5),  # none eligible: highest MU
        run("rmu", 0.2, 0.9),  # one lr only: no choice to report
        run("ngdiff@1e-5", 0.99, 0.99, seed=1, learning_rate=1e-5),  # another seed: not part of the choice
    ]  # fmt: skip
    choice = smollm2_report.lr_choice(rows)
    assert set(choice) == {"ngdiff", "npo"}
    assert choice["ngdiff"][0] == "ngdiff@3e-5" and choice["npo"][0] == "npo@3e-5"
    assert [smollm2_report.row_lr(r) for r in choice["ngdiff"][1]] == [3e-5, 1e-4, 3e-4]
    assert "| ngdiff | 3e-05 * | 0.165 | 0.950 |" in "\n".join(smollm2_report._lr_lines(rows))


def test_the_plot_draws_each_probed_arms_relearning_curve(tmp_path):
    rec = {"10": {"forget_prob": 0.46, "forget_rouge_l": 0.07}, "0": {"forget_prob": -0.1, "forget_rouge_l": None},
           "100": {"forget_prob": 0.9, "forget_rouge_l": 0.5}}  # fmt: skip
    probed = dict(model="unlearned", method="ngdiff", seed=0, relearn_recovery=rec)
    assert smollm2_report.relearn_curve(probed) == ([0, 10, 100], [-0.1, 0.46, 0.9])
    assert smollm2_report.relearn_curve(probed, "forget_rouge_l") == (
        [10, 100],
        [0.07, 0.5],
    )  # unrecorded: left out
    common = dict(protocol="cpu", split="forget01", hardware="X", train_s=1.0, eval_s=1.0, max_new_tokens=200,
                  forget_quality=0.5, **{k: 0.5 for k in smollm2_tofu.KEYS[1:]})  # fmt: skip
    out = tmp_path / "smollm2.json"
    out.write_text(json.dumps([dict(common, model="target", method="none", seed=0), dict(common, **probed)]))
    smollm2_report.write_report(out)
    assert out.with_suffix(".png").stat().st_size > 0
    text = out.with_suffix(".md").read_text()
    assert (
        "| ngdiff (seed 0, probed at 64 tokens) | n/a / -0.10 | +0.07 / +0.46 | +0.50 / +0.90 | 0 |" in text
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    smollm2_report._relearn_curves(
        ax, [dict(common, **probed), dict(common, model="target", method="none", seed=0)], "t"
    )
    curves = [
        line for line in ax.get_lines() if len(line.get_xdata()) > 2 or line.get_label().startswith("  ")
    ]
    assert [list(line.get_xdata()) for line in curves] == [[0, 10, 100], [10, 100]]  # probability, ROUGE-L
    plt.close(fig)


@pytest.mark.parametrize("preset, split, authors, retain_split", [
    ("cpu", "forget01", [198, 199], "retain99"),
    ("cpu05", "forget05", list(range(190, 200)), "retain95"),
])  # fmt: skip
def test_slices_hold_tofus_own_forget_authors_and_their_pairs(tofu_dir, tmp_path, preset, split, authors,
                                                              retain_split):  # fmt: skip
    sizes = smollm2_tofu.SIZES[preset]
    out = smollm2_tofu.write_slice(tofu_dir, tmp_path / "data", sizes)
    meta = json.loads((out / "SLICE.json").read_text())
    assert meta["forget_authors"] == authors and meta["retain_authors"] == [0, 1, 2]
    rows = {p.stem: smollm2_tofu._rows(p) for p in out.glob("*.json") if p.stem != "SLICE"}
    tofu_forget = smollm2_tofu._rows(tofu_dir / f"{split}.json")
    # The slice's forget set is TOFU's forget split itself (its authors are TOFU's last ones).
    assert [r["question"] for r in rows[split]] == [r["question"] for r in tofu_forget]
    assert [r["question"] for r in rows[f"{split}_perturbed"]] == [r["question"] for r in tofu_forget]
    assert len(rows[retain_split]) == 3 * smollm2_tofu.AUTHOR_QUESTIONS
    assert rows["full"] == rows[retain_split] + rows[split]
    assert not {r["question"] for r in rows[retain_split]} & {r["question"] for r in rows[split]}
    holdout = split.replace("forget", "holdout")
    assert len(rows[holdout]) == len(rows[split])  # as many unseen authors' questions as forget questions
    assert {r["question"] for r in rows["retain_perturbed"]} == {r["question"] for r in rows[retain_split]}
    # TOFU's whole retain split beside the slice (what `--forget_token_df_split` counts on; never trained on):
    # every retain question of the slice and none of the forget set's; a slice written before it gets it too.
    everything = rows[f"{retain_split}_all"]
    assert everything == smollm2_tofu._rows(tofu_dir / f"{retain_split}.json")
    assert not {r["question"] for r in everything} & {r["question"] for r in rows[split]}
    assert {r["question"] for r in rows[retain_split]} <= {r["question"] for r in everything}
    (out / f"{retain_split}_all.json").unlink()
    smollm2_tofu.write_slice(tofu_dir, out, sizes)
    assert smollm2_tofu._rows(out / f"{retain_split}_all.json") == everything
    assert not list(out.glob("*.tmp"))


def test_time_estimates_a_chain_from_the_step_time_and_the_recorded_throughput(tofu_dir, tmp_path):
    records = tmp_path / "records.json"
    row = {"protocol": "cpu", "max_new_tokens": 200}
    records.write_text(json.dumps([row | {"eval_questions_per_s": 0.5}, row | {"eval_questions_per_s": 2.0},
                                   row | {"eval_questions_per_s": 1.0}, {"protocol": "cpu", "max_new_tokens": 64,
                                                                         "eval_questions_per_s": 50.0}]))  # fmt: skip
    one = smollm2_tofu.estimate(smollm2_tofu.SIZES["cpu"], tofu_dir, 2.0, records)
    five = smollm2_tofu.estimate(smollm2_tofu.SIZES["cpu05"], tofu_dir, 2.0, records)
    assert one["eval_questions_per_s"] == 1.0  # the median at 200 tokens; the 64-token row is not one of them
    assert (one["forget_questions"], five["forget_questions"]) == (40, 200)
    assert (one["unlearning_steps"], five["unlearning_steps"]) == (25, 125)  # batch 8, 5 epochs
    assert five["unlearn_s"] == 125 * 2 * 2.0
    assert five["eval_s"] - one["eval_s"] == 160  # 160 more forget questions at one per second
    assert five["target_finetune_s"] == (260 // 8 + 1) * 6 * 2.0
    with pytest.raises(SystemExit, match="no CPU-protocol evaluation"):
        smollm2_tofu.estimate(smollm2_tofu.SIZES["cpu"], tofu_dir, 2.0, tmp_path / "none.json")


def test_report_sums_each_rows_training_evaluation_and_probe_time_once():
    rows = [
        {"train_s": 3600.0, "eval_s": 1800.0, "probe_s": 1800.0},
        {"train_s": 0.0, "eval_s": None},  # a reused evaluation records no seconds
        {"train_s": 1800.0, "eval_s": 0.0, "probe_s": None},
    ]
    assert smollm2_report._hours(rows) == pytest.approx(2.5)


def test_a_re_emitted_row_keeps_the_command_that_produced_it(tmp_path):
    path = tmp_path / "records.json"
    row = dict(protocol="cpu", model="target", method="none", split="forget01", seed=0, forget_quality=0.1)
    smollm2_tofu.append_records(path, [row | {"command": "first"}])
    # Re-emitted by a later chain from the cached stage: same numbers, so the stored row (and command) stays.
    smollm2_tofu.append_records(path, [row | {"command": "second"}])
    assert [r["command"] for r in json.loads(path.read_text())] == ["first"]
    # A row whose numbers changed replaces it, with its own command.
    smollm2_tofu.append_records(path, [row | {"forget_quality": 0.2, "command": "third"}])
    assert [(r["command"], r["forget_quality"]) for r in json.loads(path.read_text())] == [("third", 0.2)]
