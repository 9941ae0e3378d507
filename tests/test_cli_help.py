"""`--help` and `--version` as a new user types them: a real `llm-unlearn` process, exit 0, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llm_unlearn.cli import SUBCOMMANDS


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
    assert _run("--help").returncode == 0
    version = _run("--version")
    assert version.returncode == 0 and version.stdout.startswith("llm-unlearn ")


def test_a_percent_sign_in_a_help_string_is_printed_not_formatted():
    from llm_unlearn.config import CONFIG_CLASSES, _Parser

    parser = _Parser(CONFIG_CLASSES, prog="llm-unlearn unlearn")
    text = parser.format_help()  # raises TypeError/ValueError if any help string has a bare %
    assert "80% floor" in text
