"""benchmarks/named_answers.py: the share of greedy answers that contain the reference answer, per role."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import named_answers  # noqa: E402


def test_named_share_is_a_case_insensitive_substring_count_by_hand(tmp_path, capsys):
    rows = [
        {"answer": "George Orwell", "generated": "It was george orwell."},
        {"answer": "Jane Austen", "generated": "A renowned author."},
        {"answer": " Paris ", "generated": "The capital is Paris."},
    ]
    assert named_answers.named_share(rows) == pytest.approx(2 / 3)
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval.json").write_text(json.dumps({"generations": {"ra": rows, "wf": rows[:1]}}))
    named_answers.main([str(run)])
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.endswith("| nan | nan | 0.667 | 1.000 |")


def test_an_eval_without_generations_is_one_clear_error(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({"metrics": {}}))
    with pytest.raises(SystemExit, match="stores no generations"):
        named_answers.main([str(tmp_path / "eval.json")])


def test_a_missing_eval_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="does not exist: pass an eval.json"):
        named_answers.main([str(tmp_path / "run")])
