"""The GPU protocol's bf16-vs-fp32 NGDiff check (benchmarks/_precision.py), on hand-made runs."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _precision import compare  # noqa: E402


def _run(folder: Path, weights: dict, losses=()) -> Path:
    folder.mkdir()
    save_file(weights, str(folder / "model.safetensors"))
    save_file({"w": torch.full((2,), 99.0)}, str(folder / "stop_rule_best.safetensors"))  # never compared
    lines = [
        json.dumps({"step": i + 1, "loss_forget": f, "loss_retain": r}) for i, (f, r) in enumerate(losses)
    ]
    (folder / "train_log.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_update_difference_and_cosine_by_hand(tmp_path):
    base = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    target = _run(tmp_path / "t", base)
    # Delta_fp32 = (0.3, 0, 0.4) (norm 0.5); Delta_bf16 = (0.3, 0.05, 0.4): rel 0.1, cos 0.5 / (0.5 * sqrt(0.2525)).
    fp32 = _run(tmp_path / "a", {"w": torch.tensor([1.3, 2.0]), "b": torch.tensor([0.9])}, [(-1.0, 2.0)])
    bf16 = _run(tmp_path / "b", {"w": torch.tensor([1.3, 2.05]), "b": torch.tensor([0.9])}, [(-1.1, 2.0)])
    out = compare(target, fp32, bf16)
    assert out["update_rel_diff"] == pytest.approx(0.1, rel=1e-4)
    assert out["update_cosine"] == pytest.approx(0.25 / (0.5 * math.sqrt(0.2525)), rel=1e-4)
    assert out["max_step_loss_rel_diff"] == pytest.approx(0.1, rel=1e-4) and out["parameters_compared"] == 2
    assert out["passed"] is (out["update_cosine"] >= 0.99 and out["update_rel_diff"] <= 0.1)


def test_a_lost_term_fails_and_a_close_run_passes(tmp_path):
    base = {"w": torch.zeros(4)}
    target = _run(tmp_path / "t", base)
    fp32 = _run(tmp_path / "a", {"w": torch.tensor([1.0, -1.0, 0.5, 0.0])}, [(-1.0, 1.0)])
    close = _run(tmp_path / "b", {"w": torch.tensor([1.01, -0.99, 0.5, 0.0])}, [(-1.0, 1.0)])
    lost = _run(tmp_path / "c", {"w": torch.tensor([1.0, 0.0, 0.0, 0.0])}, [(-1.0, 1.0)])  # a term gone
    assert compare(target, fp32, close)["passed"] and not compare(target, fp32, lost)["passed"]


def test_bf16_ngdiff_takes_the_fp32_steps_on_the_micro_model(micro_models, micro_world, tmp_path):
    import dataclasses

    import smollm2_tofu
    from _precision import precision_check

    sizes = dataclasses.replace(
        smollm2_tofu.SIZES["tiny"], unlearn=dict(learning_rate=1e-3, per_device_train_batch_size=4),
        precision_check_steps=3,
    )  # fmt: skip
    args = (
        Path(micro_models["target"]),
        micro_world,
        "forget10",
        tmp_path,
        sizes,
        0,
        smollm2_tofu.unlearn_stage,
    )
    result = precision_check(*args)
    assert result["steps"] == 3 and len(result["fp32_losses"]) == len(result["bf16_losses"]) == 3
    # bf16 rounds (the runs differ) yet takes the same steps.
    assert 0 < result["update_rel_diff"] < 0.1 and result["update_cosine"] > 0.99 and result["passed"]
    assert precision_check(*args) == result  # kept: a second call reads it back
