"""On a CUDA device: every method trains in fp32 and bf16, `--auto` runs its checks, NGDiff in bf16 tracks
fp32, and an evaluation on the GPU gives the CPU's numbers. `make test-gpu` (skipped without CUDA).

The rest of the suite pins most trainers to the CPU (`use_cpu=True`) so that it runs alike everywhere;
these tests are the ones that put the training step, the reference model, the stop rule's greedy
answers and the evaluator on the accelerator, where a tensor left on the CPU fails at once.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llm_unlearn.cli import main
from llm_unlearn.methods import METHODS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
NAMES = sorted(METHODS)
COMMON = [
    "--forget_split",
    "forget10",
    "--save_strategy",
    "no",
    "--disable_tqdm",
    "true",
    "--report_to",
    "none",
]


def _unlearn(models: dict, world: Path, out: Path, *flags: str) -> list[dict]:
    argv = ["unlearn", "--model_name_or_path", str(models["target"]), "--data_dir", str(world),
            "--output_dir", str(out), *COMMON, *flags]  # fmt: skip
    assert main(argv) == 0
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _losses(log: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k.startswith("loss_")} for r in log if "loss_forget" in r]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", NAMES)
def test_every_method_unlearns_on_the_gpu(micro_models, micro_world, tmp_path, name, precision):
    out = tmp_path / "run"
    flags = ["--method", name, "--max_steps", "2", "--do_final_eval", "false"]
    log = _unlearn(
        micro_models, micro_world, out, *flags, *(["--bf16", "true"] if precision == "bf16" else [])
    )
    losses = _losses(log)
    assert len(losses) == 2 and all(math.isfinite(v) for r in losses for v in r.values()), losses
    saved = load_file(out / "model.safetensors")
    start = load_file(Path(micro_models["target"]) / "model.safetensors")
    assert any(not torch.equal(saved[k].float(), start[k].float()) for k in start), "no weight moved"


def test_ngdiff_in_bf16_tracks_fp32(micro_models, micro_world, tmp_path):
    """Same weights, batches and lr: bf16 autocast's losses stay within a few per cent of fp32's for 5 steps."""
    recipe = str(Path(__file__).resolve().parents[2] / "recipes" / "world" / "ngdiff.yaml")
    flags = ["--config", recipe, "--max_steps", "5", "--do_final_eval", "false", "--seed", "0"]
    fp32 = _losses(_unlearn(micro_models, micro_world, tmp_path / "fp32", *flags))
    bf16 = _losses(_unlearn(micro_models, micro_world, tmp_path / "bf16", *flags, "--bf16", "true"))
    assert len(fp32) == len(bf16) == 5
    for a, b in zip(fp32, bf16):
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=0.05, abs=0.02), (key, a, b)


def test_auto_runs_its_checks_on_the_gpu_and_evaluates_there(micro_models, micro_world, tmp_path):
    out = tmp_path / "auto"
    log = _unlearn(micro_models, micro_world, out, "--auto", "--bf16", "true", "--max_new_tokens", "8")
    checks = [r for r in log if "stop_decision" in r]
    assert checks and checks[0]["step"] == 0
    assert any("stop_reason" in r for r in log)
    result = json.loads((out / "eval.json").read_text())
    assert torch.cuda.get_device_name() in result["meta"]["hardware"], "the evaluation did not run on the GPU"


def test_an_evaluation_on_the_gpu_gives_the_cpu_numbers(micro_models, micro_world, tmp_path):
    """fp32 on both: the same model scored on the GPU and, in a process that sees no GPU, on the CPU."""
    args = ["eval", "--model_name_or_path", str(micro_models["target"]), "--data_dir", str(micro_world),
            "--forget_split", "forget10", "--reference_model", str(micro_models["retain"]["forget10"]),
            "--max_new_tokens", "8", "--eval_cache", "false"]  # fmt: skip
    assert main([*args, "--output_dir", str(tmp_path / "gpu")]) == 0
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    cpu_out = str(tmp_path / "cpu")
    subprocess.run(
        [sys.executable, "-m", "llm_unlearn.cli", *args, "--output_dir", cpu_out], env=env, check=True
    )
    gpu_result = json.loads((tmp_path / "gpu" / "eval.json").read_text())
    cpu_result = json.loads((tmp_path / "cpu" / "eval.json").read_text())
    assert torch.cuda.get_device_name() in gpu_result["meta"]["hardware"]
    assert "CPU" in cpu_result["meta"]["hardware"]
    gpu, cpu = gpu_result["metrics"], cpu_result["metrics"]
    assert set(gpu) == set(cpu)
    for key in gpu:
        a, b = gpu[key].get("value"), cpu[key].get("value")
        if isinstance(a, float) and isinstance(b, float) and math.isfinite(a):
            # Probabilities and losses to fp32 summation order; ROUGE-L and recall can flip where two
            # greedy candidates tie to within that order.
            assert a == pytest.approx(b, rel=1e-3, abs=0.02), (key, a, b)
