"""`llm-unlearn eval` on two CPU processes (gloo) equals one process, value for value; rank 0 alone writes. `make test-slow`"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1]  # tests/: the scripts the tests launch

# With 8 per batch the micro world's passes have 18, 3, 88, 13, 6, 2, 6 and 2 batches: the odd
# counts give rank 0 more batches than rank 1, so an uneven split is exercised.
BATCH_SIZE = 8
LAUNCHERS = {
    # `--cpu` would make accelerate 1.15 start one process (its multi-CPU mode needs MPI);
    # `--multi_gpu` with ACCELERATE_USE_CPU runs its torchrun-based launcher on gloo.
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
    "torchrun": ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--redirects", "3"],
}  # fmt: skip


def _eval(micro_world, micro_models, out: Path, launcher: str | None = None, data_dir=None):
    """Run `llm-unlearn eval` of the target against the retain model's evaluation; (process, seconds)."""
    # Every side computes: multi-process runs never use the evaluation cache, so the one-process run must not.
    cli = ["-m", "llm_unlearn.cli", "eval", "--model_name_or_path", str(micro_models["target"]),
           "--data_dir", str(data_dir or micro_world), "--reference_model", str(micro_models["retain"]["forget10"]),
           "--output_dir", str(out), "--eval_batch_size", str(BATCH_SIZE), "--max_new_tokens", "8",
           "--eval_cache", "false"]  # fmt: skip
    launch = []
    if launcher == "torchrun":
        launch = [*LAUNCHERS[launcher], "--log-dir", str(out.parent / f"{out.name}-logs")]
    elif launcher is not None:
        launch = LAUNCHERS[launcher]
    # One thread everywhere: CPU kernels may split a reduction differently with another thread count.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *launch, *cli], capture_output=True, text=True, env=env, timeout=300
    )
    return proc, time.perf_counter() - start


def _without_timing(result: dict) -> dict:
    return {**result, "meta": {k: v for k, v in result["meta"].items() if k != "timing"}}


@pytest.fixture(scope="module")
def one_process(micro_world, micro_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "eval"
    proc, seconds = _eval(micro_world, micro_models, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "eval.json").read_text()), seconds


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_two_process_eval_json_is_identical_to_one_process_and_written_once_by_rank_zero(
    micro_world, micro_models, one_process, tmp_path, launcher
):
    single, single_seconds = one_process
    out = tmp_path / "eval"
    proc, seconds = _eval(micro_world, micro_models, out, launcher)
    assert proc.returncode == 0, proc.stderr[-3000:]
    double = json.loads((out / "eval.json").read_text())

    # Every per-sample loss, generation, ratio and every metric, compared exactly (JSON keeps floats bit for bit).
    assert double["losses"] == single["losses"]
    assert double["generations"] == single["generations"]
    assert double["metrics"] == single["metrics"]
    assert _without_timing(double) == _without_timing(single)
    assert 0 < double["metrics"]["forget_quality"]["value"] < 1

    one, two = single["meta"]["timing"], double["meta"]["timing"]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["batches_per_rank"][0] > two["batches_per_rank"][1] > 0  # both ranks worked, unevenly
    assert sum(two["batches_per_rank"]) == one["batches_per_rank"][0]

    assert [p.name for p in out.iterdir()] == ["eval.json"]
    if launcher == "torchrun":  # per-rank logs: rank 1 prints, logs and shows nothing
        logs = {p.parent.name + "/" + p.name: p.read_text() for p in (tmp_path / "eval-logs").rglob("*.log")}
        assert "wrote" in logs["0/stdout.log"] and "[llm-unlearn] evaluated" in logs["0/stderr.log"]
        assert logs["1/stdout.log"] == ""
        assert "[llm-unlearn]" not in logs["1/stderr.log"] and "%|" not in logs["1/stderr.log"]
    else:
        assert proc.stdout.count(f"wrote {out / 'eval.json'}") == 1
        assert proc.stdout.count("forget_quality") == 1
        assert proc.stderr.count("[llm-unlearn] evaluated") == 2  # the reference and the model, rank 0 only
    print(
        f"\n{launcher}: 1 process {single_seconds:.1f} s wall ({one['seconds']} s evaluating), "
        f"2 processes {seconds:.1f} s wall ({two['seconds']} s evaluating)"
    )


@pytest.mark.slow
def test_an_error_on_every_rank_after_the_group_forms_ends_the_run_without_hanging(
    micro_world, micro_models, tmp_path
):
    data = tmp_path / "world"
    shutil.copytree(micro_world, data)
    (data / "world_facts_perturbed.json").unlink()
    out = tmp_path / "eval"
    proc, _ = _eval(micro_world, micro_models, out, "accelerate", data_dir=data)
    assert proc.returncode != 0
    assert proc.stderr.count("error: ") == 2 and "world_facts_perturbed.json" in proc.stderr
    assert not (out / "eval.json").exists()


def _epoch_eval(micro_world, micro_models, out: Path, processes: int, mode: str = "") -> dict:
    script = [str(HERE / "_dist_epoch_eval.py"), str(micro_models["target"]), str(micro_world), str(out)]
    launch = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)] if processes > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, *launch, *script, *([mode] if mode else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def epoch_eval_one_process(micro_world, micro_models, tmp_path_factory):
    return _epoch_eval(micro_world, micro_models, tmp_path_factory.mktemp("epoch") / "one.json", 1)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_epoch_evaluator_shares_the_batches_across_ranks_unless_the_parameters_are_sharded(
    micro_world, micro_models, epoch_eval_one_process, tmp_path, mode
):
    """Under DDP each rank scores its share; under FSDP2 every forward needs every rank, so each scores all."""
    one = epoch_eval_one_process
    two = _epoch_eval(micro_world, micro_models, tmp_path / "two.json", 2, "" if mode == "ddp" else mode)
    n_batches = one["timing"]["batches_per_rank"][0]
    if mode == "ddp":
        assert two["timing"]["batches_per_rank"][0] > two["timing"]["batches_per_rank"][1] > 0
        assert sum(two["timing"]["batches_per_rank"]) == n_batches
    else:
        assert two["timing"]["batches_per_rank"] == [n_batches]
    for key in ("sink", "metrics", "losses", "generations"):
        if mode == "ddp":
            assert two[key] == one[key], key  # the same batches on the same weights: bit-identical
        else:
            # FSDP2 computes every forward from all-gathered shards inside its own hooks; with the
            # prompt-sharing KV-cache pass that moved values by ~1e-9 relative (not bit-identical).
            assert _close(two[key], one[key]), key


def _close(a, b, rel: float = 1e-6) -> bool:
    """Equal structure and strings, floats within `rel` (relative) or 1e-9 (absolute)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, (int, float)):
        return abs(a - b) <= max(rel * abs(b), 1e-9)
    return a == b


@pytest.mark.slow
def test_unlearn_on_two_processes_evaluates_its_run_once_rank_zero_has_finished_it(
    micro_world, micro_models, one_process, tmp_path
):
    """Every rank reaches the final evaluation; they wait for rank 0 to mark the run complete, then share it.

    With the reference's eval.json given, rank 1 goes straight from training to the run: without the
    wait it found the run still `running` in two of three tries.
    """
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps(one_process[0]))
    out = tmp_path / "run"
    cli = ["-m", "llm_unlearn.cli", "unlearn", "--model_name_or_path", str(micro_models["target"]),
           "--data_dir", str(micro_world), "--forget_split", "forget10", "--output_dir", str(out),
           "--max_steps", "1", "--per_device_train_batch_size", "4", "--learning_rate", "1e-2",
           "--use_cpu", "true", "--reference_eval", str(reference),
           "--eval_batch_size", str(BATCH_SIZE), "--max_new_tokens", "8"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, *LAUNCHERS["accelerate"], *cli], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    timing = json.loads((out / "eval.json").read_text())["meta"]["timing"]
    assert timing["processes"] == 2 and min(timing["batches_per_rank"]) > 0
    assert proc.stdout.count("forget_quality") == 1
