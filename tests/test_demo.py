"""The demo end to end: micro size as a smoke test, default size (slow) with its three checks."""

from __future__ import annotations

import json

import pytest

from llm_unlearn.demo import demo


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
    assert set(summary["stage_seconds"]) == {"world", "models", "unlearn", "eval", "report"}


@pytest.mark.slow
def test_default_demo_passes_its_three_checks(tmp_path):
    summary = demo(size="default", output_dir=str(tmp_path / "demo"))
    _assert_demo_outputs(tmp_path / "demo")
    assert summary["passed"], summary["checks"]
