"""Every input a command reads, opened and cross-checked before any work (`unlearn`, `eval`, `probe`).

A wrong input rarely crashes. A perturbed file of other questions, a reference evaluated on another
split, a reference model with another tokenizer: each gives a number, a wrong one. So before the first
model is loaded, `validate_inputs` reads every split the command will read (for `unlearn`: the forget
and retain splits and, with the final evaluation, the evaluation's splits too) and refuses, as one
`DataError` line naming the file and the row:

- a byte that is not UTF-8, a row that is not an object, a missing field, an empty question or answer
  (`data.load_split`);
- a question asked twice in one split. The one exception is the retain split a run trains on, where a
  repeat is only warned about by name: TOFU's own retain90/95/99 ask "What is the full name of the
  author?" of two authors, with two answers. Everywhere else per-sample scores are matched by question
  and by row, so a repeat is refused;
- a `<split>_perturbed` companion (paraphrased and perturbed answers) whose questions or answers are not
  its split's, in the same order, wherever both are at hand (a local folder; on the Hub, the forget
  split and its companion);
- an evaluation retain set or a holdout that shares questions with the forget split;
- a reference eval (`--reference_eval`) that records no hash of the forget questions it was scored on,
  the hash of other questions than this forget split's, or another split name, truth-ratio variant,
  prompt format or system prompt (which `add_forget_quality` would otherwise refuse after training).

`check_same_vocabulary` refuses models used together (a model and its retain-only reference; a run, its
original model and the reference in `probe`) whose tokenizers do not map the same tokens to the same
ids. A method's frozen reference is loaded from the model's own folder, so it needs no check.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ..data.args import DataArgs
from ..data.qa import (
    ANALOG_FIELDS,
    EVAL_FIELDS,
    DataError,
    check_companion,
    check_forget_retain,
    check_unique_questions,
    forget_pct,
    load_split,
    paired_split,
    read_utf8,
    shared_questions,
    split_path,
)
from ..eval.args import EvalArgs

QA_FIELDS = ("question", "answer")
PERTURBED = "_perturbed"


class SplitSource:
    """The splits of one data source, each loaded once; `has` says whether a split is there at all."""

    def __init__(self, data_dir: str | Path | None, dataset_name: str | None):
        self.data_dir, self.dataset_name = data_dir, dataset_name
        self.rows: dict[str, list[dict]] = {}
        self.fields: dict[str, tuple[str, ...]] = {}

    def where(self, name: str) -> str:
        if self.data_dir is not None:
            return str(split_path(self.data_dir, name))
        return f"{self.dataset_name}:{name}"

    def load(self, name: str, required: Sequence[str] = QA_FIELDS) -> list[dict]:
        if name not in self.rows or not set(required) <= set(self.fields[name]):
            self.rows[name] = load_split(
                name, data_dir=self.data_dir, dataset_name=self.dataset_name, required=required
            )
            self.fields[name] = tuple(required)
        return self.rows[name]

    def has(self, name: str) -> bool:
        if self.data_dir is not None:
            return split_path(self.data_dir, name).is_file()
        try:
            self.load(name)
        except DataError:
            return True  # there, but broken: loading it again says how
        except Exception:  # noqa: BLE001 - a Hub dataset without this config (TOFU has no holdout_perturbed)
            return False
        return True


def validate_inputs(
    data: DataArgs, eval_args: EvalArgs | None = None, *, retain_split: str | None = None
) -> dict[str, list[dict]]:
    """Read and cross-check every split a command reads; raise DataError (one line) at the first problem.

    `retain_split`: the split a training run trains on, with the forget split (None: no training).
    `eval_args`: given when the command evaluates; its holdout (with `mia`) and its `reference_eval`
    are checked too. Returns the rows read, by split name.
    """
    from ..eval.tofu import eval_splits

    source = SplitSource(data.data_dir, data.dataset_name)
    read: dict[str, Sequence[str]] = {}
    if retain_split is not None:
        read |= {data.forget_split: QA_FIELDS, retain_split: QA_FIELDS}
    roles: dict[str, str] = {}
    if eval_args is not None:
        roles = eval_splits(data.forget_split)
        read |= {
            name: EVAL_FIELDS if role in ("forget", "retain") else ANALOG_FIELDS
            for role, name in roles.items()
        }
        if eval_args.mia and source.has(holdout := paired_split(data.forget_split, "holdout")):
            read.setdefault(holdout, QA_FIELDS)  # without one, evaluate skips membership inference
    check_splits(source, read, data.forget_split, retain_split)
    if eval_args is not None and eval_args.reference_eval:
        forget = roles["forget"]
        settings = {"forget split": forget, "truth_ratio_variant": eval_args.truth_ratio_variant,
                    "prompt_format": data.prompt_format, "system_prompt": data.system_prompt}  # fmt: skip
        check_reference_eval(
            Path(eval_args.reference_eval), source.rows[forget], source.where(forget), settings
        )
    return source.rows


def check_splits(
    source: SplitSource, read: dict[str, Sequence[str]], forget_split: str, retain_split: str | None = None
) -> None:
    """Load the splits in `read` (name -> required fields) and cross-check them (module docstring).

    `retain_split`, the split a run trains on, may repeat a question (warned about); no other may.
    """
    for name, required in read.items():
        try:
            rows = source.load(name, required)
        except DataError as err:
            if retain_split is None or name in (forget_split, retain_split):
                raise
            # A training run reads it only for its final evaluation: say so, and how to train without it.
            raise DataError(
                f"{err}; the final evaluation reads it: add it, or train with --do_final_eval false"
            ) from None
        check_unique_questions(rows, source.where(name), refuse=name != retain_split)
    check_companions(source, list(read), always=forget_split)
    forget = source.rows.get(forget_split) or source.rows.get(forget_split + PERTURBED)
    if forget is None:
        return
    if retain_split is not None:
        check_forget_retain(forget, source.rows[retain_split], forget_split, retain_split)
    holdout = paired_split(forget_split, "holdout") if forget_pct(forget_split) is not None else None
    for name in ("retain_perturbed", holdout):
        if name in read:
            _refuse_shared(source.rows[name], name, forget, forget_split)
    if holdout in read:  # members among the non-members would bias membership inference too
        trained = [n for n in dict.fromkeys((retain_split, paired_split(forget_split, "retain"), "retain_perturbed"))
                   if n and (n in source.rows or (source.data_dir is not None and source.has(n)))]  # fmt: skip
        for name in trained:
            _refuse_shared(source.rows[holdout], holdout, source.load(name, ("question",)), name)


def check_companions(source: SplitSource, names: Sequence[str], always: str | None = None) -> None:
    """Each of `names` against its companion (`x` <-> `x_perturbed`) where both are at hand.

    On the Hub, only pairs already read are compared, and `always` (the forget split) with its companion.
    """
    pairs = {(n.removesuffix(PERTURBED), n) if n.endswith(PERTURBED) else (n, n + PERTURBED) for n in names}
    for base, companion in sorted(pairs):
        other = companion if base in names else base
        if other not in names and source.data_dir is None and base != always:
            continue
        if not source.has(other):
            continue
        check_companion(
            source.load(base), source.where(base), source.load(companion), source.where(companion)
        )


def _refuse_shared(rows: list[dict], name: str, forget: list[dict], forget_name: str) -> None:
    shared = shared_questions(rows, forget)
    if not shared:
        return
    if name.startswith("holdout"):
        what, why = "holdout split", "membership inference needs questions the model never saw"
    else:
        what, why = "evaluation split", "model utility is measured on knowledge the model keeps"
    raise DataError(
        f"{what} {name} shares {len(shared)} question(s) with {forget_name} (e.g. {shared[0]!r}); "
        f"{why}: remove them from {name}"
    )


# ----------------------------------------------------------------------------- reference eval files


def check_reference_eval(
    path: Path, forget_rows: list[dict], where: str, settings: dict | None = None
) -> None:
    """Refuse a reference eval that was not scored on `forget_rows` (the forget eval split), or can't tell.

    An eval.json records `meta.splits.forget.questions_sha256`, which must be the hash of these rows'
    questions, and the settings forget quality compares (`settings`: split name, truth-ratio variant,
    prompt format, system prompt) are compared here too, so that `add_forget_quality` cannot refuse the
    reference after the training it evaluates. A legacy TOFU log records each prompt (`generated_text`),
    which must hold the question of the same row.
    """
    from ..eval.legacy import LEGACY_FILES, is_legacy_log
    from ..eval.tofu import questions_sha256

    reference = json.loads(read_utf8(path))
    fix = f"evaluate the retain-only model on {where} (`llm-unlearn eval`) and pass that eval.json"
    if is_legacy_log(reference):
        prompts = reference[LEGACY_FILES["forget"]].get("generated_text")
        if not isinstance(prompts, dict) or not prompts:
            raise DataError(f"reference eval file {path} records no forget prompts (generated_text), so its "
                            f"questions cannot be checked; {fix}")  # fmt: skip
        for i, row in enumerate(forget_rows[: len(prompts)]):
            prompt = prompts.get(str(i))
            if not prompt or row["question"] not in str(prompt[0]):
                raise DataError(
                    f"reference eval file {path} entry {i} was scored on another question than {where} "
                    f"row {i + 1} ({row['question'][:60]!r}); {fix}"
                )
        return
    meta = reference.get("meta", {})
    recorded = meta.get("splits", {}).get("forget", {})
    digest = recorded.get("questions_sha256") if isinstance(recorded, dict) else None
    if not digest:
        raise DataError(
            f"reference eval file {path} records no hash of the forget questions it was scored on "
            f"(meta.splits.forget.questions_sha256), so it may be of another split; {fix}"
        )
    for what, want in (settings or {}).items():
        if what in ("prompt_format", "system_prompt") and meta.get("source") == "legacy_log":
            continue
        got = recorded.get("name") if what == "forget split" else meta.get(what)
        if got != want:
            raise DataError(
                f"reference eval file {path} was evaluated with {what} {got!r} but this command uses {want!r}; "
                f"forget quality compares the two on the same split, template and variant: {fix}"
            )
    recorded = reference.get("meta", {}).get("splits", {}).get("forget", {})
    digest = recorded.get("questions_sha256") if isinstance(recorded, dict) else None
    if not digest:
        raise DataError(
            f"reference eval file {path} records no hash of the forget questions it was scored on "
            f"(meta.splits.forget.questions_sha256), so it may be of another split; {fix}"
        )
    if digest == questions_sha256(forget_rows):
        return
    detail = f"{recorded.get('name')}, {recorded.get('n')} rows there; {len(forget_rows)} rows here"
    scored = reference.get("generations", {}).get("forget")
    if isinstance(scored, list):
        theirs = [g.get("question") if isinstance(g, dict) else None for g in scored]
        for i, row in enumerate(forget_rows):
            if i >= len(theirs) or theirs[i] != row["question"]:
                detail += f"; first difference at row {i + 1}: {row['question'][:60]!r} here"
                break
    raise DataError(
        f"reference eval file {path} was scored on other forget questions than {where} ({detail}); {fix}"
    )


# ----------------------------------------------------------------------------- models


def check_same_vocabulary(models: dict[str, str], *, trust_remote_code: bool = False) -> None:
    """Refuse models used together (role -> path) whose tokenizers map tokens to other ids.

    Their per-token losses and truth ratios are compared, and a LoRA or frozen copy is scored on the
    other's ids: with another vocabulary those numbers are of other texts.
    """
    from ..models.loading import load_tokenizer

    (first_role, first), *others = models.items()
    vocab = load_tokenizer(first, trust_remote_code=trust_remote_code).get_vocab()
    for role, path in others:
        if str(path) == str(first):
            continue
        other = load_tokenizer(path, trust_remote_code=trust_remote_code).get_vocab()
        if other == vocab:
            continue
        token = next((t for t in sorted(vocab) if other.get(t) != vocab[t]), None)
        token = token if token is not None else next(t for t in sorted(other) if t not in vocab)
        raise ValueError(
            f"{first_role} {first} and {role} {path} have different tokenizer vocabularies ({len(vocab)} vs "
            f"{len(other)} tokens; {token!r} is id {vocab.get(token)} vs {other.get(token)}); models compared "
            f"with each other must share one tokenizer: pass a {role} trained from the same base model"
        )


def check_eval_lengths(
    model: str, data: DataArgs, rows: dict[str, list[dict]], *, trust_remote_code=False
) -> None:
    """Refuse, before training, an evaluation example longer than `--max_length`: every answer, paraphrase
    and perturbed answer of the evaluation's splits, and the membership holdout where it is read (`rows`, by
    name, as `validate_inputs` returns them), tokenized as the evaluation will. Found after training, it
    left a trained run whose evaluation the suggested `--max_length` could not finish (another setting)."""
    from ..data.qa import encode_qa_pairs, paired_split
    from ..eval.scoring import candidate_pairs
    from ..eval.tofu import eval_splits
    from ..models.loading import load_tokenizer

    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
    source = SplitSource(data.data_dir, data.dataset_name)
    scored = {name: candidate_pairs(rows[name], paraphrase=role in ("forget", "retain"))
              for role, name in eval_splits(data.forget_split).items()}  # fmt: skip
    holdout = paired_split(data.forget_split, "holdout")
    if holdout in rows:  # membership inference scores its answers too
        scored[holdout] = ([r["question"] for r in rows[holdout]], [r["answer"] for r in rows[holdout]])
    for name, (questions, texts) in scored.items():
        try:
            encode_qa_pairs(
                tokenizer, questions, texts, data.prompt_format, data.max_length, data.system_prompt
            )
        except DataError as err:
            if "exceeds max_length" not in str(err):  # another problem (a template): its own words, unwrapped
                raise
            raise DataError(
                f"{source.where(name)}: {err}, or train with --do_final_eval false (the final evaluation scores "
                "every answer, paraphrase and perturbed answer of its splits)"
            ) from None
