"""Killed runs (SIGKILL, real subprocesses) resume to exactly the weights of an uninterrupted run.

`pytest -m slow tests/test_kill_resume.py`. Each run is killed twice: mid-training (after the step-2
checkpoint, with log records past it) and halfway through writing the step-4 checkpoint; it is
resumed with the same command each time. `status.json` is checked at every point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from llm_unlearn.runs.folder import CHECKPOINT_MARK, read_status, run_state
from tests.core.test_trainer import tiny  # noqa: F401  (module fixture: micro model and data)

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[1] / "_killable_unlearn.py"
# Timing, and Trainer's summary loss, which averages only the steps the last process ran.
SESSION_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss",
                "train_loss_first_step"}  # fmt: skip

METHODS = {
    "graddiff": ["--method", "graddiff"],
    "ngdiff_gen": ["--method", "ngdiff", "--gen", "true", "--gen_interval", "2", "--learning_rate", "0.05"],
}


def _argv(tiny, out: Path, method_args: list[str]) -> list[str]:  # noqa: F811
    return [
        "unlearn", "--model_name_or_path", str(tiny["dir"] / "model"), "--data_dir", str(tiny["data_dir"]),
        "--output_dir", str(out), "--max_steps", "6", "--save_strategy", "steps", "--save_steps", "2",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--learning_rate", "0.01",
        "--seed", "7", "--use_cpu", "true", "--disable_tqdm", "true", "--do_final_eval", "false", *method_args,
    ]  # fmt: skip


def _env(**extra) -> dict:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parent)} | extra
    env.pop("KILL_AT", None) if "KILL_AT" not in extra else None
    return env


def _run(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), *argv], env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def _kill_at(argv: list[str], point: str, flag: Path) -> None:
    """Start the run, wait until it stalls at `point`, check its status says so, SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *argv], env=_env(KILL_AT=point, KILL_FLAG=str(flag)),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not flag.exists():
        assert proc.poll() is None, f"run ended before {point}: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"run never reached {point}"
        time.sleep(0.1)
    out = Path(argv[argv.index("--output_dir") + 1])
    status = read_status(out)
    assert status["state"] == "running" and status["pid"] == proc.pid and run_state(status) == "running"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    flag.unlink()
    status = read_status(out)
    assert status["state"] == "running" and run_state(status) == "interrupted"  # the truth after a kill


def _log(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in SESSION_KEYS} for row in rows]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_run_killed_in_training_and_in_a_checkpoint_save_resumes_bit_exact(tiny, tmp_path, method, capsys):  # noqa: F811
    from llm_unlearn.cli import main

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(_argv(tiny, straight, METHODS[method]))
    argv = _argv(tiny, killed, METHODS[method])
    flag = tmp_path / "stalled"

    _kill_at(argv, "train:3", flag)  # mid-step 4: checkpoint-2 complete, log records for step 3 too
    (complete,) = [p.name for p in killed.glob("checkpoint-*")]
    assert complete == "checkpoint-2" and (killed / complete / CHECKPOINT_MARK).is_file()
    assert read_status(killed)["checkpoint"] == "checkpoint-2"
    # A run that did not finish is refused by eval, saying it was interrupted.
    (tmp_path / "ref.json").write_text(
        '{"metrics": {"forget_truth_ratio": {"per_sample_ratio": [1.0]}}, "meta": {}}'
    )
    assert (
        main(["eval", "--model_name_or_path", str(killed), "--reference_eval", str(tmp_path / "ref.json")])
        == 2
    )
    assert f"run {killed} is interrupted" in capsys.readouterr().err

    _kill_at(argv, "save:4", flag)  # resumed from checkpoint-2, then killed while writing checkpoint-4
    assert (killed / "checkpoint-2" / CHECKPOINT_MARK).is_file()  # not rotated away
    assert (killed / "checkpoint-4").is_dir() and not (killed / "checkpoint-4" / CHECKPOINT_MARK).exists()

    _run(argv)  # resumes from checkpoint-2 (checkpoint-4 is incomplete) and finishes
    assert run_state(read_status(killed)) == "complete"
    assert not list(killed.glob("checkpoint-*"))
    want, got = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert want.keys() == got.keys()
    mismatched = [name for name in want if not (want[name] == got[name]).all()]
    assert not mismatched, f"resumed weights differ from the uninterrupted run in {mismatched}"
    # The log tells one run's story: the records of redone steps appear once, as in the straight run.
    assert _log(killed) == _log(straight)
    summary = json.loads((killed / "train_log.jsonl").read_text().splitlines()[-1])
    assert summary["train_loss_first_step"] == 3  # the last process resumed after step 2


def test_auto_killed_after_every_checkpoint_resumes_to_the_same_decision_and_weights(
    micro_models, micro_world, tmp_path
):
    """`--auto` with a checkpoint at every stop-rule check, killed right after each one completes and
    resumed each time: the stop decision survives (no step is trained after it), and the run ends with
    the uninterrupted run's log, decision and kept weights."""
    argv = [
        "unlearn", "--auto", "--model_name_or_path", str(micro_models["target"]), "--data_dir", str(micro_world),
        "--forget_split", "forget10", "--eval_batch_size", "64", "--disable_tqdm", "true",
        "--do_final_eval", "false", "--save_strategy", "steps", "--save_steps", "3", "--stop_check_interval", "3",
        "--seed", "3",
    ]  # fmt: skip
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run([*argv, "--output_dir", str(straight)])
    log = _log(straight)
    (end,) = [r for r in log if "stop_reason" in r]
    assert end["stop_reason"] != "max_steps", (
        "the micro run must stop by the rule for this test to mean anything"
    )
    decided = end["step"]
    flag = tmp_path / "stalled"
    for step in range(3, decided + 1, 3):
        _kill_at([*argv, "--output_dir", str(killed)], f"saved:{step}", flag)
        assert read_status(killed)["checkpoint"] == f"checkpoint-{step}"
    _run([*argv, "--output_dir", str(killed)])  # resumes after the checkpoint of the deciding step
    resumed = _log(killed)
    assert max(r["step"] for r in resumed) == decided, "the resumed run trained past the stop decision"

    def untimed(record):  # a check's own cost (stop_seconds) is timing, here and in the kept check's copy
        return {k: untimed(v) if isinstance(v, dict) else v for k, v in record.items() if k != "stop_seconds"}

    assert [untimed(r) for r in resumed] == [untimed(r) for r in log]
    want, got = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all((want[name] == got[name]).all() for name in want)
