"""The `llm-unlearn` CLI in-process: unlearn/eval on micro models, and one clear error per bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest
from safetensors.torch import load_file

from llm_unlearn.cli import main


def _unlearn_argv(micro_world, micro_models, out, *extra) -> list[str]:
    return [
        "unlearn",
        "--model_name_or_path", str(micro_models["target"]),
        "--data_dir", str(micro_world),
        "--forget_split", "forget10",
        "--output_dir", str(out),
        "--max_steps", "1",
        "--per_device_train_batch_size", "4",
        "--learning_rate", "1e-2",
        "--use_cpu", "true",
        "--reference_model", str(micro_models["retain"]["forget10"]),
        "--eval_batch_size", "64",
        "--max_new_tokens", "8",
        *extra,
    ]  # fmt: skip


def test_unlearn_then_eval_changes_weights_and_writes_parseable_outputs(
    micro_world, micro_models, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    assert main(_unlearn_argv(micro_world, micro_models, out)) == 0
    before = load_file(Path(micro_models["target"]) / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert any(not (before[k] == after[k]).all() for k in before)
    result = json.loads((out / "eval.json").read_text())
    for key in ("forget_quality", "model_utility", "forget_rouge_l", "forget_prob", "forget_truth_ratio"):
        assert result["metrics"][key]["direction"] in ("higher", "lower", "closer_to_reference")
    assert 0.0 <= result["metrics"]["forget_quality"]["value"] <= 1.0
    assert json.loads((out / "status.json").read_text())["state"] == "complete"
    assert "run complete" in capsys.readouterr().out

    # A second evaluation reads the reference's eval.json instead of re-evaluating the reference model.
    ref_out = tmp_path / "ref"
    argv = ["eval", "--model_name_or_path", str(micro_models["retain"]["forget10"]), "--data_dir", str(micro_world),
            "--reference_model", str(micro_models["retain"]["forget10"]), "--output_dir", str(ref_out),
            "--max_new_tokens", "8"]  # fmt: skip
    assert main(argv) == 0
    ref = json.loads((ref_out / "eval.json").read_text())
    assert ref["metrics"]["forget_quality"]["value"] == pytest.approx(1.0)
    (out / "eval.json").unlink()
    monkeypatch.chdir(tmp_path)  # relative paths, recorded absolute as unlearn_config.yaml records them
    shutil.copytree(micro_world, tmp_path / "world")
    argv = ["eval", "--model_name_or_path", "run", "--data_dir", "world",
            "--reference_eval", "ref/eval.json", "--max_new_tokens", "8"]  # fmt: skip
    assert main(argv) == 0
    again = json.loads((out / "eval.json").read_text())
    assert again["metrics"]["forget_quality"]["value"] == pytest.approx(
        result["metrics"]["forget_quality"]["value"]
    )
    assert again["meta"]["model"] == str(out.resolve())
    assert again["meta"]["data"]["data_dir"] == str((tmp_path / "world").resolve())


def _expect_error(capsys, argv, pattern: str, out: Path | None = None) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # Progress bars may come first (loading, training); the error is one line, and the last.
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and err[-1] == errors[0]
    assert re.search(pattern, errors[0]), errors[0]
    if out is not None:
        assert not out.exists() or not (out / "model.safetensors").exists()


@pytest.fixture
def broken_world(micro_world, tmp_path):
    """A writable copy of the micro world to break."""
    dst = tmp_path / "world"
    shutil.copytree(micro_world, dst)
    return dst


def test_missing_data_dir(micro_world, micro_models, tmp_path, capsys):
    out = tmp_path / "run"
    argv = _unlearn_argv(tmp_path / "nope", micro_models, out)
    _expect_error(capsys, argv, r"data dir .* does not exist; create one", out)
    assert not out.exists()


def test_missing_split_file(broken_world, micro_models, tmp_path, capsys):
    (broken_world / "retain90.json").unlink()
    out = tmp_path / "run"
    _expect_error(capsys, _unlearn_argv(broken_world, micro_models, out), r"retain90.json not found", out)
    assert not out.exists()


def test_split_with_missing_field(broken_world, micro_models, tmp_path, capsys):
    rows = [json.loads(line) for line in (broken_world / "forget10.json").read_text().splitlines()]
    del rows[3]["answer"]
    (broken_world / "forget10.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    _expect_error(
        capsys, _unlearn_argv(broken_world, micro_models, out), r"row 4 lacks field\(s\) answer", out
    )
    assert not out.exists()


def test_empty_forget_set(broken_world, micro_models, tmp_path, capsys):
    (broken_world / "forget10.json").write_text("")
    out = tmp_path / "run"
    _expect_error(capsys, _unlearn_argv(broken_world, micro_models, out), r"forget10.* is empty", out)
    assert not out.exists()


def test_forget_retain_overlap(broken_world, micro_models, tmp_path, capsys):
    shutil.copy(broken_world / "full.json", broken_world / "retain90.json")
    out = tmp_path / "run"
    _expect_error(capsys, _unlearn_argv(broken_world, micro_models, out), r"share \d+ question", out)
    assert not out.exists()


def test_unknown_method(micro_world, micro_models, tmp_path, capsys):
    out = tmp_path / "run"
    argv = _unlearn_argv(micro_world, micro_models, out, "--method", "gradif")
    _expect_error(capsys, argv, r"unknown method 'gradif'; did you mean 'graddiff'", out)
    assert not out.exists()


def test_unknown_config_key(micro_world, micro_models, tmp_path, capsys):
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("forget_splt: forget10\n")
    argv = _unlearn_argv(micro_world, micro_models, out, "--config", str(recipe))
    _expect_error(capsys, argv, r"unknown config key 'forget_splt'.*did you mean 'forget_split'", out)
    assert not out.exists()


def test_model_path_that_does_not_exist(micro_world, micro_models, tmp_path, capsys):
    out = tmp_path / "run"
    argv = _unlearn_argv(micro_world, micro_models, out, "--model_name_or_path", str(tmp_path / "no-model"))
    _expect_error(capsys, argv, r"model path .* does not exist", out)
    assert not out.exists()


def test_answer_longer_than_max_length(micro_world, micro_models, tmp_path, capsys):
    out = tmp_path / "run"
    argv = _unlearn_argv(micro_world, micro_models, out, "--max_length", "16")
    _expect_error(capsys, argv, r"exceeds max_length=16.*raise --max_length", out)
    assert not out.exists()


def test_nan_loss_fails_the_run_with_one_line(micro_world, micro_models, tmp_path, capsys, monkeypatch):
    module = tmp_path / "nan_method_pkg.py"
    module.write_text(
        "from llm_unlearn.methods import Term\n"
        "def nan_method(model, forget, retain, ctx):\n"
        "    loss = model(input_ids=forget['input_ids']).logits.mean() * float('nan')\n"
        "    return {'forget': Term(loss, stream='forget')}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    argv = _unlearn_argv(micro_world, micro_models, out, "--method", "nan_method_pkg.nan_method")
    _expect_error(
        capsys, argv, r"non-finite at step 0; at the first step, before any update: check the data", out
    )
    assert json.loads((out / "status.json").read_text())["state"] == "failed"
    # eval refuses a failed run
    argv = ["eval", "--model_name_or_path", str(out), "--data_dir", str(micro_world),
            "--reference_model", str(micro_models["retain"]["forget10"])]  # fmt: skip
    _expect_error(capsys, argv, r"is failed.*needs a complete run")


def test_existing_output_dir_is_refused(micro_world, micro_models, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "something.txt").write_text("x")
    _expect_error(
        capsys, _unlearn_argv(micro_world, micro_models, out), r"exists and is not an llm-unlearn run"
    )


def test_eval_without_a_reference_computes_all_but_forget_quality(
    micro_world, micro_models, tmp_path, capsys
):
    # How the reference's own eval.json (for --reference_eval) is made.
    argv = ["eval", "--model_name_or_path", str(micro_models["retain"]["forget10"]), "--data_dir", str(micro_world),
            "--output_dir", str(tmp_path / "e"), "--max_new_tokens", "4"]  # fmt: skip
    assert main(argv) == 0
    assert "forget quality not computed" in capsys.readouterr().out
    result = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert "forget_quality" not in result["metrics"] and "model_utility" in result["metrics"]
    argv = ["eval", "--model_name_or_path", str(micro_models["target"]), "--data_dir", str(micro_world),
            "--reference_eval", str(tmp_path / "e" / "eval.json"), "--output_dir", str(tmp_path / "t"),
            "--max_new_tokens", "4"]  # fmt: skip
    assert main(argv) == 0
    assert (
        0 <= json.loads((tmp_path / "t" / "eval.json").read_text())["metrics"]["forget_quality"]["value"] <= 1
    )


def test_eval_of_a_run_uses_its_settings_and_keeps_its_own_evaluation(
    micro_world, micro_models, tmp_path, capsys
):
    run = tmp_path / "run"
    assert (
        main(
            _unlearn_argv(micro_world, micro_models, run, "--forget_split", "forget05", "--max_length", "128")
        )
        == 0
    )
    own = json.loads((run / "eval.json").read_text())
    # Nothing but the run: its data, split, formatting and reference, as its final evaluation had them.
    assert main(["eval", "--model_name_or_path", str(run)]) == 0
    again = json.loads((run / "eval.json").read_text())
    assert again["meta"]["forget_split"] == own["meta"]["forget_split"] == "forget05_perturbed"
    assert again["meta"]["max_length"] == 128
    assert again["metrics"]["forget_quality"] == own["metrics"]["forget_quality"]
    # Other settings would replace the run's own numbers: refused, and written elsewhere when asked.
    _expect_error(capsys, ["eval", "--model_name_or_path", str(run), "--forget_split", "forget10"],
                  r"eval\.json holds its own evaluation, which --forget_split forget10 \(the run's: forget05\) would "
                  r"replace; pass --output_dir DIR")  # fmt: skip
    assert json.loads((run / "eval.json").read_text()) == again
    assert main(["eval", "--model_name_or_path", str(run), "--forget_split", "forget10",
                 "--output_dir", str(tmp_path / "f10")]) == 0  # fmt: skip
    assert (
        json.loads((tmp_path / "f10" / "eval.json").read_text())["meta"]["forget_split"]
        == "forget10_perturbed"
    )
    # A recorded folder that has gone is named as the run's, with the option that replaces it.
    config = (run / "unlearn_config.yaml").read_text()
    (run / "unlearn_config.yaml").write_text(
        config.replace(str(Path(micro_world).resolve()), "/nonexistent/world")
    )
    _expect_error(capsys, ["eval", "--model_name_or_path", str(run)],
                  r"the data_dir that .*unlearn_config\.yaml records, /nonexistent/world, does not exist; pass "
                  r"--data_dir")  # fmt: skip
    (run / "unlearn_config.yaml").write_text(config)
    # The same data moved elsewhere is the run's data (its split hashes match); other data is not.
    shutil.copytree(micro_world, tmp_path / "moved")
    assert main(["eval", "--model_name_or_path", str(run), "--data_dir", str(tmp_path / "moved")]) == 0
    forget = tmp_path / "moved" / "forget05.json"
    forget.write_text(forget.read_text().replace("?", " ?", 1))
    _expect_error(capsys, ["eval", "--model_name_or_path", str(run), "--data_dir", str(tmp_path / "moved")],
                  r"which the data .*moved \(the run's: .*\) would replace")  # fmt: skip
    # From Python too: evaluate_with_reference with its own defaults (max_length 1024, forget10) into the
    # run's eval.json wrote them there as the run's numbers.
    from llm_unlearn.data.args import DataArgs
    from llm_unlearn.eval.args import EvalArgs
    from llm_unlearn.pipeline.evaluate import evaluate_with_reference
    from llm_unlearn.runs.folder import RunError

    before = (run / "eval.json").read_text()
    # The same settings from Python (DataArgs' retain_split None is the pair the run recorded) re-evaluate.
    settings = {"max_length": 128, "forget_split": "forget05"}
    evaluate_with_reference(str(run), DataArgs(data_dir=str(micro_world), **settings),
                            EvalArgs(reference_model=str(micro_models["retain"]["forget10"]), max_new_tokens=8),
                            out_path=run / "eval.json")  # fmt: skip
    before = (run / "eval.json").read_text()
    with pytest.raises(RunError, match=r"eval\.json holds its own evaluation, which .*--forget_split forget10 \(the "
                                       r"run's: forget05\).*in Python: another out_path"):  # fmt: skip
        evaluate_with_reference(str(run), DataArgs(data_dir=str(micro_world)),
                                EvalArgs(reference_model=str(micro_models["retain"]["forget10"])),
                                out_path=run / "eval.json")  # fmt: skip
    assert (run / "eval.json").read_text() == before


def test_unknown_command_suggests(capsys):
    assert main(["unlern"]) == 2
    assert "did you mean 'unlearn'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--forget_splits", "forget77"], "unknown --forget_splits entry 'forget77'"),
        (["--forget_splits", "forget10,forget5"], "did you mean 'forget05'"),
        (["--models", "EXISTING"], "models folder .* exists"),
    ],
)
def test_world_command_refuses_before_writing_anything(tmp_path, capsys, extra, message):
    (tmp_path / "EXISTING").mkdir()
    extra = [str(tmp_path / a) if a == "EXISTING" else a for a in extra]
    argv = ["world", "--out", str(tmp_path / "w"), "--size", "micro", *extra]
    assert main(argv) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "w").exists()


def test_world_command_writes_a_world_and_copies_its_models(tmp_path, capsys):
    assert (
        main(["world", "--out", str(tmp_path / "w"), "--size", "micro", "--models", str(tmp_path / "m")]) == 0
    )
    assert (tmp_path / "w" / "forget10_perturbed.json").is_file()
    for name in ("base", "target", "retain_forget10"):
        assert (tmp_path / "m" / name / "model.safetensors").is_file()
    assert (
        main(["world", "--out", str(tmp_path / "w2"), "--size", "micro", "--models", str(tmp_path / "m")])
        == 2
    )
    assert "exists" in capsys.readouterr().err


def test_train_command_fine_tunes_on_a_split(micro_world, micro_models, tmp_path, capsys):
    out = tmp_path / "ft"
    argv = ["train", "--model_name_or_path", str(micro_models["base"]), "--data_dir", str(micro_world),
            "--train_split", "forget10", "--output_dir", str(out), "--max_steps", "2", "--learning_rate", "1e-2",
            "--use_cpu", "true", "--report_to", "none"]  # fmt: skip
    assert main(argv) == 0
    before = load_file(Path(micro_models["base"]) / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert any(not (before[k] == after[k]).all() for k in before)
    assert not (out / "training_args.bin").exists()
    # A second run to the same folder would replace the first model when it ends: refused before it starts.
    assert main(argv) == 2
    assert f"output dir {out} exists and is not empty" in capsys.readouterr().err
    kept = load_file(out / "model.safetensors")
    assert all((kept[k] == after[k]).all() for k in after)


def test_a_token_on_the_command_line_is_refused_and_never_written(
    micro_world, micro_models, tmp_path, capsys
):
    out = tmp_path / "run"
    argv = _unlearn_argv(
        micro_world, micro_models, out, "--hub_token", "hf_secret_value", "--do_final_eval", "false"
    )
    _expect_error(capsys, argv, r"--hub_token is refused: a token on the command line .*set HF_TOKEN", out)
    assert not out.exists()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("hub_token: hf_secret_value\n")
    argv = _unlearn_argv(micro_world, micro_models, out, "--config", str(recipe), "--do_final_eval", "false")
    _expect_error(
        capsys,
        argv,
        r"--hub_token is refused: a token in a recipe is shared with the recipe; set HF_TOKEN",
        out,
    )
    assert not out.exists()
    # Tokens reach a run only through the environment: none is written to the run directory.
    assert main(_unlearn_argv(micro_world, micro_models, out, "--do_final_eval", "false")) == 0
    command = json.loads((out / "run_info.json").read_text())["command"]
    assert command.startswith("llm-unlearn unlearn --model_name_or_path")
    assert (
        "hub_token: <redacted>" in (out / "unlearn_config.yaml").read_text()
        or "hub_token: null" in (out / "unlearn_config.yaml").read_text()
    )


def test_ls_lists_methods_and_recipes(capsys):
    assert main(["ls"]) == 0
    printed = capsys.readouterr().out
    assert "graddiff" in printed and "ga " in printed and "recipes/world/graddiff.yaml" in printed


def test_same_seed_and_config_twice_gives_identical_weights_and_eval(micro_world, micro_models, tmp_path):
    """Determinism end to end: NGDiff + GeN (probe batches, fitted lr) and the evaluation after it."""
    runs = [tmp_path / "first", tmp_path / "second"]
    for out in runs:
        argv = _unlearn_argv(micro_world, micro_models, out, "--method", "ngdiff", "--gen", "true",
                             "--gen_interval", "1", "--max_steps", "3", "--per_device_train_batch_size", "2")  # fmt: skip
        assert main(argv) == 0
    first, second = ((out / "model.safetensors").read_bytes() for out in runs)
    assert first == second
    evals = [json.loads((out / "eval.json").read_text()) for out in runs]
    assert evals[0]["metrics"] == evals[1]["metrics"]  # every metric and per-sample value, exactly
    logs = [
        [{k: v for k, v in json.loads(line).items() if not k.startswith("train_") or k == "train_loss"}
         for line in (out / "train_log.jsonl").read_text().splitlines()]
        for out in runs
    ]  # fmt: skip
    assert any("gen_eta_star" in row for row in logs[0]) and logs[0] == logs[1]


def test_lora_runs_with_the_same_seed_are_identical_and_another_seed_starts_the_adapters_elsewhere(
    micro_world, micro_models, tmp_path
):
    import torch

    outs = {name: tmp_path / name for name in ("a", "b", "other")}
    for name, out in outs.items():
        seed = "3" if name == "other" else "0"
        argv = _unlearn_argv(micro_world, micro_models, out, "--use_lora", "true", "--seed", seed,
                             "--do_final_eval", "false", "--max_steps", "2")  # fmt: skip
        assert main(argv) == 0
    weights = {name: load_file(out / "adapter" / "adapter_model.safetensors") for name, out in outs.items()}
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert any(not torch.equal(weights["a"][k], weights["other"][k]) for k in weights["a"])


def test_run_without_output_dir_goes_to_a_folder_named_by_its_settings(
    micro_world, micro_models, tmp_path, monkeypatch, capsys
):
    # Trainer's default folder (`trainer_output`) is shared by every run; ours is named by method and split,
    # so a rerun of the same command finds its own folder (resume, or the "complete run" refusal).
    monkeypatch.chdir(tmp_path)
    argv = [a for a in _unlearn_argv(micro_world, micro_models, "x", "--do_final_eval", "false")]
    i = argv.index("--output_dir")
    del argv[i : i + 2]
    assert main(argv) == 0
    assert "run complete: runs/graddiff-forget10" in capsys.readouterr().out
    status = json.loads((tmp_path / "runs/graddiff-forget10/status.json").read_text())
    assert status["state"] == "complete"
    assert not (tmp_path / "trainer_output").exists()
    assert main(argv) != 0
    assert "runs/graddiff-forget10 holds a complete run" in capsys.readouterr().err
    assert main([*argv, "--method", "ga"]) == 0
    assert (tmp_path / "runs/ga-forget10/status.json").exists()


def test_disable_tqdm_silences_every_progress_bar(micro_world, micro_models, tmp_path, capsys):
    from transformers.utils import logging as hf_logging

    try:
        assert main(_unlearn_argv(micro_world, micro_models, tmp_path / "run", "--disable_tqdm", "true")) == 0
        err = capsys.readouterr().err
        assert "it/s]" not in err and "Loading weights" not in err  # tqdm's rate, transformers' bar
        assert (tmp_path / "run" / "eval.json").is_file()
    finally:
        hf_logging.enable_progress_bar()


def test_train_recipe_without_output_dir_runs_into_runs_finetune(
    micro_world, micro_models, tmp_path, monkeypatch
):
    # A fine-tune recipe's own keys (train_split) are read with train's options, not unlearn's.
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "ft.yaml"
    recipe.write_text(
        f"model_name_or_path: {micro_models['base']}\ndata_dir: {micro_world}\ntrain_split: forget10\n"
        "max_steps: 1\nuse_cpu: true\nreport_to: none\n"
    )
    assert main(["train", "--config", str(recipe)]) == 0
    assert (tmp_path / "runs/finetune-forget10/model.safetensors").is_file()


def test_world_rerun_after_an_interrupt_reuses_the_world_and_builds_the_models(tmp_path, capsys, monkeypatch):
    import llm_unlearn.cli.commands as commands

    argv = ["world", "--out", str(tmp_path / "w"), "--size", "micro", "--models", str(tmp_path / "m")]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(commands, "_copy_models", interrupted)
        assert main(argv) == 130
    err = capsys.readouterr().err
    assert "a world already written is reused" in err
    assert not (tmp_path / "m").exists()
    assert main(argv) == 0
    assert "(the same settings, unedited): reused" in capsys.readouterr().out
    assert (tmp_path / "m" / "target" / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    mask = os.umask(0)
    os.umask(mask)
    for folder in ("w", "m"):  # as mkdir would make them, not mkdtemp's 0700: others may read a world
        assert (tmp_path / folder).stat().st_mode & 0o777 == 0o777 & ~mask, folder
    assert main(["world", "--out", str(tmp_path / "w"), "--size", "micro", "--seed", "1"]) == 2
    assert "already exists" in capsys.readouterr().err  # other settings: not ours to reuse
    (tmp_path / "w" / "forget05_perturbed.json").unlink()  # edited by hand: not what the models were built on
    assert main(["world", "--out", str(tmp_path / "w"), "--size", "micro"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_models_folder_made_meanwhile_is_named_not_the_temporary_one(tmp_path, capsys, monkeypatch):
    import llm_unlearn.models.build as build

    real = build.build_default_models

    def racing(world_dir, **kwargs):  # a second `world --models` finished first
        (tmp_path / "m" / "target").mkdir(parents=True)
        return real(world_dir, **kwargs)

    monkeypatch.setattr(build, "build_default_models", racing)
    argv = ["world", "--out", str(tmp_path / "w"), "--size", "micro", "--models", str(tmp_path / "m")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'm'} appeared while this command wrote it" in err and "pass another --models" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["target"]  # the other's folder, untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_world_folder_made_meanwhile_is_refused_by_name(tmp_path, monkeypatch):
    from llm_unlearn.data import world

    real = world.validate_world

    def racing(folder):
        real(folder)
        (tmp_path / "w").mkdir()
        (tmp_path / "w" / "full.json").write_text("{}\n")

    monkeypatch.setattr(world, "validate_world", racing)
    with pytest.raises(FileExistsError, match=f"{tmp_path / 'w'} appeared while this command wrote it"):
        world.write_world(tmp_path / "w", world.WorldConfig(**world.WORLD_SIZES["micro"]))
    assert [p.name for p in tmp_path.iterdir()] == ["w"]


def test_an_interrupted_command_that_does_not_checkpoint_says_it_starts_over(capsys, monkeypatch):
    import llm_unlearn.cli.commands as commands

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "cmd_ls", interrupted)
    assert main(["ls"]) == 130
    assert capsys.readouterr().err.strip() == (
        "error: interrupted; nothing half-written was kept; rerun the same command to start again"
    )


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has it (pids are not reused this soon)


def test_a_run_is_not_published_before_its_final_evaluation(
    micro_world, micro_models, tmp_path, monkeypatch, capsys
):
    # Training ends before the command's evaluation: until eval.json is written the run is complete but
    # its numbers are not there. A push in that window, or after a kill there, would publish "not evaluated".
    import llm_unlearn.pipeline.evaluate as evaluate
    from llm_unlearn.runs.folder import FINAL_EVAL, read_status, run_state, write_status

    out = tmp_path / "run"
    argv = _unlearn_argv(micro_world, micro_models, out, "--disable_tqdm", "true")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(evaluate, "evaluate_with_reference", killed)
        assert main(argv) == 130
    status = read_status(out)
    assert status[FINAL_EVAL] == "pending" and run_state(status) == "evaluating"  # this process is alive
    capsys.readouterr()
    push = ["push", str(out), "--repo_id", "me/x", "--dry_run", "--output_dir", str(tmp_path / "staged")]
    assert main(push) == 2
    assert f"run {out} is being evaluated by process {os.getpid()}" in capsys.readouterr().err
    write_status(out, "complete", **{k: v for k, v in status.items() if k not in ("state", "time", "pid")},
                 pid=_dead_pid())  # fmt: skip
    assert run_state(read_status(out)) == "unevaluated"
    assert main(push) == 2
    assert "its final evaluation was cut short; push needs its eval.json" in capsys.readouterr().err
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 2
    steps = (out / "train_log.jsonl").read_text()
    assert main([*argv, "--mia", "false"]) == 0  # the same command again: evaluates only, as it now says
    assert (out / "train_log.jsonl").read_text() == steps
    assert "mia: false" in (out / "unlearn_config.yaml").read_text()  # the settings eval.json was made with
    assert "--mia false" in json.loads((out / "run_info.json").read_text())["command"]
    assert (out / "eval.json").is_file() and FINAL_EVAL not in read_status(out)
    assert run_state(read_status(out)) == "complete"
    assert main(push) == 0
    card = (tmp_path / "staged" / "README.md").read_text()
    assert "It was made and evaluated with llm-unlearn" in card


def test_an_unevaluated_run_is_finished_by_eval_and_refused_by_other_commands(
    micro_world, micro_models, tmp_path, capsys
):
    from llm_unlearn.runs.folder import FINAL_EVAL, read_status, write_status

    out = tmp_path / "run"
    assert (
        main(
            _unlearn_argv(
                micro_world, micro_models, out, "--do_final_eval", "false", "--disable_tqdm", "true"
            )
        )
        == 0
    )
    assert FINAL_EVAL not in read_status(out)  # nothing follows: complete as it is
    write_status(out, "complete", **{FINAL_EVAL: "pending"}, pid=_dead_pid(), host=socket.gethostname())
    capsys.readouterr()
    assert main(_unlearn_argv(micro_world, micro_models, out, "--do_final_eval", "false")) == 2
    assert "whose final evaluation was cut short; evaluate it" in capsys.readouterr().err
    assert main(["probe", str(out), "--budgets", "0"]) == 2
    argv = ["eval", "--model_name_or_path", str(out), "--data_dir", str(micro_world),
            "--reference_model", str(micro_models["retain"]["forget10"]), "--max_new_tokens", "4"]  # fmt: skip
    assert main(argv) == 0
    assert FINAL_EVAL not in read_status(out) and read_status(out)["state"] == "complete"


def test_finishing_a_cut_short_evaluation_keeps_what_trained_on_record(micro_world, micro_models, tmp_path):
    """The evaluation's settings may differ once training is over; the record of how it trained may not."""
    import yaml

    from llm_unlearn.runs.folder import FINAL_EVAL, write_status

    out = tmp_path / "run"
    trained = ["--do_final_eval", "false", "--dataloader_drop_last", "true", "--eval_batch_size", "16"]
    assert main(_unlearn_argv(micro_world, micro_models, out, *trained)) == 0
    write_status(out, "complete", **{FINAL_EVAL: "pending"}, pid=_dead_pid(), host=socket.gethostname())
    assert main(_unlearn_argv(micro_world, micro_models, out, "--eval_batch_size", "32")) == 0
    saved = yaml.safe_load((out / "unlearn_config.yaml").read_text())
    assert saved["dataloader_drop_last"] is True  # how it trained
    assert saved["eval_batch_size"] == 32 == json.loads((out / "eval.json").read_text())["meta"]["batch_size"]


def test_local_paths_are_saved_absolute_and_resume_however_spelled(
    micro_world, micro_models, tmp_path, monkeypatch
):
    import yaml

    from llm_unlearn.runs.resume import differences

    monkeypatch.chdir(tmp_path)
    rel_world, rel_model = os.path.relpath(micro_world), os.path.relpath(micro_models["target"])
    argv = [a if a not in (str(micro_world), str(micro_models["target"])) else (rel_world if a == str(micro_world) else rel_model)
            for a in _unlearn_argv(micro_world, micro_models, "run")]  # fmt: skip
    assert rel_world in argv and rel_model in argv
    assert main(argv) == 0
    saved = yaml.safe_load((tmp_path / "run" / "unlearn_config.yaml").read_text())
    assert saved["data_dir"] == str(Path(micro_world).resolve())
    assert saved["model_name_or_path"] == str(Path(micro_models["target"]).resolve())
    # ... and the run's eval.json names them as its config does (it named "run" and the relative world)
    meta = json.loads((tmp_path / "run" / "eval.json").read_text())["meta"]
    assert meta["model"] == str((tmp_path / "run").resolve())
    assert meta["data"]["data_dir"] == saved["data_dir"]
    # A run saved with relative paths (before) resumes from the same folder given absolute, and back.
    old = saved | {"data_dir": rel_world}
    assert differences(old, saved) == [] and differences(saved, old) == []
    assert differences(saved, saved | {"data_dir": str(tmp_path)}) != []


def test_published_files_hide_folder_names_with_spaces(
    micro_world, micro_models, tmp_path, monkeypatch, capsys
):
    # A path in free text ends at the first space for the redaction's pattern; the run's own paths are known.
    root = tmp_path / "Jane Doe" / "acme secret"
    shutil.copytree(micro_world, root / "world")
    monkeypatch.chdir(root)
    argv = _unlearn_argv(root / "world", micro_models, root / "runs" / "r", "--disable_tqdm", "true")
    assert main(argv) == 0
    staged = tmp_path / "staged"
    assert (
        main(
            ["push", str(root / "runs" / "r"), "--repo_id", "me/x", "--dry_run", "--output_dir", str(staged)]
        )
        == 0
    )
    leaks = [
        f"{p.name}: {line.strip()[:120]}"
        for p in staged.rglob("*")
        if p.is_file() and p.suffix in (".md", ".json", ".yaml", ".jsonl")
        for line in p.read_text(encoding="utf-8", errors="replace").splitlines()
        if "Jane Doe" in line or "acme secret" in line
    ]
    assert not leaks, "\n".join(leaks)


@pytest.mark.parametrize(
    "argv",
    [
        ["report"],
        ["world"],
        ["push", "x"],
        ["probe"],
        ["distill", "x"],
        ["demo", "--size", "huge"],
        ["ls", "extra"],
    ],
)
def test_argument_errors_of_every_subcommand_are_one_line_naming_its_help(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and err.startswith("error: ") and f"see `llm-unlearn {argv[0]} --help`" in err
    ), err


def test_an_interrupt_in_the_undo_copy_names_the_distill_command_that_finishes_it(
    micro_world, micro_models, tmp_path, monkeypatch, capsys
):
    import shlex

    import llm_unlearn.pipeline.distill as distill

    out = tmp_path / "run"
    argv = _unlearn_argv(micro_world, micro_models, out, "--undo_alpha", "0.5", "--undo_max_steps", "1",
                         "--disable_tqdm", "true")  # fmt: skip

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(distill, "distill", interrupted)
        assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        f"error: interrupted; {out} is complete; finish its UNDO copy with `llm-unlearn distill "
    )
    command = shlex.split(err.split("`")[1])
    assert main(command[1:]) == 0
    assert (tmp_path / "run-undo" / "eval.json").is_file()


def test_config_takes_the_equals_form_like_every_option(tmp_path):
    from llm_unlearn.cli.parse import parse_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: ngdiff\nlearning_rate: 0.2\n")
    for argv in (["--config", str(recipe)], [f"--config={recipe}"]):
        _, _, config, _ = parse_config([*argv, "--output_dir", str(tmp_path / "o"), "--seed", "3"])
        assert (config.method, config.learning_rate, config.seed) == ("ngdiff", 0.2, 3)


@pytest.mark.slow
def test_train_under_two_ranks_writes_one_model_once(micro_world, micro_models, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "ft"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "llm_unlearn", "train",
           "--model_name_or_path", str(micro_models["base"]), "--data_dir", str(micro_world),
           "--train_split", "retain90", "--output_dir", str(out), "--max_steps", "3", "--disable_tqdm", "true"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("fine-tuned model written to") == 1  # the first rank saves and says so
    said = [line for line in proc.stderr.splitlines() if line.startswith("[llm-unlearn]")]
    assert said and len(said) == len(set(said)), said  # progress is said by the first rank only
    assert (out / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no rank's temporary folder left


@pytest.mark.parametrize(
    ("rank", "shown"),
    [
        ("0", ["[llm-unlearn] said", "[llm-unlearn] warned", "[llm-unlearn] failed"]),
        ("1", ["[llm-unlearn] failed"]),
    ],
)
def test_only_the_first_rank_logs_progress(rank, shown):
    import subprocess
    import sys

    # Every rank runs the same steps: each rank's progress and warnings would print every line once per rank.
    code = (
        "import logging; from llm_unlearn.cli.commands import _setup_logging; _setup_logging(); "
        "log = logging.getLogger('llm_unlearn'); log.info('said'); log.warning('warned'); log.error('failed')"
    )
    env = {**os.environ, "RANK": rank}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == shown


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="bf16 is supported where a GPU is visible"
)
def test_a_gpu_recipe_on_a_cpu_names_the_bf16_option(tmp_path, capsys):
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "tofu" / "graddiff.yaml"
    _expect_error(capsys, ["unlearn", "--config", str(recipe), "--output_dir", str(tmp_path / "o")],
                  r"--bf16 true needs a GPU with bfloat16 and none is visible \(.*graddiff\.yaml sets it\); pass "
                  r"--bf16 false")  # fmt: skip


def test_a_broken_pipe_other_than_stdout_is_an_error_line(monkeypatch, capsys):
    from llm_unlearn.cli import commands

    def broken(argv):
        raise BrokenPipeError(32, "Broken pipe")  # a worker's pipe or a socket, while stdout is fine

    monkeypatch.setattr(commands, "cmd_ls", broken)
    assert main(["ls"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_ctrl_c_dropped_by_a_finalizer_while_starting_still_interrupts(tmp_path):
    """A SIGINT landing while a `__del__` runs (torch's import runs many) raises inside it, where Python
    prints and drops it: the command then ran to the end with exit 0."""
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        "import time\n\n"
        "import llm_unlearn.cli.commands as c\n\n\n"
        "class Dies:\n"
        "    def __del__(self):\n"
        "        raise KeyboardInterrupt  # what a SIGINT landing in a finalizer does\n\n\n"
        "real = c._setup_logging\n\n\n"
        "def setup():\n"
        "    d = Dies()\n"
        "    del d\n"
        "    time.sleep(2)  # the rest of start-up: torch's import takes seconds\n"
        "    real()\n\n\n"
        "c._setup_logging = setup\n"
        "sys.exit(c.main(['ls']))\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 130, done.stderr
    assert "error: interrupted while starting; nothing was done" in done.stderr
    assert "methods" not in done.stdout.lower()  # `ls` never ran
