"""`llm-unlearn bench`: the harness writes every ratio the NGDiff issue asks for. `make test-slow`."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from llm_unlearn.cli import main

KEYS = (
    "step_time_ratio_ngdiff_graddiff",
    "peak_mem_ratio_ngdiff_graddiff",
    "extra_mem_grad_copies_ngdiff",
    "gen_overhead_ratio_interval4",
    "gen_overhead_ratio_interval10",
)


def test_bench_needs_an_output_file_and_a_known_preset(capsys, tmp_path):
    assert main(["bench"]) == 2
    assert "no --out given" in capsys.readouterr().err
    # A choice outside the list: one line naming the command's --help, not argparse's usage block.
    assert main(["bench", "--out", str(tmp_path / "b.json"), "--preset", "huge"]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and "invalid choice: 'huge'" in err and "see `llm-unlearn bench --help`" in err
    )
    assert not (tmp_path / "b.json").exists()


@pytest.mark.slow
def test_quick_bench_writes_finite_ratios_timings_and_memory(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "llm_unlearn.cli",
        "bench",
        "--preset",
        "quick",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in KEYS:
        assert math.isfinite(result[key]), key
    assert result["step_time_ratio_ngdiff_graddiff"] > 0 and result["peak_mem_ratio_ngdiff_graddiff"] > 0
    # 20 timed steps per configuration, each a positive wall time.
    for stats in result["step_times"].values():
        assert stats["n"] == 20 and 0 < stats["q1_s"] <= stats["median_s"] <= stats["q3_s"]
    assert result["memory"]["ngdiff"]["grad_copy_bytes"] == 4 * result["memory"]["ngdiff"]["trainable_params"]
    assert set(result["targets"]) <= set(result) and result["hardware"] and result["date"]
    assert "step_time_ratio_ngdiff_graddiff" in proc.stdout
    # The quick preset checks the harness: its ratios are printed, the targets are not judged on it.
    assert all(t["met"] is None for t in result["targets"].values())
    assert "(medians): not judged at this preset" in proc.stdout and "(means): not judged" in proc.stdout
