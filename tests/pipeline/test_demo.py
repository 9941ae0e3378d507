"""The demo end to end: micro size as a smoke test, default size (slow) with its three checks."""

from __future__ import annotations

import json

import pytest

from llm_unlearn.pipeline.demo import demo


def _assert_demo_outputs(out, methods=("graddiff", "ngdiff")):
    summary = json.loads((out / "summary.json").read_text())
    for name in ("target", "retain", *methods):
        assert {"forget_quality", "model_utility", "forget_fact_recall"} <= summary[name].keys()
        assert "metrics" in json.loads((out / name / "eval.json").read_text())
    for method in methods:
        assert json.loads((out / method / "status.json").read_text())["state"] == "complete"
        checks = summary["checks"][method]
        assert [c["metric"] for c in checks] == ["forget_quality", "forget_fact_recall", "model_utility"]
        assert all(isinstance(c["passed"], bool) for c in checks)
    assert summary["passed"] == all(c["passed"] for m in methods for c in summary["checks"][m])
    report = (out / "report.md").read_text()
    assert "forget_quality" in report and "fq_vs_mu.png" in report and all(m in report for m in methods)
    assert (out / "fq_vs_mu.png").stat().st_size > 0
    assert "## Collateral damage" in report and all(f"- **{m}**: retain" in report for m in methods)
    assert all((out / f"train_{m}.png").is_file() for m in methods)
    assert summary["retain"]["forget_quality"] == pytest.approx(1.0)
    return summary


def test_micro_demo_runs_end_to_end_and_writes_report_summary_and_evals(tmp_path, capsys):
    summary = demo(size="micro", output_dir=str(tmp_path / "demo"))
    _assert_demo_outputs(tmp_path / "demo")
    printed = capsys.readouterr().out
    assert "[demo] models" in printed and ("PASS" in printed or "FAIL" in printed)
    assert "'loss':" not in printed  # a progress bar per run, not Trainer's per-step log lines
    assert all(
        len((tmp_path / "demo" / m / "train_log.jsonl").read_text().splitlines()) > 1
        for m in ("graddiff", "ngdiff")
    )
    assert set(summary["stage_seconds"]) == {"world", "models", "unlearn", "eval", "report"}
    assert summary["checks_apply"] is False and "checks not applied at --size micro" in printed


def test_the_micro_demo_exits_zero_whatever_its_checks_say(tmp_path, monkeypatch, capsys):
    from llm_unlearn.pipeline import demo as module

    seen = {}

    def fake(size, output_dir, no_cache, threads):
        seen["size"] = size
        return {"passed": False, "checks_apply": size != "micro"}

    monkeypatch.setattr(module, "demo", fake)
    module.demo_cli(["--size", "micro", "--output_dir", str(tmp_path / "d")])  # no SystemExit
    with pytest.raises(SystemExit) as exit_:
        module.demo_cli(["--output_dir", str(tmp_path / "d")])
    assert exit_.value.code == 1 and seen["size"] == "default"


@pytest.mark.slow
def test_default_demo_passes_its_three_checks(tmp_path):
    summary = demo(size="default", output_dir=str(tmp_path / "demo"))
    _assert_demo_outputs(tmp_path / "demo")
    assert summary["passed"], summary["checks"]


def test_a_demo_folder_in_use_is_refused_untouched_and_a_finished_one_is_rerun_cleanly(tmp_path):
    from llm_unlearn.runs.folder import CLAIM_FILE, RunError, claim_run_dir

    out = tmp_path / "demo"
    out.mkdir()
    (out / "summary.json").write_text("{}")  # an earlier demo's output, being rewritten by another demo
    (out / "graddiff").mkdir()
    with claim_run_dir(out):
        with pytest.raises(RunError, match="in use by another llm-unlearn process"):
            demo(size="micro", output_dir=str(out))
        assert sorted(p.name for p in out.iterdir()) == sorted([CLAIM_FILE, "graddiff", "summary.json"])
    demo(size="micro", output_dir=str(out))  # the other one finished: this one clears and reruns
    _assert_demo_outputs(out)
    assert not (out / CLAIM_FILE).exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a demo folder"):
        demo(size="micro", output_dir=str(tmp_path / "mine"))
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_demo_refuses_a_bad_size_or_thread_count_before_touching_the_folder(tmp_path):
    import torch

    from llm_unlearn.pipeline.demo import demo

    (tmp_path / "keep").mkdir()
    for kwargs, message in ((dict(size="tiny"), r"unknown demo size 'tiny'; choose one of default, micro"),
                            (dict(threads=0), r"threads must be a whole number >= 1"),
                            (dict(threads=-1), r"threads must be a whole number >= 1")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            demo(output_dir=str(tmp_path / "keep"), **kwargs)
    assert list((tmp_path / "keep").iterdir()) == []
    assert torch.get_num_threads() >= 1
