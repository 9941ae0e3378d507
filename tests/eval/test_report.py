"""`llm-unlearn report`: folders of runs, every figure, collateral damage, ROC areas, clear errors. `pytest tests/test_report.py`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg

from llm_unlearn.cli import main
from llm_unlearn.eval.mia import auc
from llm_unlearn.eval.plots import fq_vs_mu_figure, roc_curve
from llm_unlearn.eval.report import collateral_damage
from llm_unlearn.runs.folder import write_status

DIRECTIONS = {"forget": "lower", "retain": "higher", "ra": "higher", "wf": "higher"}


def fake_eval(model: str, seed: int, **values: float) -> dict:
    """An eval.json with every metric the report reads; `values` overrides chosen metric values."""
    rng = np.random.default_rng(seed)
    metrics: dict = {}
    for role, direction in DIRECTIONS.items():
        for m in ("prob", "rouge_l", "truth_ratio", "fact_recall"):
            metrics[f"{role}_{m}"] = {"value": float(rng.uniform(0.2, 0.9)), "direction": direction}
    metrics["forget_truth_ratio"]["direction"] = "closer_to_reference"
    metrics["model_utility"] = {"value": float(rng.uniform(0.4, 0.8)), "direction": "higher"}
    metrics["forget_quality"] = {"value": 0.01, "direction": "higher"}
    for attack in ("loss", "zlib", "min_k", "min_k_plus_plus"):
        forget, holdout = rng.normal(0, 1, 20), rng.normal(1, 1, 20)
        metrics[f"mia_auc_{attack}"] = {"value": auc(forget, holdout), "direction": "closer_to_0.5",
                                        "per_sample_forget": forget.tolist(), "per_sample_holdout": holdout.tolist()}  # fmt: skip
    metrics["privleak"] = {"value": -42.0, "direction": "closer_to_0", "reference_auc_min_k": 0.6}
    for name, value in values.items():
        metrics[name]["value"] = value
    gens = {
        role: [{"question": f"Q{i}?", "answer": "A.", "generated": "B."} for i in range(3)]
        for role in DIRECTIONS
    }
    meta = {"model": model, "forget_split": "forget10_perturbed", "truth_ratio_variant": "geometric",
            "prompt_format": "chat_template"}  # fmt: skip
    return {"schema_version": 1, "metrics": metrics, "losses": {}, "generations": gens, "meta": meta}


def fake_probe(run=None) -> dict:
    """A probe.json; of the weights in `run` (the report shows a run's probe only when it probed them)."""

    def metrics(v: float) -> dict:
        return {m: {"value": v, "direction": "lower"} for m in ("forget_prob", "forget_rouge_l")}

    curve = [{"budget": b, "metrics": metrics(0.1 + b / 100)} for b in (0, 10, 25)]
    section = {
        "unlearned": curve,
        "reference": [{**p, "metrics": metrics(0.1)} for p in curve],
        "original": metrics(0.5),
    }
    quant = {who: {bits: {"metrics": metrics(v)} for bits in ("32", "8", "4")}
             for who, v in (("unlearned", 0.2), ("original", 0.5), ("reference", 0.1))}  # fmt: skip
    return {"schema_version": 1, "relearn": section, "piggyback": section, "quant": quant,
            "directions": {"forget_prob": "lower", "forget_rouge_l": "lower"},
            "meta": {"models": {"unlearned": str(run)}}}  # fmt: skip


def train_log() -> str:
    rows = [{"step": s, "epoch": s / 4, "loss": 1.0 / s, "loss_forget": -s, "loss_retain": 1.0, "grad_norm": 1.0,
             "grad_norm_forget": 2.0, "grad_norm_retain": 0.5, "cos_forget_retain": -0.3, "learning_rate": 0.1}
            for s in range(1, 9)]  # fmt: skip
    rows += [{"step": s, "gen_lr": 0.1, "gen_eta_star": 0.2 if s % 4 else -1.0, "gen_accepted": float(s % 4 != 0),
              "gen_acceptance_rate": 0.5} for s in (2, 4, 6, 8)]  # fmt: skip
    rows.append({"step": 8, "train_loss": 0.3, "train_runtime": 1.0})
    return "\n".join(json.dumps(r) for r in rows) + "\n"


def _drop_figure_inputs(root) -> None:
    """Keep only eval.json files, for tests about which runs are read (figures cost seconds)."""
    for name in ("graddiff", "ngdiff"):
        (root / name / "train_log.jsonl").unlink()
    (root / "ngdiff" / "probe.json").unlink()


@pytest.fixture()
def runs(tmp_path):
    """A demo-like folder: target/ and retain/ (eval.json only), graddiff/ and ngdiff/ (complete runs)."""
    root = tmp_path / "runs"
    target = str(tmp_path / "models" / "target")
    evals = {
        "target": fake_eval(target, 0, retain_fact_recall=0.96, retain_prob=0.8, model_utility=0.6),
        "retain": fake_eval("retain", 1),
        "graddiff": fake_eval("graddiff", 2, retain_fact_recall=0.672, retain_prob=0.4, model_utility=0.564),
        "ngdiff": fake_eval("ngdiff", 3),
    }
    # Same forget quality and model utility: the two used to be labelled on top of each other.
    for name in ("graddiff", "ngdiff"):
        evals[name]["metrics"]["forget_quality"]["value"] = 0.2
        evals[name]["metrics"]["model_utility"]["value"] = 0.564
        evals[name]["meta"]["forget_quality_reference"] = {"model": "retain", "path": "<in-memory eval dict>"}
    for name, result in evals.items():
        (root / name).mkdir(parents=True)
        (root / name / "eval.json").write_text(json.dumps(result))
        if name in ("graddiff", "ngdiff"):
            write_status(root / name, "complete")
            config = {"model_name_or_path": target, "method": name, "learning_rate": 1e-4, "max_steps": 8}
            (root / name / "unlearn_config.yaml").write_text(yaml.safe_dump(config))
            (root / name / "train_log.jsonl").write_text(train_log())
    (root / "ngdiff" / "probe.json").write_text(json.dumps(fake_probe(root / "ngdiff")))
    return root


def test_report_of_a_folder_draws_every_figure_and_states_the_collateral_damage(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "| metric | better | retain | target | graddiff | ngdiff |" in text
    assert "| privleak | closer to 0 | -42.00 |" in text and "| mia_auc_min_k | closer to 0.5 |" in text
    # target was found as the eval of the model the runs started from (their unlearn_config.yaml)
    assert "Against **target**, the model before unlearning (the eval of" in text
    line = next(x for x in text.splitlines() if x.startswith("- **graddiff**: retain fact recall"))
    assert "retain fact recall 0.672 vs 0.960 (70% of the target's)" in line
    assert "retain probability 0.400 vs 0.800 (50% of the target's)" in line
    assert line.endswith("; model utility 94% of the target's")
    assert "- **ngdiff**: retain fact recall" in text
    assert (
        "- **retain**: retain fact recall" not in text
    )  # the runs' reference was never unlearned: no damage
    assert "unlearning: method graddiff, learning_rate 0.0001, max_steps 8" in text
    for png in (
        "fq_vs_mu",
        "split_metrics",
        "mia_roc",
        "probe_ngdiff",
        "quant_ngdiff",
        "train_graddiff",
        "train_ngdiff",
    ):
        assert f"({png}.png)" in text and (out / f"{png}.png").stat().st_size > 10_000, png
    assert not (out / "probe_graddiff.png").exists()
    assert f"wrote {out / 'report.md'}" in capsys.readouterr().out
    assert "probe_comparison.png" not in text  # one probed run: nothing to compare


def test_a_report_is_written_whole_or_not_at_all_and_one_at_a_time_per_folder(runs, tmp_path, monkeypatch):
    """Killed while plotting: the previous report stays as it was. Rewritten with fewer figures: the ones it
    no longer shows go, other files stay. A second report into a locked folder waits for the first."""
    import threading

    from llm_unlearn.eval import plots, report

    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    (out / "mine.png").write_bytes(b"not the report's")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"train_graddiff.png", "probe_ngdiff.png", "report.md"} <= set(before)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(plots, "mia_roc", killed)  # after fq_vs_mu and split_bars have drawn theirs
        with pytest.raises(KeyboardInterrupt):
            report.report_runs([str(runs / "target"), str(runs / "graddiff")], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing new, no staging folder left

    (out / ".report-killed").mkdir()  # what SIGKILL leaves (no `finally` runs): the next report clears it
    (out / ".report-killed" / "fq_vs_mu.png").write_bytes(b"half")
    report.report_runs([str(runs / "target"), str(runs / "graddiff")], out)
    assert not list(out.glob(".report-*"))
    text = (out / "report.md").read_text()
    assert "(train_graddiff.png)" in text and "probe_ngdiff.png" not in text
    left = {p.name for p in out.iterdir()}
    assert "probe_ngdiff.png" not in left and "train_ngdiff.png" not in left and "mine.png" in left
    assert all((out / name).is_file() for name in report.FIGURE_LINK.findall(text))

    done = threading.Event()
    with report._locked_dir(out):
        writer = threading.Thread(target=lambda: (report.report_runs([str(runs)], out), done.set()))
        writer.start()
        assert not done.wait(1.0)  # waits for the lock
        assert (out / "report.md").read_text() == text
    writer.join(60)
    assert done.is_set() and "(train_ngdiff.png)" in (out / "report.md").read_text()


def test_two_probed_runs_are_drawn_side_by_side_on_one_axis(runs, tmp_path, monkeypatch, caplog):
    """A method with and without a remedy: both probe.json files in one comparison figure."""
    import matplotlib

    matplotlib.use("Agg")
    from llm_unlearn.eval import plots

    other = fake_probe(runs / "graddiff")
    for point in other["relearn"]["unlearned"]:
        for metric in point["metrics"].values():
            metric["value"] = metric["value"] / 2  # a run whose forgetting comes back half as much
    (runs / "graddiff" / "probe.json").write_text(json.dumps(other))
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "(probe_comparison.png)" in text and (out / "probe_comparison.png").stat().st_size > 10_000
    # A probe of other weights (`probe OTHER --out RUN/probe.json`) is not this run's: left out, and said.
    (runs / "graddiff" / "probe.json").write_text(json.dumps(fake_probe(runs / "ngdiff")))
    assert main(["report", str(runs), "--out", str(tmp_path / "report2")]) == 0
    assert "probed other weights" in caplog.text
    text = (tmp_path / "report2" / "report.md").read_text()
    assert "probe_comparison.png" not in text and "probe_graddiff.png" not in text
    # the figure holds one line per run plus the reference, in each panel
    figures = []
    make = plots._figure
    monkeypatch.setattr(plots, "_figure", lambda *a, **k: figures.append(make(*a, **k)) or figures[-1])
    assert plots.probe_comparison({"a": other, "b": fake_probe()}, tmp_path / "c.png")
    axes = [ax for ax in figures[0].axes if ax.get_lines()]
    assert axes and all(len(ax.get_lines()) == 3 for ax in axes)
    assert {line.get_label() for line in axes[0].get_lines()} == {"a", "b", "retain-only reference, probed"}
    assert not plots.probe_comparison({"a": other}, tmp_path / "d.png")  # one run: nothing to compare


def test_models_at_the_same_point_are_named_in_a_legend_beside_the_axes_not_in_labels():
    same = fake_eval("a", 0)
    fig = fq_vs_mu_figure({"graddiff": same, "ngdiff": same, "target": fake_eval("t", 1)})
    FigureCanvasAgg(fig).draw()
    (ax,) = fig.axes
    assert len(ax.texts) == 0  # no annotations that could overlap
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["graddiff", "ngdiff", "target"]
    renderer = fig.canvas.get_renderer()
    box, axes_box = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert box.x0 >= axes_box.x1  # the legend lies to the right of the plot, inside the figure
    assert box.x1 <= fig.bbox.x1 and box.y0 >= fig.bbox.y0


def test_roc_curve_runs_corner_to_corner_and_its_area_is_the_membership_auc():
    rng = np.random.default_rng(0)
    members, nonmembers = (
        rng.integers(0, 6, 30).astype(float),
        rng.integers(2, 9, 25).astype(float),
    )  # many ties
    fpr, tpr = roc_curve(members, nonmembers)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(auc(members, nonmembers), abs=1e-12)


def test_collateral_damage_reads_shares_of_the_target_and_skips_missing_metrics():
    target = fake_eval("t", 0, retain_fact_recall=0.5, retain_prob=0.0, retain_rouge_l=0.4, model_utility=0.5)
    model = fake_eval(
        "m", 1, retain_fact_recall=0.25, retain_prob=0.1, retain_rouge_l=0.4, model_utility=0.45
    )
    assert collateral_damage(model, target) == (
        "retain fact recall 0.250 vs 0.500 (50% of the target's), retain probability 0.100 vs 0.000 "
        "(the target has 0), retain ROUGE-L 0.400 vs 0.400 (100% of the target's); model utility 90% of the target's"
    )
    for name in ("retain_fact_recall", "retain_prob", "retain_rouge_l"):
        del model["metrics"][name]
    assert collateral_damage(model, target) is None


def test_target_eval_given_on_the_command_line_and_a_report_without_any_target(runs, tmp_path):
    _drop_figure_inputs(runs)
    out = tmp_path / "one"
    assert (
        main(["report", str(runs / "ngdiff"), "--out", str(out), "--target_eval", str(runs / "target")]) == 0
    )
    text = (out / "report.md").read_text()
    assert "| metric | better | target | ngdiff |" in text and "(--target_eval " in text
    assert "- **ngdiff**: retain fact recall" in text
    (runs / "ngdiff" / "unlearn_config.yaml").unlink()
    assert main(["report", str(runs / "ngdiff"), "--out", str(tmp_path / "two")]) == 0
    assert "No eval of the original (target) model was found" in (tmp_path / "two" / "report.md").read_text()


def test_unfinished_runs_in_a_folder_are_left_out_and_named(runs, tmp_path):
    _drop_figure_inputs(runs)
    write_status(runs / "graddiff", "failed", error="loss is nan at step 3")
    (runs / "half").mkdir()
    write_status(runs / "half", "complete")  # finished, never evaluated
    assert main(["report", str(runs), "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    assert "| metric | better | retain | target | ngdiff |" in text
    assert "left out (not complete or not evaluated):" in text and "loss is nan at step 3" in text
    assert "half has no eval.json" in text


def _write(path, text):
    path.write_text(text)
    return path.parent


BROKEN = {
    "missing": (lambda r: r / "nowhere", "does not exist; pass a folder holding an eval.json"),
    "no-runs": (lambda r: (r / "empty").mkdir() or r / "empty", "holds no eval.json and no run directories"),
    "failed": (lambda r: write_status(r / "graddiff", "failed", error="disk full") or r / "graddiff", "is failed: disk full"),
    "not-evaluated": (lambda r: (r / "graddiff" / "eval.json").unlink() or r / "graddiff", "has no eval.json; evaluate it first"),
    "damaged-log": (lambda r: _write(r / "ngdiff" / "train_log.jsonl", '{"step": 1}\n{"step": 2, "lo\n'),
                    "train_log.jsonl line 2 is not JSON"),
    "bad-probe": (lambda r: _write(r / "ngdiff" / "probe.json", "{}"), "is not a probe.json"),
    "bad-eval": (lambda r: _write(r / "retain" / "eval.json", "{"), "is not valid JSON"),
}  # fmt: skip


@pytest.mark.parametrize("case", BROKEN)
def test_a_missing_or_incomplete_run_gets_one_clear_line(runs, tmp_path, capsys, case):
    setup, message = BROKEN[case]
    path = setup(runs)
    assert main(["report", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "r" / "report.md").exists()


def test_training_curves_draw_the_stop_rule_trajectory_when_the_log_has_one(tmp_path):
    from llm_unlearn.eval.plots import training_curves

    log = [{"step": s, "loss": 1.0 - s / 10, "learning_rate": 0.1} for s in range(1, 7)]
    log += [
        {"step": s, "stop_statistic": "auc", "stop_gap": 0.5 - s / 10, "stop_gap_trained": 0.5 - s / 9,
         "stop_gap_heldout": 0.5 - s / 12, "stop_retain_rise": s / 100, "stop_decision": "continue"}
        for s in (0, 3, 6)
    ]  # fmt: skip
    log.append({"step": 6, "stop_reason": "max_steps", "stop_best_step": 6, "stop_best_gap": -0.1})
    panels = training_curves(log, tmp_path / "train.png", "run")
    assert "stop rule: forget vs holdout" in panels and (tmp_path / "train.png").stat().st_size > 0
    assert "stop rule: forget vs holdout" not in training_curves(log[:6], tmp_path / "t2.png", "run")


def test_training_curves_draw_screened_checks_and_the_utility_drop(tmp_path):
    from llm_unlearn.eval.plots import training_curves

    # Screened checks have no truth-ratio gap (None); the utility guard adds its drop.
    log = [{"step": s, "loss": 1.0 - s / 10, "learning_rate": 0.1} for s in range(1, 10)]
    log += [
        {"step": s, "stop_statistic": "truth_ratio", "stop_gap": gap, "stop_gap_trained": gap, "stop_gap_heldout": gap,
         "stop_gap_loss_auc": 0.5 - s / 10, "stop_screened": gap is None, "stop_retain_rise": s / 100,
         "stop_utility_drop": s / 50, "stop_decision": "continue"}
        for s, gap in ((0, 0.8), (3, None), (6, 0.2), (9, -0.1))
    ]  # fmt: skip
    log.append({"step": 9, "stop_reason": "crossed", "stop_best_step": 6, "stop_best_gap": 0.2})
    panels = training_curves(log, tmp_path / "train.png", "run")
    assert "stop rule: forget vs holdout" in panels and (tmp_path / "train.png").stat().st_size > 0


def test_training_curves_draw_the_repair_after_the_unlearning(tmp_path):
    from llm_unlearn.eval.plots import training_curves

    # --stop_repair's records (stop_phase "repair") come after the unlearning's and carry no retain rise.
    log = [{"step": s, "loss": 1.0 - s / 10, "learning_rate": 0.1} for s in range(1, 7)]
    log += [
        {"step": s, "stop_statistic": "truth_ratio", "stop_gap": 0.5 - s / 10, "stop_gap_trained": 0.5 - s / 10,
         "stop_retain_rise": s / 100, "stop_retain_recall": 0.9 if s == 0 else None, "stop_decision": d}
        for s, d in ((0, "continue"), (3, "continue"), (6, "crossed"))
    ]  # fmt: skip
    log += [
        {"step": 6 + k, "stop_phase": "repair", "stop_repair_steps": k, "stop_retain_recall": r,
         "stop_decision": "repaired" if r >= 0.81 else "repair"}
        for k, r in ((0, 0.5), (5, 0.7), (10, 0.85))
    ]  # fmt: skip
    log.append({"step": 16, "stop_phase": "repair", "stop_statistic": "truth_ratio", "stop_gap": 0.1,
                "stop_gap_trained": 0.1, "stop_retain_recall": 0.85, "stop_decision": "repaired"})  # fmt: skip
    log.append(
        {
            "step": 16,
            "stop_reason": "crossed",
            "stop_repair_steps": 10,
            "stop_best_step": 6,
            "stop_best_gap": -0.1,
        }
    )
    panels = training_curves(log, tmp_path / "train.png", "run")
    assert "stop rule: forget vs holdout" in panels and (tmp_path / "train.png").stat().st_size > 0


def test_report_names_paths_relative_to_its_folder_and_the_reference_by_its_model(
    runs, tmp_path, monkeypatch
):
    _drop_figure_inputs(runs)
    monkeypatch.setenv("HOME", "/home/ann")  # the reference model is in the built-in world's cache there
    reference_model = "/home/ann/.cache/llm_unlearn/world-default-0123456789abcdef/retain-forget10"
    for name in ("retain", "graddiff", "ngdiff"):
        result = json.loads((runs / name / "eval.json").read_text())
        # The reference's own eval.json got its forget quality from a dict in memory (as the demo does).
        path = "<in-memory eval dict>" if name == "retain" else str(runs / "retain" / "eval.json")
        result["meta"]["forget_quality_reference"] = {"path": path, "ratios_from": "eval.json",
                                                      "model": reference_model, "n": 20}  # fmt: skip
        (runs / name / "eval.json").write_text(json.dumps(result))
    (runs / "broken").mkdir()
    write_status(runs / "broken", "failed", error="disk full")
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert str(tmp_path) not in text and "/home/ann" not in text and "<in-memory" not in text
    # Beside the report: relative to its folder. Elsewhere: without the machine's folders.
    reference = "forget-quality reference `.../world-default-0123456789abcdef/retain-forget10`"
    assert (
        f"- **retain**: forget split `forget10_perturbed`, truth ratio `geometric`, prompt `chat_template`, {reference}"
        in text
    )
    assert f"{reference} (eval `../runs/retain/eval.json`)" in text
    assert "Against **target**, the model before unlearning (the eval of ../models/target, where" in text
    assert (
        "- left out (not complete or not evaluated): ../runs/broken: run ../runs/broken is failed: disk full"
        in text
    )


def test_the_report_says_why_each_run_stopped_and_which_weights_it_returned(runs, tmp_path):
    from llm_unlearn.eval.report import training_end

    rule = [{"step": 5, "loss": 1.0}, {"step": 9, "stop_reason": "crossed", "stop_repair_steps": 4,
            "stop_best_step": 4, "stop_best_gap": -0.05}]  # fmt: skip
    assert training_end(rule) == (
        "Training ended at step 5: `crossed` (the stop rule's record); it returned the weights of step 4 (gap -0.050), "
        "then 4 repair steps."
    )
    screened = [{"step": 40, "stop_reason": "forget_vanished", "stop_best_step": 40, "stop_best_gap": None}]
    assert (
        "step 40: `forget_vanished` (the stop rule's record); it returned the weights of step 40 (gap not scored"
        in (training_end(screened))
    )
    vanished = [{"step": 4, "training_stopped": "forget_vanished", "forget_vanished_steps": 2}]
    assert training_end(vanished).startswith("Training ended at step 4: the forget terms had been left out")
    assert training_end([{"step": 1, "loss": 1.0}]) is None
    # In the report, above the run's training curves.
    with open(runs / "ngdiff" / "train_log.jsonl", "a") as f:
        f.write(
            json.dumps({"step": 8, "training_stopped": "forget_vanished", "forget_vanished_steps": 3}) + "\n"
        )
    out = tmp_path / "report"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert (
        "### ngdiff\n\nTraining ended at step 8: the forget terms had been left out as vanished in 3 steps"
        in text
    )
    assert "### graddiff\n\n![training curves of graddiff]" in text


def test_runs_from_different_targets_get_no_single_collateral_damage_line(runs, tmp_path):
    # One target's numbers beside a run that started from another model would be a wrong share.
    _drop_figure_inputs(runs)
    config = yaml.safe_load((runs / "ngdiff" / "unlearn_config.yaml").read_text())
    config["model_name_or_path"] = str(tmp_path / "models" / "other-target")
    (runs / "ngdiff" / "unlearn_config.yaml").write_text(yaml.safe_dump(config))
    assert main(["report", str(runs), "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    assert "No eval of the original (target) model was found" not in text  # it was: for one of the two
    assert "- **graddiff**: retain fact recall" not in text
    assert "No single original model to compare with: the runs started from different models" in text
    # Named explicitly, the user's choice holds.
    target = ["--target_eval", str(runs / "target")]
    assert (
        main(["report", str(runs / "graddiff"), str(runs / "ngdiff"), "--out", str(tmp_path / "s"), *target])
        == 0
    )
    assert "- **graddiff**: retain fact recall" in (tmp_path / "s" / "report.md").read_text()


def test_a_run_reached_twice_is_listed_once(runs, tmp_path):
    _drop_figure_inputs(runs)
    (runs / "ngdiff-link").symlink_to(runs / "ngdiff", target_is_directory=True)
    assert main(["report", str(runs), str(runs / "graddiff"), "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    assert (
        "| metric | better | retain | target | graddiff | ngdiff |" in text
    )  # no second ngdiff, no graddiff (2)


def test_forget_quality_on_too_few_questions_is_flagged_in_the_report_and_the_card(tmp_path):
    from llm_unlearn.eval import write_report
    from llm_unlearn.hub.card import _metrics_section

    small = fake_eval("m", 0, forget_quality=1.0)
    small["metrics"]["forget_quality"]["smallest_possible"] = 1.0  # one forget question a side
    small["meta"]["forget_quality_reference"] = {"path": "/nonexistent/eval.json", "model": "ref", "n": 1}
    small["meta"]["splits"] = {
        "forget": {"name": "forget10_perturbed", "n": 1},
        "holdout": {"name": "holdout10", "n": 1},
    }
    write_report({"small": small, "plain": fake_eval("p", 1)}, tmp_path / "r")
    lines = (tmp_path / "r" / "report.md").read_text().splitlines()
    flagged = [line for line in lines if "cannot fall below" in line]
    assert len(flagged) == 1 and flagged[0].startswith("- **small**")
    card = "\n".join(_metrics_section(small, {}, {}))
    assert "With 1 question it cannot fall below 1, whatever the model does" in card
