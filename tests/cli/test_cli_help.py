"""`--help` and `--version` as a new user types them: a real `llm-unlearn` process, exit 0, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llm_unlearn.cli.commands import SUBCOMMANDS


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = "import sys; from llm_unlearn.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_help_exits_zero_and_describes_that_command(command):
    result = _run(command, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"llm-unlearn {command}" in result.stdout  # its own usage, not another command's output


def test_top_level_help_and_version():
    top = _run("--help")
    assert top.returncode == 0 and "`--debug`" in top.stdout  # how to see a traceback
    version = _run("--version")
    assert version.returncode == 0 and version.stdout.startswith("llm-unlearn ")


def test_a_percent_sign_in_a_help_string_is_printed_not_formatted():
    from llm_unlearn.cli.parse import CONFIG_CLASSES, _Parser

    parser = _Parser(CONFIG_CLASSES, prog="llm-unlearn unlearn")
    text = parser.format_help()  # raises TypeError/ValueError if any help string has a bare %
    assert "80% floor" in text


def test_unlearn_help_shows_our_options_in_sections_before_the_trainer_options():
    result = _run("unlearn", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    titles = ["model:", "data:", "unlearning method and combination:", "GeN learning rate", "stop rule",
              "training (", "evaluation:", "transformers.TrainingArguments options"]  # fmt: skip
    positions = [text.index(f"\n{title}") for title in titles]
    assert positions == sorted(positions)  # every section, in a recipe's order, Trainer's last
    assert text.index("--method") < text.index("--adam_beta1")
    assert text.index("--stop_rule") < text.index("--adam_beta1")
    assert text.index("--adam_beta1") > text.index("\ntransformers.TrainingArguments options")
    assert "[--config RECIPE.yaml]" in text.splitlines()[0]  # a one-line usage, not 150 lines of flags
    # The CLI takes --debug first (a traceback): Trainer's --debug MODES is not what the flag does here.
    assert "--debug               (anywhere on the line) show the full traceback" in text


@pytest.mark.parametrize("command", ["train", "eval"])
def test_train_and_eval_help_list_model_and_data_options_first(command):
    from transformers import TrainingArguments

    from llm_unlearn.cli.parse import _Parser
    from llm_unlearn.data.args import DataArgs
    from llm_unlearn.eval.args import EvalArgs
    from llm_unlearn.models.args import LoadArgs, ModelArgs
    from llm_unlearn.models.build import FinetuneArgs

    classes = {"train": (ModelArgs, DataArgs, FinetuneArgs, TrainingArguments),
               "eval": (LoadArgs, DataArgs, EvalArgs)}[command]  # fmt: skip
    text = _Parser(classes, prog=f"llm-unlearn {command}").format_help()
    assert text.index("\nmodel:") < text.index("--model_name_or_path") < text.index("\ndata:")
    assert text.index("\ndata:") < text.index("--forget_split")
    if command == "train":
        assert text.index("--train_split") < text.index("--output_dir") < text.index("--adam_beta1")
        assert text.index("\nfine-tuning:") < text.index("\ntraining (") < text.index("\ntransformers.")
    else:
        assert "transformers.TrainingArguments" not in text and "\nevaluation:" in text


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["help"], "did you mean 'llm-unlearn --help'?"),
        (["help", "unlearn"], "did you mean 'llm-unlearn unlearn --help'?"),
        (["-help"], "did you mean 'llm-unlearn --help'?"),
        (["version"], "did you mean 'llm-unlearn --version'?"),
        (["unlern"], "did you mean 'unlearn'?"),
        (["unlearn", "help"], "did you mean '--help'?"),
        (["unlearn", "-help"], "did you mean '--help'?"),
        (["eval", "--hlep"], "did you mean 'help'?"),
    ],
)
def test_help_like_mistakes_get_a_did_you_mean_line(argv, hint, capsys):
    from llm_unlearn.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and hint in err and len(err.strip().splitlines()) == 1


def test_each_option_states_its_default_once():
    from llm_unlearn.cli.parse import CONFIG_CLASSES, _Parser

    parser = _Parser(CONFIG_CLASSES, prog="llm-unlearn unlearn")
    for action in parser._actions:
        text = parser.formatter_class(prog="x")._get_help_string(action) or ""
        assert text.count("(default:") <= 1, action.option_strings


def test_python_dash_m_runs_the_command_and_eval_help_names_output_dir():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for module in ("llm_unlearn", "llm_unlearn.cli"):
        result = subprocess.run(
            [sys.executable, "-m", module, "--version"], capture_output=True, text=True, env=env
        )
        assert result.returncode == 0 and result.stdout.startswith("llm-unlearn "), result.stderr[-1000:]
    text = _run("eval", "--help").stdout
    assert "--output_dir DIR" in text  # eval's own option, parsed apart from the dataclasses
    assert "--allow_pickle" in text and "--use_lora" not in text  # eval trains nothing: no LoRA options


def test_every_spelling_help_lists_is_accepted():
    """`--help` lists `--forget-split` beside `--forget_split`, and `--no_mia` (`--no-mia`) beside `--mia`:
    each spelling it shows parses, to the same values."""
    from llm_unlearn.cli.parse import CONFIG_CLASSES, _Parser, parse_config

    model, data, config, evals = parse_config(
        ["--model-name-or-path=m", "--forget-split", "forget05", "--no_mia", "--no-eval-cache",
         "--no-do-final-eval", "--learning-rate", "0.01"]
    )  # fmt: skip
    assert (model.model_name_or_path, data.forget_split, config.learning_rate) == ("m", "forget05", 0.01)
    assert (evals.mia, evals.eval_cache, evals.do_final_eval) == (False, False, False)
    parser = _Parser(CONFIG_CLASSES, prog="llm-unlearn unlearn")
    negations = [a for a in parser._actions if any(o.startswith("--no_") for o in a.option_strings)]
    assert negations and all(a.help == f"The same as --{a.dest} false." for a in negations)
    text = parser.format_help()
    assert (
        "--no_mia, --no-mia    The same as --mia false.\n" in text
    )  # not "(default: False)", nor --mia's help


def test_the_command_line_takes_dashed_option_names(tmp_path, capsys):
    from llm_unlearn.cli import main

    # `world`'s own parser, and eval's --output_dir read before the dataclasses parse
    assert main(["world", "--out", str(tmp_path / "w"), "--size", "micro", "--n-authors", "3"]) == 0
    assert "world with 3 authors written" in capsys.readouterr().out
    argv = ["eval", "--model-name-or-path", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "o"),
            "--reference-eval", str(tmp_path / "ref.json")]  # fmt: skip
    assert main(argv) == 2
    assert (
        capsys.readouterr().err
        == f"error: reference eval file {tmp_path / 'ref.json'} does not exist; evaluate the reference first\n"
    )


def test_output_piped_into_a_reader_that_stops_early_ends_quietly():
    # `llm-unlearn ls | head -2`: the reader goes; no error line blaming the network, no traceback.
    code = "import sys; from llm_unlearn.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, "ls"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, bufsize=0)  # fmt: skip
    proc.stdout.read(10)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 141)  # 0 when everything fitted in the pipe before it closed
    assert "error" not in stderr and "Traceback" not in stderr, stderr
