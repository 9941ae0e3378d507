"""Runs handled roughly, and models that do not fit: two runs started at once on one folder, SIGTERM
mid-training, weights or a tokenizer at odds with the config, secrets in recorded and published
commands. `pytest tests/test_bad_input_runs.py` (`-m "not slow"` skips the real-process races)

The house rule, as in test_bad_input.py: one line `error: <problem>; <fix>`, a non-zero exit, no
traceback, nothing half-written or damaged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from llm_unlearn.cli import main
from llm_unlearn.core.config import UnlearnConfig
from llm_unlearn.data.args import DataArgs
from llm_unlearn.eval.args import EvalArgs
from llm_unlearn.models.args import ModelArgs
from llm_unlearn.models.loading import load_model_and_tokenizer
from llm_unlearn.runs.folder import (
    CHECKPOINT_MARK,
    CLAIM_FILE,
    RunError,
    claim_run_dir,
    read_status,
    run_state,
)
from llm_unlearn.runs.redact import is_secret_option, redacted_argv, to_dict
from tests.core.test_trainer import tiny  # noqa: F401  (module fixture: micro model and data)

HERE = Path(__file__).resolve().parents[1]  # tests/: the scripts the tests launch
KILLABLE = HERE / "_killable_unlearn.py"
MAX_STEPS = 4


def _argv(tiny, out: Path, *extra: str) -> list[str]:  # noqa: F811
    return [
        "unlearn", "--model_name_or_path", str(tiny["dir"] / "model"), "--data_dir", str(tiny["data_dir"]),
        "--output_dir", str(out), "--max_steps", str(MAX_STEPS), "--save_strategy", "steps", "--save_steps", "2",
        "--per_device_train_batch_size", "2", "--learning_rate", "0.01", "--seed", "7", "--use_cpu", "true",
        "--disable_tqdm", "true", "--do_final_eval", "false", "--logging_steps", "1", *extra,
    ]  # fmt: skip


def _env() -> dict:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    for name in ("KILL_AT", "KILL_FLAG"):
        env.pop(name, None)
    return env


def _one_error_line(stderr: str) -> str:
    """The single `error: ` line, which is the last line of stderr; no traceback anywhere."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines[-5:]
    return errors[0]


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _step_records(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line]
    return [r for r in rows if "step" in r and "train_runtime" not in r]


# ---------------------------------------------------------------- A: one run per folder


def test_a_claimed_output_dir_refuses_a_second_run_with_one_line_and_is_left_untouched(
    tiny,  # noqa: F811
    tmp_path,
    capsys,
):
    out = tmp_path / "run"
    with claim_run_dir(out):
        before = _snapshot(tmp_path)
        assert main(_argv(tiny, out)) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert re.search(rf"in use by another llm-unlearn process \({os.getpid()}@[^)]+\); wait for it", line)
        assert _snapshot(tmp_path) == before
    assert not out.exists()  # the claim made the folder, and nothing else was put in it


def test_a_claim_is_released_at_the_end_and_one_left_by_a_killed_process_is_taken_over(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyError), claim_run_dir(out):
        raise KeyError("failed before writing anything")
    assert not out.exists()  # made for the claim, removed with it
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    (out / CLAIM_FILE).write_text("4194000@elsewhere")  # a killed process's claim: its lock died with it
    with claim_run_dir(out):
        assert (out / CLAIM_FILE).read_text() == f"{os.getpid()}@{socket.gethostname()}"
        with pytest.raises(RunError, match="in use by another llm-unlearn process"), claim_run_dir(out):
            pass
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_run_killed_before_its_first_write_leaves_a_claim_file_that_the_rerun_takes_over(
    tiny,  # noqa: F811
    tmp_path,
):
    out = tmp_path / "run"
    out.mkdir()
    (out / CLAIM_FILE).write_text("4194000@" + socket.gethostname())
    assert main(_argv(tiny, out, "--max_steps", "1")) == 0
    assert run_state(read_status(out)) == "complete" and not (out / CLAIM_FILE).exists()


# A barrier: both processes import everything, say they are ready, and start the command together.
RACER = """
import sys, time
from pathlib import Path
import torch
import llm_unlearn.pipeline.unlearn, llm_unlearn.pipeline.evaluate, llm_unlearn.core.trainer
from llm_unlearn.cli import main
torch.set_num_threads(1)
go, ready = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.001)
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
def test_two_runs_started_at_the_same_moment_on_one_folder_one_runs_and_the_other_gets_one_line(
    tiny,  # noqa: F811
    tmp_path,
):
    for round_ in range(2):
        out, go = tmp_path / f"run{round_}", tmp_path / f"go{round_}"
        ready = [tmp_path / f"ready{round_}-{i}" for i in range(2)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", RACER, str(go), str(flag), *_argv(tiny, out)],
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for flag in ready
        ]
        deadline = time.monotonic() + 300
        while not all(flag.exists() for flag in ready):
            assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        go.touch()
        results = [(p.wait(timeout=600), p.communicate()[1]) for p in procs]
        codes = sorted(code for code, _ in results)
        assert codes == [0, 2], [err[-2000:] for _, err in results]
        (loser_err,) = [err for code, err in results if code == 2]
        line = _one_error_line(loser_err)
        assert re.search(r"output dir .* is in use by (another llm-unlearn|a running) process", line), line
        assert "resuming" not in loser_err and "restarting" not in loser_err
        assert run_state(read_status(out)) == "complete"
        steps = [r["step"] for r in _step_records(out)]
        assert steps == list(range(1, MAX_STEPS + 1)), steps  # one run's log, no record twice
        assert not (out / CLAIM_FILE).exists()


# ---------------------------------------------------------------- B: SIGTERM


@pytest.mark.slow
def test_sigterm_mid_training_ends_with_one_line_and_the_rerun_resumes_to_the_uninterrupted_weights(
    tiny,  # noqa: F811
    tmp_path,
):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    done = subprocess.run([sys.executable, str(KILLABLE), *_argv(tiny, straight)], env=_env(), capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]

    flag = tmp_path / "stalled"
    env = _env() | {"KILL_AT": "train:3", "KILL_FLAG": str(flag)}  # stalls mid-step 4, checkpoint-2 complete
    argv = _argv(tiny, stopped)
    proc = subprocess.Popen([sys.executable, str(KILLABLE), *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143
    line = _one_error_line(stderr)
    assert line == "error: terminated (SIGTERM); rerun the same command to resume from the last checkpoint"
    status = read_status(stopped)
    assert status["state"] == "interrupted" and status["error"] == "Terminated"  # as a killed run reads
    assert not (stopped / "model.safetensors").exists() and not (stopped / CLAIM_FILE).exists()
    before = json.loads((stopped / "checkpoint-2" / CHECKPOINT_MARK).read_text())["train_seconds"]

    done = subprocess.run([sys.executable, str(KILLABLE), *argv], env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stderr and "checkpoint-2" in done.stderr
    assert run_state(read_status(stopped)) == "complete"
    assert read_status(stopped)["train_seconds"] > before > 0  # the seconds before the resume count too
    want, got = load_file(straight / "model.safetensors"), load_file(stopped / "model.safetensors")
    assert want.keys() == got.keys()
    assert all(torch.equal(want[name], got[name]) for name in want)
    assert [r["step"] for r in _step_records(stopped)] == list(range(1, MAX_STEPS + 1))
    resumes = json.loads((stopped / "run_info.json").read_text())["resumes"]
    assert [(r["checkpoint"], r["optimizer_restored"]) for r in resumes] == [("checkpoint-2", True)]


def test_resume_settings_compare_what_trains_as_the_yaml_holds_it():
    from llm_unlearn.runs.resume import differences

    saved = {"learning_rate": 0.01, "lora_target_modules": ["q", "v"], "logging_steps": 1, "eval_steps": 32,
             "eval_batch_size": 32, "output_dir": "runs/a", "added_later": 1}  # fmt: skip
    new = {"learning_rate": 0.01, "lora_target_modules": ("q", "v"), "logging_steps": 5, "eval_steps": 8,
           "eval_batch_size": 32, "output_dir": "/abs/runs/a"}  # fmt: skip
    assert (
        differences(saved, new) == []
    )  # a tuple is the list the YAML holds; logging, eval, the folder may differ
    assert differences(saved, new | {"learning_rate": 0.02, "lora_target_modules": ["q"]}) == [
        "learning_rate: 0.01 there, 0.02 now", "lora_target_modules: ['q', 'v'] there, ['q'] now",
    ]  # fmt: skip
    # The stop rule scores its checks in batches of eval_batch_size: it is part of the steps.
    assert differences(saved, new | {"eval_batch_size": 8}) == ["eval_batch_size: 32 there, 8 now"]
    # Free-looking names that change the steps: which examples an epoch drops, whether checkpoints can resume.
    for key, was, now in (("dataloader_drop_last", False, True), ("save_only_model", False, True)):
        assert differences(saved | {key: was}, new | {key: now}) == [f"{key}: {was!r} there, {now!r} now"]
    assert differences(saved | {"dataloader_num_workers": 0}, new | {"dataloader_num_workers": 2}) == []
    # Once training is over (its final evaluation cut short), they are free: the command that finishes the
    # evaluation was refused for another --eval_batch_size, which its own comment says may differ.
    assert differences(saved, new | {"eval_batch_size": 8}, trained=True) == []
    assert differences(saved, new | {"learning_rate": 0.02}, trained=True) == [
        "learning_rate: 0.01 there, 0.02 now"
    ]


class _KilledAfterCheckpoint2(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise RuntimeError("killed")


class _KilledAtStep1(TrainerCallback):
    def on_step_begin(
        self, args, state, control, **kwargs
    ):  # the second step: the first is in train_log.jsonl
        if state.global_step == 1:
            raise RuntimeError("killed")


def test_an_unfinished_run_resumes_only_with_its_own_settings(tiny, tmp_path, capsys, caplog):  # noqa: F811
    """Other training settings would load its checkpoint into a run configured otherwise: one line naming
    them, nothing touched; settings that change no step (logging, saving, evaluation) resume it."""
    from llm_unlearn.cli.parse import parse_config
    from llm_unlearn.pipeline.unlearn import unlearn

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed"):
        unlearn(*parse_config(_argv(tiny, out)[1:]), callbacks=[_KilledAfterCheckpoint2()])
    before = _snapshot(out)
    assert main(_argv(tiny, out, "--learning_rate", "0.05", "--method", "graddiff")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "holds an unfinished run with other settings (learning_rate: 0.01 there, 0.05 now" in line
    assert "rerun the command that started it" in line and "unlearn_config.yaml" in line
    assert _snapshot(out) == before and not (out / CLAIM_FILE).exists()
    with caplog.at_level("INFO", logger="llm_unlearn"):
        assert main(_argv(tiny, out, "--logging_steps", "2", "--save_steps", "1", "--report_to", "none")) == 0
    assert "from checkpoint-2" in caplog.text  # resumed, not restarted
    assert run_state(read_status(out)) == "complete"

    # Killed before its first checkpoint: the same command would start it again, other settings are refused
    # before the folder changes (its log would be dropped for the restart).
    early = tmp_path / "early"
    with pytest.raises(RuntimeError, match="killed"):
        unlearn(*parse_config(_argv(tiny, early)[1:]), callbacks=[_KilledAtStep1()])
    assert (early / "train_log.jsonl").is_file() and not list(early.glob("checkpoint-*"))
    before = _snapshot(early)
    assert main(_argv(tiny, early, "--seed", "8")) == 2
    assert "seed: 7 there, 8 now" in _one_error_line(capsys.readouterr().err)
    assert _snapshot(early) == before


DAMAGED_CONFIGS = {
    "not YAML": b"method: [npo\nlearning_rate: 0.01\n",
    "a list": b"- npo\n- 0.01\n",
    "not UTF-8": b"method: npo\nrun_name: \xff\xfe\n",
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_CONFIGS))
def test_a_damaged_run_config_is_one_line_in_each_command_reading_it(damage, tiny, tmp_path, capsys):  # noqa: F811
    """A hand-edited or truncated unlearn_config.yaml: each reader (resume, eval, probe, distill, push) stops
    with one line naming the file, before it writes anything."""
    run = tmp_path / "run"
    assert main(_argv(tiny, run, "--max_steps", "1")) == 0
    (run / "unlearn_config.yaml").write_bytes(DAMAGED_CONFIGS[damage])
    data = ["--data_dir", str(tiny["data_dir"])]
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "status.json").write_text(json.dumps({"state": "failed", "error": "KeyboardInterrupt: "}))
    commands = {
        "resume": _argv(tiny, unfinished),
        "eval": ["eval", "--model_name_or_path", str(run), "--reference_model", str(tiny["dir"] / "model"), *data,
                 "--output_dir", str(tmp_path / "evaluated")],
        "probe": ["probe", str(run), "--original_model", str(tiny["dir"] / "model"),
                  "--reference_model", str(tiny["dir"] / "model"), *data],
        "distill": ["distill", str(run), "--alpha", "0.3", "--output_dir", str(tmp_path / "distilled")],
        "push": ["push", str(run), "--repo_id", "org/x", "--dry_run", "--output_dir", str(tmp_path / "staged")],
    }  # fmt: skip
    before = {path: _snapshot(path) for path in (run, unfinished)}
    for name, argv in commands.items():
        assert main(argv) == 2, name
        line = _one_error_line(capsys.readouterr().err)
        assert "unlearn_config.yaml" in line and "restore the file the run wrote" in line, (name, line)
    assert {path: _snapshot(path) for path in (run, unfinished)} == before
    assert not any((tmp_path / name).exists() for name in ("evaluated", "distilled", "staged"))


def _cut_short(run: Path) -> None:
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a full disk, a killed copy


def _wider(run: Path) -> None:
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(config | {"hidden_size": 2 * config["hidden_size"]}))


# A damaged file of a complete run, the line each command must say, and the commands that read the file.
RUN_DAMAGES = {
    "weights cut short": (_cut_short, "model.safetensors is damaged", ("eval", "probe", "push")),
    # config.json alone would mean a 7B model: built before the weights were compared, it took 10 GB.
    "foreign config": (lambda run: (run / "config.json").write_text('{"model_type": "llama"}'),
                       "describes a model of 6,738,415,616 parameters", ("eval", "probe", "push")),
    # Twice the width: as many parameters as 4 x the weights hold at most, so only the shapes tell.
    "config of another width": (_wider, "do not fit its config.json: 11 tensor(s) of another shape",
                                ("eval", "probe", "push")),
    "tokenizer damaged": (lambda run: (run / "tokenizer.json").write_text("garbage"),
                          "the tokenizer in", ("eval", "push")),
    "eval.json damaged": (lambda run: (run / "eval.json").write_text("{}"), "is not an eval.json", ("push",)),
}  # fmt: skip


@pytest.mark.parametrize("damage", sorted(RUN_DAMAGES))
def test_a_damaged_file_of_a_run_is_one_line_in_each_command_that_reads_it(
    damage, micro_world, micro_models, tmp_path, capsys
):
    run, target, reference = (
        tmp_path / "run",
        str(micro_models["target"]),
        str(micro_models["retain"]["forget10"]),
    )
    data = ["--data_dir", str(micro_world)]
    assert main(["unlearn", "--model_name_or_path", target, *data, "--output_dir", str(run), "--max_steps", "1",
                 "--do_final_eval", "false", "--disable_tqdm", "true"]) == 0  # fmt: skip
    damage_file, words, names = RUN_DAMAGES[damage]
    damage_file(run)
    commands = {
        "eval": ["eval", "--model_name_or_path", str(run), "--reference_model", reference, *data,
                 "--output_dir", str(tmp_path / "evaluated")],
        "probe": ["probe", str(run), "--original_model", target, "--reference_model", reference, *data],
        "push": ["push", str(run), "--repo_id", "org/x", "--dry_run", "--output_dir", str(tmp_path / "staged")],
    }  # fmt: skip
    before = _snapshot(run)
    for name in names:
        assert main(commands[name]) == 2, name
        line = _one_error_line(capsys.readouterr().err)
        assert words in line, (name, line)
    assert _snapshot(run) == before
    assert not (tmp_path / "staged").exists() and not (tmp_path / "evaluated").exists()


@pytest.mark.parametrize("damaged", ["model.safetensors", "trainer_state.json"])
def test_resuming_from_a_damaged_checkpoint_is_one_line_and_changes_nothing(damaged, tiny, tmp_path, capsys):  # noqa: F811
    from llm_unlearn.cli.parse import parse_config
    from llm_unlearn.pipeline.unlearn import unlearn

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed"):
        unlearn(*parse_config(_argv(tiny, out)[1:]), callbacks=[_KilledAfterCheckpoint2()])
    path = out / "checkpoint-2" / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = _snapshot(out)
    assert main(_argv(tiny, out)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "checkpoint-2 of" in line and "is damaged" in line and "remove" in line, line
    assert _snapshot(out) == before and not (out / CLAIM_FILE).exists()


def test_a_running_run_is_named_by_its_process_where_its_status_has_one(tmp_path):
    from llm_unlearn.runs.folder import require_complete

    (tmp_path / "status.json").write_text(json.dumps({"state": "running"}))  # written by another tool
    with pytest.raises(RunError, match=r"is running; eval needs a complete run \(wait for it to finish\)$"):
        require_complete(tmp_path, "eval")
    (tmp_path / "status.json").write_text(
        json.dumps({"state": "running", "pid": os.getpid(), "host": "elsewhere"})
    )
    with pytest.raises(RunError, match=rf"wait for it to finish \(process {os.getpid()} on elsewhere\)"):
        require_complete(tmp_path, "eval")


def test_an_atomic_write_that_fails_leaves_no_temporary_file(tmp_path):
    from llm_unlearn.runs.folder import write_json_atomic

    (tmp_path / "out.json").mkdir()  # a folder where the file should go
    with pytest.raises(OSError):
        write_json_atomic(tmp_path / "out.json", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_an_atomic_write_gets_the_permissions_of_a_plain_open(tmp_path):
    from llm_unlearn.runs.folder import write_json_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "eval.json", {"a": 1})
        (tmp_path / "plain").write_text("x")
    finally:
        os.umask(old)
    # mkstemp's 0600 made the records unreadable to others on a shared machine, the weights beside them not.
    assert (
        (tmp_path / "eval.json").stat().st_mode & 0o777
        == (tmp_path / "plain").stat().st_mode & 0o777
        == 0o644
    )


def test_read_run_config_reads_what_a_run_wrote_and_refuses_the_rest(tmp_path):
    from llm_unlearn.runs.folder import read_run_config

    assert read_run_config(tmp_path) == {}
    with pytest.raises(RunError, match="has no unlearn_config.yaml"):
        read_run_config(tmp_path, required=True)
    (tmp_path / "unlearn_config.yaml").write_text("method: npo\nlearning_rate: 0.01\n", encoding="utf-8")
    assert read_run_config(tmp_path, required=True) == {"method": "npo", "learning_rate": 0.01}
    (tmp_path / "unlearn_config.yaml").write_text("", encoding="utf-8")
    assert read_run_config(tmp_path) == {}
    (tmp_path / "unlearn_config.yaml").write_bytes(DAMAGED_CONFIGS["a list"])
    with pytest.raises(RunError, match="holds a list, not the run's settings"):
        read_run_config(tmp_path)


def test_sigterm_handler_is_only_installed_while_main_runs(tiny, tmp_path):  # noqa: F811
    before = signal.getsignal(signal.SIGTERM)
    assert main(["ls"]) == 0
    assert signal.getsignal(signal.SIGTERM) == before


# ---------------------------------------------------------------- C: models that do not fit


def _edit_config(model: Path, **changes) -> None:
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | changes))


def _edit_weights(model: Path, edit) -> None:
    weights = load_file(model / "model.safetensors")
    edit(weights)
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})


def _smaller_embeddings(model: Path) -> None:
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(model)
    loaded.resize_token_embeddings(loaded.config.vocab_size - 20)
    loaded.save_pretrained(model)


BROKEN_MODELS = {
    "weights_of_another_shape": (
        lambda m: _edit_config(m, intermediate_size=128),
        r"the weights in .*/weights_of_another_shape do not fit its config\.json: 3 tensor\(s\) of another "
        r"shape \(model\.layers\.0\.mlp\.\w+\.weight: \(\d+, \d+\) in the weights, \(\d+, \d+\) by the config, "
        r"and 2 more\); put the config\.json saved with these weights beside them",
    ),
    "weight_missing": (
        lambda m: _edit_weights(m, lambda w: w.pop("model.layers.0.mlp.up_proj.weight")),
        r"the weights in .*/weight_missing do not fit its config\.json: 1 weight\(s\) missing "
        r"\(model\.layers\.0\.mlp\.up_proj\.weight\); put the config\.json",
    ),
    "tensor_without_a_place": (
        lambda m: _edit_weights(m, lambda w: w.update({"model.layers.7.extra.weight": torch.zeros(2)})),
        r"the weights in .*/tensor_without_a_place do not fit its config\.json: 1 tensor\(s\) the config has "
        r"no place for \(model\.layers\.7\.extra\.weight\)",
    ),
    "tokenizer_beyond_embeddings": (
        _smaller_embeddings,
        r"the tokenizer in .*/tokenizer_beyond_embeddings has (\d+) tokens but the model's input embeddings "
        r"have \d+ rows; use the tokenizer the model was trained with, or resize the embeddings",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_MODELS))
def test_a_model_whose_weights_or_tokenizer_do_not_fit_is_one_line_naming_the_folder(
    case,
    tiny,  # noqa: F811
    tmp_path,
    capsys,
):
    breakage, pattern = BROKEN_MODELS[case]
    model = tmp_path / case
    shutil.copytree(tiny["dir"] / "model", model)
    breakage(model)
    before = _snapshot(tmp_path)
    out = tmp_path / "run"
    assert main(_argv(tiny, out, "--model_name_or_path", str(model))) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert re.search(pattern, line), line
    assert "LOAD REPORT" not in capsys.readouterr().err
    assert not out.exists() and _snapshot(tmp_path) == before
    with pytest.raises(RunError, match=pattern):  # what eval, probe and train load through
        load_model_and_tokenizer(str(model))


# ---------------------------------------------------------------- D: secrets, and only secrets, redacted

HF_TOKEN = "hf_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3f"


def test_redacted_argv_hides_secret_values_and_hf_tokens_and_keeps_counts_of_tokens():
    argv = [
        "--max_new_tokens", "64", "--max_tokens=32", "--num_tokens", "8", "--pad_token", "<pad>",
        "--hub_token", "s3cret", "--hub_token=s3cret", "--token", "t", "--openai_api_key=k",
        "--model_name_or_path", HF_TOKEN, f"--note=use {HF_TOKEN} here", HF_TOKEN, "--hub_token", "--lr",
    ]  # fmt: skip
    assert redacted_argv(argv) == [
        "--max_new_tokens", "64", "--max_tokens=32", "--num_tokens", "8", "--pad_token", "<pad>",
        "--hub_token", "<redacted>", "--hub_token=<redacted>", "--token", "<redacted>", "--openai_api_key=<redacted>",
        "--model_name_or_path", "<redacted>", "--note=use <redacted> here", "<redacted>", "--hub_token", "--lr",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "name, secret",
    [("hub_token", True), ("--hub-token", True), ("token", True), ("HF_TOKEN", True), ("password", True),
     ("db_passwd", True), ("client_secret", True), ("api_key", True), ("openai_apikey", True),
     ("max_new_tokens", False), ("num_input_tokens_seen", False), ("include_num_input_tokens_seen", False),
     ("eos_token", False), ("pad_token", False), ("tokenizer_name", False), ("token_budget", False),
     ("average_tokens_across_devices", False), ("secretary", False), ("keyword", False)],
)  # fmt: skip
def test_an_option_is_secret_only_when_its_name_ends_in_a_secret_word(name, secret):
    assert is_secret_option(name) is secret


def test_unlearn_config_redacts_the_hub_token_and_hf_tokens_and_keeps_everything_else():
    config = UnlearnConfig(output_dir="x", hub_token="s3cret", run_name=f"run-{HF_TOKEN}")
    values = to_dict(ModelArgs(), DataArgs(), config, EvalArgs(max_new_tokens=64))
    assert values["hub_token"] == "<redacted>" and values["run_name"] == "run-<redacted>"
    assert values["max_new_tokens"] == 64 and values["output_dir"] == "x"


def test_unlearn_config_is_plain_yaml_without_python_reprs():
    import yaml

    config = UnlearnConfig(output_dir="x", debug="underflow_overflow", optim_args="token=abc",
                           lr_scheduler_type="polynomial", lr_scheduler_kwargs={"power": 2.0})  # fmt: skip
    text = yaml.safe_dump(to_dict(ModelArgs(), DataArgs(), config, EvalArgs()))
    values = yaml.safe_load(text)
    assert "AcceleratorConfig(" not in text and "DebugOption." not in text
    assert values["accelerator_config"]["even_batches"] is True  # Trainer's nested settings, as a mapping
    assert values["debug"] == ["underflow_overflow"]
    assert values["lr_scheduler_kwargs"] == {"power": 2.0}
    from llm_unlearn.runs.redact import _plain

    assert _plain({"api_token": "s3cret", "n": 1}) == {
        "api_token": "<redacted>",
        "n": 1,
    }  # nested secrets too


def test_the_published_card_and_run_info_keep_max_new_tokens(tiny, tmp_path, capsys):  # noqa: F811
    out, staged = tmp_path / "run", tmp_path / "staged"
    assert main(_argv(tiny, out, "--max_steps", "1", "--max_new_tokens", "64", "--run_name", HF_TOKEN)) == 0
    command = json.loads((out / "run_info.json").read_text())["command"]
    assert "--max_new_tokens 64" in command and "--run_name '<redacted>'" in command
    assert HF_TOKEN not in (out / "unlearn_config.yaml").read_text()
    assert yaml.safe_load((out / "unlearn_config.yaml").read_text())["max_new_tokens"] == 64
    assert main(["push", str(out), "--repo_id", "org/card", "--dry_run", "--output_dir", str(staged)]) == 0
    card = (staged / "README.md").read_text()
    assert "--max_new_tokens 64" in card and "max_new_tokens: 64" in card
    assert "'<redacted>'" not in card.replace("--run_name '<redacted>'", "")
    assert not any(HF_TOKEN in p.read_text(errors="replace") for p in staged.rglob("*") if p.is_file())


def test_the_data_hash_covers_the_splits_that_decide_the_steps():
    from llm_unlearn.pipeline.unlearn import data_digest

    forget, retain = [{"question": "q1", "answer": "a1"}], [{"question": "q2", "answer": "a2"}]
    holdout = [{"question": "q3", "answer": "a3"}]
    plain = data_digest({"forget10": forget, "retain90": retain})
    assert set(plain) == {"forget10", "retain90"} and len(plain["forget10"]) == 16
    stop = {"holdout": holdout, "statistic": "auc", "forget_scored": forget}
    ruled = data_digest({"forget10": forget, "retain90": retain}, stop)
    assert (
        ruled["stop_holdout"]
        != data_digest({"f": forget}, stop | {"holdout": [{"question": "q3", "answer": "b"}]})["stop_holdout"]
    )  # the stop rule's holdout decides where --auto stops: an edited one is other data
    assert data_digest({"forget10": retain})["forget10"] != plain["forget10"]
    assert "stop_scored" not in ruled  # the loss statistic scores answers only
    # The truth-ratio statistic scores wrong answers too, and the utility guard its own samples: an edit of
    # either, which leaves questions and answers alone, is other data as well.
    perturbed = [{"question": "q3", "answer": "a3", "perturbed_answer": ["x", "y"]}]
    tr = stop | {
        "statistic": "truth_ratio",
        "holdout": perturbed,
        "utility_rows": {"ra": [{"question": "r"}]},
    }
    base = data_digest({"forget10": forget}, tr)
    edited = data_digest(
        {"forget10": forget}, tr | {"holdout": [perturbed[0] | {"perturbed_answer": ["x", "z"]}]}
    )
    assert base["stop_holdout"] == edited["stop_holdout"] and base["stop_scored"] != edited["stop_scored"]
    other = data_digest({"forget10": forget}, tr | {"utility_rows": {"ra": [{"question": "s"}]}})
    assert base["stop_utility_ra"] != other["stop_utility_ra"] and base["stop_scored"] == other["stop_scored"]


def test_a_run_saved_with_a_settings_repr_resumes_when_the_settings_are_the_same():
    from llm_unlearn.cli.parse import parse_config
    from llm_unlearn.runs.resume import differences

    # Before 2026-12-08, unlearn_config.yaml held Trainer's accelerator_config as its Python repr.
    model, data, config, ev = parse_config(["--output_dir", "x"])
    new = to_dict(model, data, config, ev)
    saved = new | {"accelerator_config": repr(config.accelerator_config)}
    assert differences(saved, new) == []
    saved["accelerator_config"] = saved["accelerator_config"].replace(
        "even_batches=True", "even_batches=False"
    )
    assert [d.split(":")[0] for d in differences(saved, new)] == ["accelerator_config"]
