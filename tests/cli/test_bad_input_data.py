"""Bad data and mismatched inputs are refused before any work, as one line. `pytest tests/test_bad_input_data.py`

Each case breaks a copy of the micro world (or a model copy, or a reference eval.json) in a way that
used to give a wrong number or a damaged run: a perturbed companion of other questions, a non-UTF-8
byte found only after training, a reference model with another vocabulary, a reference eval of other
questions. The command, run in-process, must exit 2 with exactly one `error: ` line (the last on
stderr, no traceback) that names the file or model; and no work may have started: no model loaded for
scoring or training, no run directory, no eval.json, every file as it was.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from llm_unlearn.cli import main
from tests.cli.test_bad_input import (
    _snapshot,  # every file's digest: what a refused command must leave unchanged
)


class WorkStarted(BaseException):
    """Raised by every entry point of real work; no `except` in the CLI catches it."""


def _options(options: dict[str, str]) -> list[str]:
    """`--key value` pairs; an empty value leaves the option out (a case that drops --reference_model)."""
    return [x for k, v in options.items() if v for x in (f"--{k}", v)]


@dataclass
class Env:
    tmp: Path
    world: Path
    models: dict
    reference_eval: Path

    @property
    def out(self) -> Path:
        return self.tmp / "run"

    @property
    def target(self) -> str:
        return str(self.models["target"])

    @property
    def retain_model(self) -> str:
        return str(self.models["retain"]["forget10"])

    def unlearn(self, **replace: str) -> list[str]:
        options = {
            "model_name_or_path": self.target, "data_dir": str(self.world), "forget_split": "forget10",
            "output_dir": str(self.out), "max_steps": "1", "per_device_train_batch_size": "4",
            "use_cpu": "true", "reference_model": self.retain_model, "max_new_tokens": "4",
        } | replace  # fmt: skip
        return ["unlearn", *_options(options)]

    def eval(self, **replace: str) -> list[str]:
        options = {
            "model_name_or_path": self.target, "data_dir": str(self.world), "reference_model": self.retain_model,
            "output_dir": str(self.out), "max_new_tokens": "4",
        } | replace  # fmt: skip
        return ["eval", *_options(options)]

    def rows(self, split: str) -> list[dict]:
        return [json.loads(line) for line in (self.world / f"{split}.json").read_text().splitlines() if line]

    def write_rows(self, split: str, rows: list[dict]) -> None:
        (self.world / f"{split}.json").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def edit_rows(self, split: str, edit: Callable[[int, dict], dict]) -> None:
        self.write_rows(split, [edit(i, dict(r)) for i, r in enumerate(self.rows(split))])

    def reference_copy(self, edit: Callable[[dict], None]) -> str:
        reference = json.loads(self.reference_eval.read_text())
        edit(reference)
        path = self.tmp / "reference_eval.json"
        path.write_text(json.dumps(reference))
        return str(path)


@dataclass
class Case:
    id: str
    argv: Callable[[Env], list[str]]
    pattern: str
    setup: Callable[[Env], None] = lambda env: None


def _other_questions(env: Env) -> None:
    """The bug report's case: forget10_perturbed holds the holdout's perturbed rows (forget quality 0.98)."""
    env.write_rows("forget10_perturbed", env.rows("holdout10_perturbed"))


def _non_utf8_byte(env: Env) -> None:
    path = env.world / "world_facts_perturbed.json"
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2][:20] + b"\xff" + lines[2][20:]
    path.write_bytes(b"\n".join(lines))


def _repeat_question(split: str, row: int, of: int, spell=lambda q: q) -> Callable[[Env], None]:
    def setup(env: Env) -> None:
        question = spell(env.rows(split)[of]["question"])
        env.edit_rows(split, lambda i, r: r | {"question": question} if i == row else r)

    return setup


def _other_vocabulary(env: Env) -> None:
    """A copy of the retain-only model whose tokenizer gives two tokens each other's ids (same size)."""
    model = env.tmp / "other_vocab"
    shutil.copytree(env.retain_model, model)
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    a, b = sorted(vocab)[10], sorted(vocab)[20]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))


def _no_hashes(reference: dict) -> None:
    for split in reference["meta"]["splits"].values():
        del split["questions_sha256"]


def _rename_question(env: Env) -> None:
    """The same split name, other questions: row 3 of forget10 and its companion reworded together."""
    for split in ("forget10", "forget10_perturbed"):
        env.edit_rows(
            split, lambda i, r: r | {"question": r["question"] + " Please answer."} if i == 3 else r
        )


def _fake_hub(monkeypatch: pytest.MonkeyPatch, world: Path) -> None:
    """`datasets.load_dataset("fake/tofu", config)` reads the world's `<config>.json`."""
    import datasets

    def load_dataset(name, config, split):
        path = world / f"{config}.json"
        if name != "fake/tofu" or not path.is_file():
            raise ValueError(f"BuilderConfig {config!r} not found")
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)


FIX_COMPANION = r"regenerate .*forget10_perturbed\.json from .*forget10\.json \(same questions, same order\)"

CASES = [
    # ---- a split and its perturbed companion: same questions, same order, same answers
    Case("perturbed_with_other_questions_eval", lambda e: e.eval(),
         rf"forget10_perturbed\.json row 1 asks .* where .*forget10\.json asks .*\(that question is not in .*forget10\.json\); {FIX_COMPANION}",
         setup=_other_questions),
    Case("perturbed_with_other_questions_unlearn", lambda e: e.unlearn(), r"forget10_perturbed\.json row 1 asks .*that question is not in",
         setup=_other_questions),
    Case("perturbed_in_another_order", lambda e: e.eval(),
         r"forget10_perturbed\.json row 1 asks .*\(that question is elsewhere in .*forget10\.json\)",
         setup=lambda e: e.write_rows("forget10_perturbed", e.rows("forget10_perturbed")[::-1])),
    Case("perturbed_one_row_short", lambda e: e.eval(), r"forget10_perturbed\.json has \d+ rows but .*forget10\.json has \d+",
         setup=lambda e: e.write_rows("forget10_perturbed", e.rows("forget10_perturbed")[:-1])),
    Case("perturbed_with_another_answer", lambda e: e.eval(), r"forget10_perturbed\.json row 2 answers 'Someone else\.' where",
         setup=lambda e: e.edit_rows("forget10_perturbed", lambda i, r: r | {"answer": "Someone else."} if i == 1 else r)),
    Case("holdout_perturbed_in_another_order", lambda e: e.eval(), r"holdout10_perturbed\.json row 1 asks .*elsewhere in .*holdout10\.json",
         setup=lambda e: e.write_rows("holdout10_perturbed", e.rows("holdout10_perturbed")[::-1])),
    Case("perturbed_with_other_questions_on_the_hub", lambda e: e.eval(data_dir="", dataset_name="fake/tofu"),
         r"fake/tofu:forget10_perturbed row 1 asks .*not in fake/tofu:forget10", setup=_other_questions),
    # ---- files that do not decode: named with line and byte, found before training
    Case("non_utf8_byte_in_an_eval_only_split", lambda e: e.unlearn(),
         r"world_facts_perturbed\.json line 3 \(byte \d+\) is not UTF-8 \(invalid start byte: b'\\xff'\); re-save the file as UTF-8",
         setup=_non_utf8_byte),
    Case("non_utf8_byte_in_an_eval_split_eval", lambda e: e.eval(), r"world_facts_perturbed\.json line 3 \(byte \d+\) is not UTF-8",
         setup=_non_utf8_byte),
    # ---- repeated questions and empty answers, by row
    Case("duplicated_question_in_the_forget_split", lambda e: e.unlearn(),
         r"split .*forget10\.json asks question .* 2 times \(rows 3 and 6\); .*keep one row per question",
         setup=_repeat_question("forget10", 5, 2)),
    # Spacing and case do not make another question, as in the forget/retain overlap check.
    Case("duplicated_question_respelled_in_the_forget_split", lambda e: e.unlearn(),
         r"split .*forget10\.json asks question .* 2 times \(rows 3 and 6\), spelled .* in row 3; .*keep one row per question",
         setup=_repeat_question("forget10", 5, 2, spell=lambda q: q.lower() + " ")),
    Case("duplicated_question_in_an_eval_split", lambda e: e.eval(),
         r"split .*real_authors_perturbed\.json asks question .* 2 times \(rows 1 and 2\)",
         setup=_repeat_question("real_authors_perturbed", 1, 0)),
    Case("duplicated_question_in_the_stop_rules_holdout", lambda e: e.unlearn(auto="true", do_final_eval="false"),
         r"split .*holdout10\.json asks question .* 2 times \(rows 1 and 4\)", setup=_repeat_question("holdout10", 3, 0)),
    Case("empty_answer_in_the_forget_split", lambda e: e.unlearn(), r"split .*forget10\.json row 5 has an empty answer \(question .*\); give it a non-empty answer or drop the row",
         setup=lambda e: e.edit_rows("forget10", lambda i, r: r | {"answer": "  "} if i == 4 else r)),
    Case("empty_perturbed_answer_in_an_eval_split", lambda e: e.unlearn(), r"world_facts_perturbed\.json row 3 has an empty perturbed_answer\[1\]",
         setup=lambda e: e.edit_rows("world_facts_perturbed", lambda i, r: r | {"perturbed_answer": ["x", "", "y"]} if i == 2 else r)),
    Case("empty_question_in_the_retain_split", lambda e: e.unlearn(), r"retain90\.json row 1 has an empty question",
         setup=lambda e: e.edit_rows("retain90", lambda i, r: r | {"question": ""} if i == 0 else r)),
    # ---- evaluation sets that overlap the forget set
    Case("eval_retain_set_shares_a_forget_question", lambda e: e.unlearn(),
         r"evaluation split retain_perturbed shares 1 question\(s\) with forget10 .*remove them from retain_perturbed",
         setup=lambda e: e.write_rows("retain_perturbed", e.rows("retain_perturbed")[1:] + e.rows("forget10_perturbed")[:1])),
    Case("holdout_shares_a_forget_question_without_the_stop_rule", lambda e: e.eval(),
         r"holdout split holdout10 shares 1 question\(s\) with forget10 .*membership inference needs questions the model never saw",
         setup=lambda e: (e.write_rows("holdout10", e.rows("holdout10")[1:] + e.rows("forget10")[:1]), (e.world / "holdout10_perturbed.json").unlink())),
    # ---- models used together share one vocabulary
    Case("reference_model_with_another_vocabulary_unlearn", lambda e: e.unlearn(reference_model=str(e.tmp / "other_vocab")),
         r"model .*target and reference model .*other_vocab have different tokenizer vocabularies \(\d+ vs \d+ tokens; '.*' is id \d+ vs \d+\); .*same base model",
         setup=_other_vocabulary),
    Case("reference_model_with_another_vocabulary_eval", lambda e: e.eval(reference_model=str(e.tmp / "other_vocab")),
         r"model .*target and reference model .*other_vocab have different tokenizer vocabularies", setup=_other_vocabulary),
    Case("probe_reference_with_another_vocabulary",
         lambda e: ["probe", e.target, "--out", str(e.tmp / "probe.json"), "--data_dir", str(e.world), "--original_model", e.target,
                    "--reference_model", str(e.tmp / "other_vocab")],
         r"unlearned model .*target and reference model .*other_vocab have different tokenizer vocabularies", setup=_other_vocabulary),
    # ---- reference eval files: the forget questions they were scored on are recorded, and these
    Case("reference_eval_without_question_hashes", lambda e: e.unlearn(reference_model="", reference_eval=e.reference_copy(_no_hashes)),
         r"reference eval file .*reference_eval\.json records no hash of the forget questions .*evaluate the retain-only model on"),
    Case("reference_eval_of_another_split", lambda e: e.unlearn(forget_split="forget05", reference_model="", reference_eval=str(e.reference_eval)),
         r"reference eval file .* was evaluated with forget split 'forget10_perturbed' but this command uses 'forget05_perturbed'; "
         r".*evaluate the retain-only model on .*forget05_perturbed\.json"),
    Case("reference_eval_with_another_prompt_format", lambda e: e.unlearn(prompt_format="qa", reference_model="", reference_eval=str(e.reference_eval)),
         r"was evaluated with prompt_format 'chat_template' but this command uses 'qa'"),
    Case("reference_eval_of_other_questions_under_the_same_name", lambda e: e.eval(reference_model="", reference_eval=str(e.reference_eval)),
         r"was scored on other forget questions than .*forget10_perturbed\.json \(forget10_perturbed, (\d+) rows there; \1 rows here; first difference at row 4",
         setup=_rename_question),
]  # fmt: skip


@pytest.fixture(scope="module")
def reference_eval(micro_world, micro_models, tmp_path_factory) -> Path:
    """The retain-only model's eval.json on forget10 (scored once for the module)."""
    from llm_unlearn.data.args import DataArgs
    from llm_unlearn.eval.args import EvalArgs
    from llm_unlearn.pipeline.evaluate import evaluate_path

    path = tmp_path_factory.mktemp("reference") / "eval.json"
    evaluate_path(
        str(micro_models["retain"]["forget10"]), DataArgs(data_dir=str(micro_world)),
        EvalArgs(max_new_tokens=4, eval_batch_size=64), out_path=path,
    )  # fmt: skip
    return path


@pytest.fixture
def env(micro_world, micro_models, reference_eval, tmp_path, monkeypatch) -> Env:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    world = tmp_path / "world"
    shutil.copytree(micro_world, world)
    _fake_hub(monkeypatch, world)
    return Env(tmp=tmp_path, world=world, models=micro_models, reference_eval=reference_eval)


def _refuse_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model for training or scoring, training and evaluating all raise WorkStarted."""
    import llm_unlearn.eval.tofu
    import llm_unlearn.pipeline.evaluate
    import llm_unlearn.pipeline.unlearn
    import llm_unlearn.probes.run
    from llm_unlearn.core.trainer import UnlearnTrainer

    def started(*args, **kwargs):
        raise WorkStarted

    monkeypatch.setattr(UnlearnTrainer, "train", started)
    monkeypatch.setattr(llm_unlearn.eval.tofu, "evaluate", started)
    monkeypatch.setattr(llm_unlearn.pipeline.unlearn, "load_model", started)
    monkeypatch.setattr(llm_unlearn.pipeline.evaluate, "load_model_and_tokenizer", started)
    monkeypatch.setattr(llm_unlearn.probes.run, "load_model_and_tokenizer", started)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_refused_before_any_work_with_one_line(case: Case, env: Env, capsys, monkeypatch):
    case.setup(env)
    argv = case.argv(env)
    _refuse_work(monkeypatch)
    before = _snapshot(env.tmp)
    assert main(argv) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines[-5:]
    assert re.search(case.pattern, errors[0]), errors[0]
    print(f"[{case.id}] {errors[0]}")  # `pytest -s` lists every case's message
    assert _snapshot(env.tmp) == before  # nothing written, changed or removed: no run folder, no eval.json
    assert not env.out.exists()


def test_every_kind_of_the_issue_has_a_case():
    kinds = ("other_questions", "another_order", "non_utf8", "duplicated", "empty_answer", "another_vocabulary",
             "without_question_hashes", "another_split")  # fmt: skip
    assert all(any(kind in case.id for case in CASES) for kind in kinds)
    assert len({case.id for case in CASES}) == len(CASES)


def test_a_repeated_question_in_the_retain_split_is_warned_about_by_name(env: Env, caplog):
    """TOFU's own retain90 asks "What is the full name of the author?" twice: a training split may repeat."""
    from llm_unlearn.core.inputs import validate_inputs
    from llm_unlearn.data.args import DataArgs

    _repeat_question("retain90", 7, 3)(env)
    with caplog.at_level(logging.WARNING, logger="llm_unlearn"):
        rows = validate_inputs(DataArgs(data_dir=str(env.world)), retain_split="retain90")
    assert len(rows["retain90"]) == len(env.rows("retain90"))
    assert re.search(r"split .*retain90\.json asks question .* 2 times \(rows 4 and 8\)", caplog.text), (
        caplog.text
    )


def test_the_micro_world_and_a_fresh_reference_eval_pass_every_check(env: Env):
    from llm_unlearn.core.inputs import validate_inputs
    from llm_unlearn.data.args import DataArgs
    from llm_unlearn.eval.args import EvalArgs

    eval_args = EvalArgs(reference_eval=str(env.reference_eval))
    rows = validate_inputs(DataArgs(data_dir=str(env.world)), eval_args, retain_split="retain90")
    assert {"forget10", "retain90", "forget10_perturbed", "retain_perturbed", "holdout10"} <= set(rows)


def test_the_real_tofu_files_pass_every_check(tofu_dir):
    from llm_unlearn.core.inputs import validate_inputs
    from llm_unlearn.data.args import DataArgs
    from llm_unlearn.eval.args import EvalArgs

    for forget, retain in (("forget01", "retain99"), ("forget05", "retain95"), ("forget10", "retain90")):
        validate_inputs(
            DataArgs(data_dir=str(tofu_dir), forget_split=forget), EvalArgs(), retain_split=retain
        )


def test_a_legacy_reference_log_is_checked_against_the_split_questions(tofu_dir, tmp_path):
    from llm_unlearn.core.inputs import check_reference_eval
    from llm_unlearn.data.qa import DataError, load_split

    log = (
        tofu_dir
        / "reference_eval_logs"
        / "ft_epoch5_lr1e-05_llama2-7b_retain90_wd0.01"
        / "eval_log_aggregated.json"
    )
    rows = load_split("forget10_perturbed", data_dir=tofu_dir)
    check_reference_eval(log, rows, "forget10_perturbed")
    with pytest.raises(
        DataError, match=r"entry 0 was scored on another question than forget05_perturbed row 1"
    ):
        check_reference_eval(log, load_split("forget05_perturbed", data_dir=tofu_dir), "forget05_perturbed")
    data = json.loads(log.read_text())
    del data["eval_log_forget.json"]["generated_text"]
    (tmp_path / "log.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"records no forget prompts \(generated_text\)"):
        check_reference_eval(tmp_path / "log.json", rows, "forget10_perturbed")
