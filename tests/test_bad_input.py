"""Bad input on the CLI: one line naming the problem and the fix, exit 2, nothing written. `pytest tests/test_bad_input.py`

Every case here fails before any model is loaded or any file is written (numeric ranges, YAML
syntax, paths); cases that need data or a model live in tests/test_cli.py.
"""

from __future__ import annotations

import re

import pytest

from llm_unlearn.cli import main

RANGE_CASES = [
    ("per_device_train_batch_size", "0", "at least 1"),
    ("retain_batch_size", "0", "at least 1"),
    ("gradient_accumulation_steps", "0", "at least 1"),
    ("num_train_epochs", "-2", "a positive number"),
    ("learning_rate", "-1", "a positive number"),
    ("learning_rate", "nan", "a positive number"),
    ("forget_weight", "-0.5", "a finite number >= 0"),
    ("retain_weight", "inf", "a finite number >= 0"),
    ("weight_decay", "-0.1", "a finite number >= 0"),
    ("max_grad_norm", "-1", ">= 0"),
    ("gen_interval", "0", "at least 1"),
    ("gen_gamma", "1.0", r"in \[0, 1\)"),
    ("warmup_steps", "-3", ">= 0"),
    ("eval_batch_size", "0", "at least 1"),
    ("max_new_tokens", "0", "at least 1"),
    ("max_length", "1", "at least 2"),
    ("npo_beta", "0", "a positive number"),
    ("simnpo_beta", "-1", "a positive number"),
    ("simnpo_gamma", "-0.5", "a finite number >= 0"),
    ("dpo_beta", "inf", "a positive number"),
    ("rmu_layer", "-1", ">= 0"),
    ("rmu_coefficient", "0", "a positive number"),
    ("undial_strength", "nan", "a positive number"),
    ("gc_chunks", "1", "at least 2"),
    ("gc_weight", "-1", "a finite number >= 0"),
]


def _expect_one_line(capsys, argv, pattern: str) -> str:
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert "Traceback" not in "\n".join(err)
    assert re.search(pattern, errors[0]), errors[0]
    return errors[0]


@pytest.mark.parametrize("option, value, requirement", RANGE_CASES, ids=lambda x: str(x))
def test_out_of_range_numbers_are_refused_before_any_work(capsys, tmp_path, option, value, requirement):
    out = tmp_path / "run"
    argv = ["unlearn", "--output_dir", str(out), "--model_name_or_path", str(tmp_path / "m"),
            "--data_dir", str(tmp_path), f"--{option}", value]  # fmt: skip
    _expect_one_line(capsys, argv, rf"--{option} {re.escape(value)}.* out of range; it must be {requirement}")
    assert not out.exists()


def test_broken_yaml_recipe_names_the_line(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: graddiff\nlearning_rate: [1e-5\n")
    _expect_one_line(
        capsys, ["unlearn", "--config", str(recipe)], r"not valid YAML .*line \d+.*fix its syntax"
    )


def test_bare_missing_model_name_is_not_a_hub_traceback(capsys, tmp_path, monkeypatch, micro_world):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    argv = ["unlearn", "--output_dir", str(out), "--model_name_or_path", "nope", "--data_dir", str(micro_world),
            "--do_final_eval", "false"]  # fmt: skip
    _expect_one_line(capsys, argv, r"no folder 'nope' here, and fetching it as a Hub id failed")
    assert not out.exists()


def test_eval_of_a_model_that_does_not_exist_says_so(capsys, tmp_path):
    argv = ["eval", "--model_name_or_path", "nope", "--reference_eval", str(tmp_path / "x.json")]
    _expect_one_line(capsys, argv, r"model nope does not exist here")
