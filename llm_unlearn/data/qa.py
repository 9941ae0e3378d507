"""TOFU-format data: load splits, format prompts, mask questions, collate batches.

A split is a list of dicts with at least `question` and `answer` (TOFU's schema, arXiv 2401.06121).
It is read from a local folder of JSON-lines files named like the Hub configs (`full.json`,
`forget10_perturbed.json`, ...), or from a Hub dataset id (`locuslab/TOFU`) through `datasets`.

Every example is tokenized as `prompt ids + answer ids + [end-of-turn id]`: the prompt and the answer
are encoded separately, so the label boundary is exact by construction (no re-tokenization of a
joined string whose merges could straddle it). Labels are -100 on the prompt and on padding; the
answer tokens and exactly one end-of-turn token carry loss. The end-of-turn token is the
tokenizer's eos token (`<|im_end|>`-style chat models set eos to their end-of-turn token).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

IGNORE_INDEX = -100
PROMPT_FORMATS = ("chat_template", "tofu_llama2", "qa")
# Which fields each kind of split must have; the perturbed answer lists may have any length >= 1.
EVAL_FIELDS = ("question", "answer", "paraphrased_answer", "perturbed_answer")
ANALOG_FIELDS = ("question", "answer", "perturbed_answer")

logger = logging.getLogger("llm_unlearn")


class DataError(ValueError):
    """Bad input data: the message names the problem and the fix."""


def split_path(data_dir: str | Path, split: str) -> Path:
    return Path(data_dir) / f"{split}.json"


def _missing_split(path: Path, data_dir: Path, split: str) -> str:
    """Why `path` cannot be read as split `split`, with the fix: a broken link, a `.jsonl` beside it, or none."""
    if path.is_symlink():
        return f"split file {path} is a link to {os.readlink(path)}, which does not exist; point it at the split's file"
    have = sorted(p.stem for p in data_dir.glob("*.json") if p.stem != "world_config" and p.is_file())
    found = f"split file {path} not found; splits in {data_dir}: {', '.join(have) or 'none'}"
    if (data_dir / f"{split}.jsonl").is_file():
        return f"{found}. {split}.jsonl is there: splits are read from <name>.json (JSON lines or an array), so rename it"
    if split.endswith("_perturbed"):
        return (
            f"{found}. The evaluation reads {split}: the rows of {split.removesuffix('_perturbed')} with "
            "paraphrased_answer and perturbed_answer (a list) added, as TOFU and `llm-unlearn world` write them"
        )
    return found


def read_utf8(path: Path) -> str:
    """A file's text; a byte that is not UTF-8 is one DataError naming the file, its line and byte offset."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path} line {line} (byte {err.start}) is not UTF-8 ({err.reason}: {raw[err.start : err.end]!r}); "
            "re-save the file as UTF-8"
        ) from None


def _read_json_records(path: Path) -> list[dict]:
    """Read JSON lines, one JSON array, or several arrays one per line (all seen in TOFU copies)."""
    raw = read_utf8(path)
    text = raw.strip()
    if not text:
        return []
    whole = None
    if text.startswith("["):
        try:
            return list(json.loads(text))
        except json.JSONDecodeError as err:
            whole = err  # or several arrays, one per line: line-wise parsing tells
    rows: list[dict] = []
    first = None
    for lineno, line in enumerate(raw.splitlines(), 1):  # counted in the file as it is, blank lines too
        line = line.strip()
        if not line:
            continue
        first = first or lineno
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            where, msg = lineno, err.msg
            if whole is not None and lineno == first:  # one array over many lines: its own error says where
                where, msg = whole.lineno + first - 1, whole.msg
            raise DataError(f"{path}:{where} is not valid JSON ({msg}); fix or regenerate the file") from None
        rows.extend(item if isinstance(item, list) else [item])
    return rows


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def load_split(
    split: str,
    data_dir: str | Path | None = None,
    dataset_name: str | None = None,
    required: Sequence[str] = ("question", "answer"),
) -> list[dict]:
    """Load one TOFU-format split as a list of dicts, checking that `required` fields are present.

    Exactly one of `data_dir` (local folder of `<split>.json` files) or `dataset_name` (Hub id,
    config = split) is used; `data_dir` wins when both are given. Errors count rows from 1, as an editor
    counts the lines of a JSON-lines file.
    """
    if not split or "/" in split or "\\" in split or split in (".", ".."):
        raise DataError(
            f"split name {split!r} is not a name: a split is the file <name>.json in --data_dir (or a config of "
            "--dataset_name); pass its name, e.g. forget10, and its folder as --data_dir"
        )
    if data_dir is not None:
        data_dir = Path(data_dir)
        if data_dir.is_file():
            raise DataError(f"data dir {data_dir} is a file; pass the folder that holds the split files")
        if not data_dir.is_dir():
            raise DataError(
                f"data dir {data_dir} does not exist; create one with `llm-unlearn world --out {data_dir}` "
                "or pass --dataset_name locuslab/TOFU"
            )
        path = split_path(data_dir, split)
        if not path.is_file():
            raise DataError(_missing_split(path, data_dir, split))
        rows = _read_json_records(path)
        where = str(path)
    elif dataset_name is not None:
        import datasets

        rows = list(datasets.load_dataset(dataset_name, split, split="train"))
        where = f"{dataset_name}:{split}"
    else:
        raise DataError(
            "no data source: pass --data_dir DIR (a local TOFU-format folder) or --dataset_name HUB_ID"
        )
    if not rows:
        raise DataError(f"split {where} is empty; pick a split with at least one example")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(
                f"split {where} row {i + 1} is {_a(type(row).__name__)}, not an object; every row is a JSON object "
                f"with fields {', '.join(required)}"
            )
        missing = [f for f in required if f not in row or row[f] is None]
        if missing:
            raise DataError(
                f"split {where} row {i + 1} lacks field(s) {', '.join(missing)}; every row needs {', '.join(required)}"
            )
        for name in ("question", "answer", "paraphrased_answer"):
            if name in required and not isinstance(row[name], str):
                raise DataError(
                    f"split {where} row {i + 1} field {name} is {_a(type(row[name]).__name__)}, not a string; "
                    "fix the file (TOFU format: question and answer are text)"
                )
        if "perturbed_answer" in required:
            pert = row["perturbed_answer"]
            if isinstance(pert, str):  # one perturbed answer given bare, not as a list of one: taken as such
                row["perturbed_answer"] = [pert]
            elif not isinstance(pert, list) or not all(isinstance(a, str) for a in pert):
                raise DataError(
                    f"split {where} row {i + 1} field perturbed_answer must be a list of strings; fix the file"
                )
            elif not pert:
                raise DataError(
                    f"split {where} row {i + 1} has an empty perturbed_answer list; give at least one"
                )
        _refuse_empty_text(row, i, where, required)
    return rows


def _refuse_empty_text(row: dict, i: int, where: str, required: Sequence[str]) -> None:
    """An empty question or answer trains on, or scores, the end-of-turn token alone: refuse it by row."""
    texts = [(name, row[name]) for name in ("question", "answer", "paraphrased_answer") if name in required]
    if "perturbed_answer" in required:
        texts += [(f"perturbed_answer[{j}]", a) for j, a in enumerate(row["perturbed_answer"])]
    for name, text in texts:
        if not text.strip():
            asked = f" (question {row['question'][:60]!r})" if name != "question" else ""
            raise DataError(
                f"split {where} row {i + 1} has an empty {name}{asked}; "
                f"give it a non-empty {name.partition('[')[0]} or drop the row"
            )


def check_unique_questions(rows: list[dict], where: str, refuse: bool = True) -> None:
    """Refuse (or, with `refuse=False`, warn about) a question asked in two rows of one split, by name.

    Spelled alike up to spacing and case (`same_question`), as the forget/retain overlap check compares
    them: a lowercased copy of a forget question counted its fact twice."""
    first: dict[str, int] = {}
    keys = [same_question(row["question"]) for row in rows]
    for i, row in enumerate(rows):
        j = first.setdefault(keys[i], i)
        if j == i:
            continue
        repeats = keys.count(keys[i])
        problem = (
            f"split {where} asks question {row['question'][:80]!r} {repeats} times (rows {j + 1} and {i + 1}"
        )
        problem += ", ...)" if repeats > 2 else ")"
        if rows[j]["question"] != row["question"]:
            problem += f", spelled {rows[j]['question'][:80]!r} in row {j + 1}"
        if refuse:
            raise DataError(
                f"{problem}; per-question scores are matched by question and row, so keep one row per question"
            )
        logger.warning("%s; training sees each of its rows", problem)
        return


def check_companion(base: list[dict], base_where: str, companion: list[dict], companion_where: str) -> None:
    """A `<split>_perturbed` companion must hold the split's questions, in the same order, with the same answers.

    Its per-sample scores are read as the split's (forget quality, model utility), so a row off is a wrong
    number, not an error, unless refused here.
    """
    fix = f"regenerate {companion_where} from {base_where} (same questions, same order)"
    for i, (a, b) in enumerate(zip(base, companion)):
        if a["question"] != b["question"]:
            where = "elsewhere in" if any(r["question"] == b["question"] for r in base) else "not in"
            raise DataError(
                f"{companion_where} row {i + 1} asks {b['question'][:60]!r} where {base_where} asks "
                f"{a['question'][:60]!r} (that question is {where} {base_where}); {fix}"
            )
        if a["answer"] != b["answer"]:
            raise DataError(
                f"{companion_where} row {i + 1} answers {b['answer'][:60]!r} where {base_where} answers "
                f"{a['answer'][:60]!r} (question {a['question'][:60]!r}); {fix}"
            )
    if len(base) != len(companion):
        raise DataError(
            f"{companion_where} has {len(companion)} rows but {base_where} has {len(base)}; {fix}"
        )


def check_forget_retain(forget: list[dict], retain: list[dict], forget_name: str, retain_name: str) -> None:
    """Refuse an empty forget set or one that shares questions with the retain set."""
    if not forget:
        raise DataError(f"forget split {forget_name} is empty; choose a split with at least one example")
    if not retain:
        raise DataError(f"retain split {retain_name} is empty; choose a split with at least one example")
    overlap = shared_questions(forget, retain)
    if overlap:
        raise DataError(
            f"forget split {forget_name} and retain split {retain_name} share {len(overlap)} question(s) "
            f"(e.g. {overlap[0]!r}); use a retain split disjoint from the forget split (forget10 <-> retain90)"
        )


def same_question(question: str) -> str:
    """What two spellings of one question share: spacing and case do not make another question (a trailing
    space must not let a forget question into the retain set)."""
    return " ".join(question.split()).casefold()


def shared_questions(a: list[dict], b: list[dict]) -> list[str]:
    """The questions of `a` that `b` also asks (`same_question`), sorted: the evidence an overlap error quotes."""
    asked = {same_question(r["question"]) for r in b}
    return sorted({r["question"] for r in a if same_question(r["question"]) in asked})


def forget_pct(split: str) -> int | None:
    """`forget10` -> 10 (also for `forget10_perturbed`); None for any other name. Exactly TOFU's names:
    `forget10_mine` or `forget100` would otherwise be paired with forget10's companions, and evaluated on
    another set of questions than the one trained on."""
    match = re.fullmatch(r"forget(\d\d)(?:_perturbed)?", split)
    return int(match.group(1)) if match else None


def paired_split(forget_split: str, kind: str) -> str:
    """The TOFU pairing forgetNN <-> retain(100-NN) <-> holdoutNN <-> forgetNN_perturbed."""
    pct = forget_pct(forget_split)
    if pct is None:
        raise DataError(
            f"cannot pair split {forget_split!r} with its companions: the evaluation finds them by TOFU's names "
            "(forget10 -> retain90, holdout10, forget10_perturbed); name your splits that way"
        )
    return {
        "retain": f"retain{100 - pct}",
        "holdout": f"holdout{pct:02d}",
        "perturbed": f"forget{pct:02d}_perturbed",
    }[kind]


def n_forget_authors(pct: float, n_authors: int) -> int:
    return max(1, math.ceil(pct / 100 * n_authors - 1e-9))


# ----------------------------------------------------------------------------- prompts and masking


def _format_prompt(tokenizer, question: str, prompt_format: str, system_prompt: str | None) -> list[int]:
    if prompt_format == "chat_template":
        if tokenizer.chat_template is None:
            raise DataError(
                f"tokenizer {tokenizer.name_or_path!r} has no chat template; use --prompt_format qa or tofu_llama2"
            )
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": question})
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if prompt_format == "tofu_llama2":
        return tokenizer(f"[INST] {question} [/INST]", add_special_tokens=True)["input_ids"]
    if prompt_format == "qa":
        return tokenizer(f"Question: {question}\nAnswer:", add_special_tokens=True)["input_ids"]
    raise DataError(f"unknown prompt_format {prompt_format!r}; choose one of {', '.join(PROMPT_FORMATS)}")


def _answer_text(answer: str, prompt_format: str) -> str:
    # "Answer: x" tokenizes the space with the answer's first word in byte-level BPE; keep it there.
    return " " + answer if prompt_format == "qa" else answer


def end_of_turn_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise DataError(
            f"tokenizer {tokenizer.name_or_path!r} has no eos token (nor a pad token to fall back on), so answers "
            "cannot be ended; set eos_token in the model folder's tokenizer_config.json"
        )
    return tokenizer.eos_token_id


def encode_prompt(
    tokenizer, question: str, prompt_format: str, system_prompt: str | None = None
) -> list[int]:
    """Token ids of the prompt alone (what generation starts from)."""
    ids = _format_prompt(tokenizer, question, prompt_format, system_prompt)
    bos = tokenizer.bos_token_id
    if prompt_format == "chat_template" and bos is not None and (not ids or ids[0] != bos):
        # Our own templates put the bos in the text; some do not and rely on add_special_tokens.
        ids = [bos] + ids
    return ids


def encode_qa(
    tokenizer,
    question: str,
    answer: str,
    prompt_format: str,
    max_length: int,
    system_prompt: str | None = None,
    prompt_ids: list[int] | None = None,
    answer_ids: list[int] | None = None,
) -> dict[str, list[int]]:
    """`input_ids` = prompt + answer + end-of-turn; `labels` = -100 on the prompt, ids elsewhere.

    `prompt_ids`: `encode_prompt`'s result for this question, when the caller already has it (scoring
    many answers to one question); `answer_ids`: the answer's tokens, likewise (`encode_qa_pairs`).
    Raises DataError when the example is longer than `max_length`: truncating would silently drop
    answer tokens (or the end token) from the loss.
    """
    if prompt_ids is None:
        prompt_ids = encode_prompt(tokenizer, question, prompt_format, system_prompt)
    if answer_ids is None:
        answer_ids = tokenizer(_answer_text(answer, prompt_format), add_special_tokens=False)["input_ids"]
    answer_ids = answer_ids + [end_of_turn_id(tokenizer)]
    n = len(prompt_ids) + len(answer_ids)
    if n > max_length:
        raise DataError(
            f"example of {n} tokens exceeds max_length={max_length} (question {question[:60]!r}); "
            f"raise --max_length to at least {n}"
        )
    return {
        "input_ids": prompt_ids + answer_ids,
        "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
    }


def encode_qa_pairs(
    tokenizer,
    questions: Sequence[str],
    answers: Sequence[str],
    prompt_format: str,
    max_length: int,
    system_prompt: str | None = None,
) -> list[dict[str, list[int]]]:
    """`encode_qa` of each (question, answer) pair; each distinct prompt is rendered once and the answers
    are tokenized in one call (thousands of separate calls cost more than the tokenizing itself)."""
    prompts = {q: encode_prompt(tokenizer, q, prompt_format, system_prompt) for q in dict.fromkeys(questions)}
    texts = [_answer_text(a, prompt_format) for a in answers]
    answer_ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [
        encode_qa(
            tokenizer, q, a, prompt_format, max_length, system_prompt, prompt_ids=prompts[q], answer_ids=ids
        )
        for q, a, ids in zip(questions, answers, answer_ids, strict=True)
    ]


class QADataset(torch.utils.data.Dataset):
    """Tokenized question/answer pairs; `answer_key` picks which answer field to score.

    `with_alternative_answers` pairs every question with a second answer (e.g. a refusal), encoded
    with the same prompt, for methods that declare `forget_alternatives`.
    """

    def __init__(
        self,
        rows: Sequence[dict],
        tokenizer,
        prompt_format: str,
        max_length: int,
        system_prompt: str | None = None,
        answer_key: str = "answer",
    ):
        self.questions = [r["question"] for r in rows]
        self.encoding = dict(
            tokenizer=tokenizer,
            prompt_format=prompt_format,
            max_length=max_length,
            system_prompt=system_prompt,
        )
        self.features = [
            encode_qa(question=r["question"], answer=r[answer_key], **self.encoding) for r in rows
        ]

    def with_alternative_answers(self, answers: Sequence[str], seed: int) -> QADataset:
        """A copy whose examples also carry `alt_input_ids`/`alt_labels`: the same prompt, another answer.

        Example i gets answers[k_i], k_i drawn by `random.Random(seed)` in example order: fixed for a
        run, so a resumed run sees the same pairs.
        """
        rng = random.Random(seed)
        paired = copy.copy(self)
        paired.features = []
        for question, feature in zip(self.questions, self.features):
            alt = encode_qa(question=question, answer=answers[rng.randrange(len(answers))], **self.encoding)
            paired.features.append(feature | {"alt_input_ids": alt["input_ids"], "alt_labels": alt["labels"]})
        return paired

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.features[i]


@dataclass
class QACollator:
    """Pad a list of encoded examples on the right (left with `padding_side='left'`).

    Padding positions get attention 0 and label -100, so they never carry loss. Examples with an
    alternative answer (`alt_input_ids`, `alt_labels`) get it padded apart, as `alt_*` tensors.
    """

    pad_token_id: int
    padding_side: str = "right"

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        batch = self._pad(features, "")
        if "alt_input_ids" in features[0]:
            batch |= {f"alt_{key}": value for key, value in self._pad(features, "alt_").items()}
        return batch

    def _pad(self, features: Sequence[dict], prefix: str) -> dict[str, torch.Tensor]:
        width = max(len(f[f"{prefix}input_ids"]) for f in features)
        ids, labels, mask = [], [], []
        for f in features:
            body = f[f"{prefix}input_ids"]
            pad = width - len(body)
            body_labels = f.get(f"{prefix}labels", [IGNORE_INDEX] * len(body))
            if self.padding_side == "right":
                ids.append(body + [self.pad_token_id] * pad)
                labels.append(body_labels + [IGNORE_INDEX] * pad)
                mask.append([1] * len(body) + [0] * pad)
            else:
                ids.append([self.pad_token_id] * pad + body)
                labels.append([IGNORE_INDEX] * pad + body_labels)
                mask.append([0] * pad + [1] * len(body))
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.tensor(mask, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }


def pad_id(tokenizer) -> int:
    """The pad id, falling back to eos (the padding positions are masked either way)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_of_turn_id(tokenizer)
