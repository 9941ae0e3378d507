"""TOFU evaluation of a model: the four eval sets in, an eval.json dict out (arXiv 2401.06121).

`evaluate` scores the forget set (`forgetNN_perturbed`), the retain set (`retain_perturbed`), real
authors and world facts: per sample, the mean answer NLL of the answer, the paraphrased answer and
every perturbed answer, and a greedy generation. `metrics.tofu_metrics` turns those into the TOFU
numbers. `add_forget_quality` then compares the forget-set truth ratios with those of a retain-only
reference model (an eval.json of ours, or a legacy `eval_log_aggregated.json`).

eval.json:
    metrics: {name: {value, direction ("higher" | "lower" | "closer_to_reference" | "closer_to_0.5" | "closer_to_0"),
                     per_sample?, per_sample_ratio? (raw truth ratios R), inputs? (model utility),
                     per_sample_forget? / per_sample_holdout? (membership scores, `mia_auc_*`)}}
    losses: {role: {answer: [l], paraphrased?: [l], perturbed: [[l_j]]}}  (roles forget, retain, ra, wf)
    generations: {role: [{question, answer, generated}]}
    meta: settings, split names and sizes, versions, hardware, timing (with the processes and the
          batches each scored); after add_forget_quality also `forget_quality_reference`.

Under several processes (`shard`), each scores its share of every pass's batches and all get the
whole result, identical to one process's (`shard.py`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..data.qa import (
    ANALOG_FIELDS,
    EVAL_FIELDS,
    PROMPT_FORMATS,
    DataError,
    load_split,
    paired_split,
    split_path,
)
from .legacy import is_legacy_log, legacy_scores
from .metrics import (
    TRUTH_RATIO_VARIANTS,
    SplitScores,
    fact_recall,
    forget_quality,
    forget_quality_floor,
    rouge_l_recall,
    tofu_metrics,
)
from .mia import mia_metrics, reference_metrics, sample_scores, scores_from_metrics
from .scoring import answer_losses, candidate_pairs, generate_answers, split_candidates
from .shard import Shard

SCHEMA_VERSION = 1
logger = logging.getLogger("llm_unlearn")
# Forget quality whose floor (eval/metrics.forget_quality_floor) is above this cannot fail TOFU's 0.05 bar
# by much: warned, and recorded with the number. 4 questions a side reach 0.029, 5 0.008, 6 0.002.
FQ_FLOOR_WARN = 0.005
MIN_FQ_QUESTIONS = 6


# The model-utility roles' splits: the same for every forget split.
UTILITY_SPLITS = {"retain": "retain_perturbed", "ra": "real_authors_perturbed", "wf": "world_facts_perturbed"}


def eval_splits(forget_split: str) -> dict[str, str]:
    """The split each role is read from: forget10 -> forget10_perturbed, retain_perturbed, ..."""
    return {"forget": paired_split(forget_split, "perturbed"), **UTILITY_SPLITS}


def questions_sha256(rows: list[dict]) -> str:
    return hashlib.sha256("\n".join(r["question"] for r in rows).encode("utf-8")).hexdigest()


def score_split(model, tokenizer, rows: list[dict], role: str, settings: dict, progress: bool, shard: Shard):
    """Losses of answer / paraphrase / perturbed answers in one length-sorted pass, then generations."""
    has_paraphrase = role in ("forget", "retain")  # ra / wf have no paraphrase: R uses the answer
    questions, texts = candidate_pairs(rows, has_paraphrase)
    states: dict = {}  # the loss pass's prompt states, so that generation does not rerun the prompts
    flat = answer_losses(
        model,
        tokenizer,
        questions,
        texts,
        progress=progress,
        desc=f"{role} losses",
        shard=shard,
        prompt_states=states,
        **settings["loss"],
    )
    answer, paraphrased, perturbed = split_candidates(flat, rows, has_paraphrase)
    generated = generate_answers(
        model,
        tokenizer,
        [r["question"] for r in rows],
        progress=progress,
        desc=f"{role} generation",
        shard=shard,
        prompt_states=states,
        **settings["gen"],
    )
    golds = [r["answer"] for r in rows]
    scores = SplitScores(
        answer_loss=answer,
        paraphrased_loss=paraphrased,
        perturbed_loss=perturbed,
        rouge_l=rouge_l_recall(golds, generated),
        fact_hit=fact_recall([r["fact"] for r in rows], generated)
        if all("fact" in r for r in rows)
        else None,
    )
    generations = [
        {"question": r["question"], "answer": r["answer"], "generated": g} for r, g in zip(rows, generated)
    ]
    return scores, generations, len(texts)


def _holdout(forget_split: str, data_dir, dataset_name) -> tuple[list[dict] | None, str]:
    """The holdout split paired with the forget split (non-members for membership inference), if any."""
    name = paired_split(forget_split, "holdout")
    if data_dir is not None and not split_path(data_dir, name).is_file():
        return None, f"skipped: no {name} split in {data_dir}"
    try:
        rows = load_split(name, data_dir=data_dir, dataset_name=dataset_name)
    except (DataError, ValueError, FileNotFoundError) as err:
        if data_dir is not None:
            raise  # the file is there but broken: say so
        return None, f"skipped: {name} not available from {dataset_name} ({str(err).splitlines()[0][:120]})"
    return rows, f"forget set vs {name}"


def system_prompt_used(tokenizer, prompt_format: str, system_prompt: str | None) -> str | None:
    """The system message in the prompts as rendered: the one given, the chat template's default, or None.

    The template is rendered for one question with and without a sentinel system message; the common
    tail is the user turn, so what precedes it is the system turn, whose content is read between the
    sentinel's header and footer. A template that wraps system text in a way this cannot parse yields
    the rendered system turn itself, markup included, rather than a guess.
    """
    if prompt_format != "chat_template":
        return system_prompt
    if system_prompt:
        return system_prompt
    sentinel, question = "\x00SYSTEM\x00", "\x00QUESTION\x00"

    def render(messages):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    user = [{"role": "user", "content": question}]
    plain, marked = render(user), render([{"role": "system", "content": sentinel}, *user])
    tail = len(os.path.commonprefix([plain[::-1], marked[::-1]]))
    head_plain, head_marked = plain[: len(plain) - tail], marked[: len(marked) - tail]
    if not head_plain.strip() or sentinel not in head_marked:
        return None
    before, after = head_marked.split(sentinel, 1)
    bos = os.path.commonprefix([head_plain, before])
    if (
        head_plain.startswith(before)
        and head_plain.endswith(after)
        and len(head_plain) >= len(before) + len(after)
    ):
        return head_plain[len(before) : len(head_plain) - len(after)]
    rest = head_plain[len(bos) :]  # what the template put before the user turn, past a shared bos
    return rest or None


def _package_version() -> str:
    try:
        return importlib.metadata.version("llm-unlearn")
    except importlib.metadata.PackageNotFoundError:  # run from a source checkout without `pip install -e .`
        return "unknown (not installed)"


def _hardware(model) -> str:
    from ..runs.hardware import hardware

    device = model.device
    return hardware(torch.cuda.get_device_name(device) if device.type == "cuda" else None)


def _restores_training_mode(fn):
    """A caller mid-training (a callback, a notebook) gets its model back in the mode it gave it."""

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        was_training = model.training
        try:
            return fn(model, *args, **kwargs)
        finally:
            model.train(was_training)

    return wrapper


@_restores_training_mode
def evaluate(
    model,
    tokenizer,
    *,
    data_dir: str | Path | None = None,
    dataset_name: str | None = None,
    forget_split: str = "forget10",
    prompt_format: str = "chat_template",
    system_prompt: str | None = None,
    max_length: int = 1024,
    batch_size: int = 32,
    max_new_tokens: int = 64,
    truth_ratio_variant: str = "geometric",
    progress: bool = True,
    seeds: dict[str, int] | None = None,
    shard: Shard | None = None,
    mia: bool = True,
) -> dict:
    """Run the TOFU eval sets on `model` and return the eval.json content (see the module docstring).

    Data come from `data_dir` (TOFU-format JSON files) or `dataset_name` (e.g. `locuslab/TOFU`).
    With `mia` (default) and a `holdoutNN` split beside the forget split, membership inference
    (`mia.py`: forget set vs holdout) adds `mia_auc_*` metrics; without a holdout split it is skipped
    and `meta.membership_inference` says why. `seeds` (e.g. the training and world seeds) are only recorded in `meta`. `shard` splits the
    batches over the processes of a `torch.distributed` group (every rank must call this with the
    same arguments, and gets the same result); by default this process scores everything.
    """
    shard = shard or Shard()
    for name, value, least in (("batch_size", batch_size, 1), ("max_length", max_length, 2),
                               ("max_new_tokens", max_new_tokens, 1)):  # fmt: skip
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if truth_ratio_variant not in TRUTH_RATIO_VARIANTS:
        raise ValueError(
            f"unknown truth_ratio_variant {truth_ratio_variant!r}; choose one of {', '.join(TRUTH_RATIO_VARIANTS)}"
        )
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(
            f"unknown prompt_format {prompt_format!r}; choose one of {', '.join(PROMPT_FORMATS)}"
        )
    names = eval_splits(forget_split)
    holdout_rows, holdout_note = _holdout(forget_split, data_dir, dataset_name) if mia else (None, "off")
    rows = {
        role: load_split(
            split,
            data_dir=data_dir,
            dataset_name=dataset_name,
            required=EVAL_FIELDS if role in ("forget", "retain") else ANALOG_FIELDS,
        )
        for role, split in names.items()
    }
    prompt = dict(prompt_format=prompt_format, system_prompt=system_prompt)
    settings = {
        "loss": dict(prompt, max_length=max_length, batch_size=batch_size),
        "gen": dict(prompt, batch_size=batch_size, max_new_tokens=max_new_tokens),
    }
    start, batches_before = time.perf_counter(), shard.batches_run
    scores, generations, n_scored = {}, {}, 0
    model.eval()
    for role, role_rows in rows.items():
        scores[role], generations[role], n = score_split(
            model, tokenizer, role_rows, role, settings, progress, shard
        )
        n_scored += n
    membership = {}
    if holdout_rows is not None:
        mia_settings = dict(settings["loss"], progress=progress, shard=shard)
        members = {
            role: sample_scores(model, tokenizer, [r["question"] for r in role_rows], [r["answer"] for r in role_rows],
                                desc=f"{role} membership", **mia_settings)
            for role, role_rows in (("forget", rows["forget"]), ("holdout", holdout_rows))
        }  # fmt: skip
        membership = mia_metrics(members["forget"], members["holdout"])
        n_scored += len(rows["forget"]) + len(holdout_rows)
    seconds = time.perf_counter() - start
    batches_per_rank = shard.all_gather(shard.batches_run - batches_before)

    n_samples = sum(len(r) for r in rows.values())
    meta = {
        "benchmark": "tofu",
        "source": "evaluate",
        "model": recorded_path(model.name_or_path),
        "dtype": str(model.dtype).removeprefix("torch."),
        "forget_split": names["forget"],
        "splits": {
            role: {"name": names[role], "n": len(r), "questions_sha256": questions_sha256(r)}
            for role, r in rows.items()
        },
        "data": {
            "data_dir": recorded_path(data_dir) if data_dir is not None else None,
            "dataset_name": dataset_name,
        },
        "truth_ratio_variant": truth_ratio_variant,
        "prompt_format": prompt_format,
        "system_prompt": system_prompt,
        # What the model actually saw: a chat template may insert a default system message of its own.
        "system_prompt_used": system_prompt_used(tokenizer, prompt_format, system_prompt),
        "max_length": max_length,
        "batch_size": batch_size,
        "generation": {
            "do_sample": False,
            "num_beams": 1,
            "use_cache": True,
            "padding_side": "left",
            "max_new_tokens": max_new_tokens,
        },
        "package_version": _package_version(),
        "torch_version": torch.__version__,
        "transformers_version": importlib.metadata.version("transformers"),
        "hardware": _hardware(model),
        "torch_threads": torch.get_num_threads(),
        "timing": {
            "seconds": round(seconds, 3),
            "samples": n_samples,
            "sequences_scored": n_scored,
            "samples_per_s": round(n_samples / seconds, 2),
            "processes": shard.world_size,
            "batches_per_rank": batches_per_rank,
        },
    }
    if holdout_rows is not None:
        meta["splits"]["holdout"] = {
            "name": paired_split(forget_split, "holdout"), "n": len(holdout_rows),
            "questions_sha256": questions_sha256(holdout_rows),
        }  # fmt: skip
    meta["membership_inference"] = holdout_note
    if seeds:
        meta["seeds"] = dict(seeds)
    chance = {
        role: float(np.mean([x["fact_chance"] for x in r]))
        for role, r in rows.items()
        if "fact_chance" in r[0]
    }
    if chance:
        meta["fact_recall_chance"] = chance
    losses = {
        role: {
            "answer": s.answer_loss.tolist(),
            **({"paraphrased": s.paraphrased_loss.tolist()} if s.paraphrased_loss is not None else {}),
            "perturbed": [row.tolist() for row in s.perturbed_loss],
        }
        for role, s in scores.items()
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "metrics": tofu_metrics(scores, truth_ratio_variant) | membership,
        "losses": losses,
        "generations": generations,
        "meta": meta,
    }


# ----------------------------------------------------------------------------- forget quality


def reference_ratios(result: dict, reference: dict, where: str) -> tuple[np.ndarray, str]:
    """The reference's per-sample forget truth ratios, after checking it is comparable to `result`."""
    meta = result["meta"]
    variant = meta["truth_ratio_variant"]
    if is_legacy_log(reference):
        # Legacy logs keep the losses, so the ratios follow the result's variant.
        return legacy_scores(reference, where)["forget"].ratios(variant), "legacy_log"
    entry = reference.get("metrics", {}).get("forget_truth_ratio", {})
    if "per_sample_ratio" not in entry:
        raise ValueError(
            f"reference {where} has no per-sample forget truth ratios (metrics.forget_truth_ratio.per_sample_ratio); "
            "evaluate the retain-only model with `llm-unlearn eval` and pass its eval.json"
        )
    ref_meta = reference.get("meta", {})
    checks = [("truth_ratio_variant", ref_meta.get("truth_ratio_variant"), variant)]
    ours, theirs = meta["splits"]["forget"], ref_meta.get("splits", {}).get("forget", {})
    checks.append(("forget split", theirs.get("name"), ours.get("name")))
    if "questions_sha256" in ours:
        if "questions_sha256" not in theirs:
            raise ValueError(
                f"reference {where} records no hash of the forget questions it was scored on "
                "(meta.splits.forget.questions_sha256), so it may be of another split; re-evaluate the reference"
            )
        checks.append(("forget questions (sha256)", theirs["questions_sha256"], ours["questions_sha256"]))
    if ref_meta.get("source") != "legacy_log":
        checks += [(key, ref_meta.get(key), meta.get(key)) for key in ("prompt_format", "system_prompt")]
    for what, got, want in checks:
        if got != want:
            raise ValueError(
                f"reference {where} was evaluated with {what} {got!r} but the model with {want!r}; "
                "forget quality needs both on the same split, template and truth-ratio variant: re-evaluate the reference"
            )
    return np.asarray(entry["per_sample_ratio"], dtype=np.float64), "eval.json"


def add_forget_quality(result: dict, reference: dict | str | Path) -> dict:
    """A copy of `result` with `metrics.forget_quality`: the KS p-value against a retain-only reference.

    `reference` is an eval.json dict, or a path to an eval.json or to a legacy `eval_log_aggregated.json`
    (told apart by their keys). Raises ValueError if the reference has no per-sample ratios, another
    forget split or size, truth-ratio variant or prompt format (the last two only checkable for eval.json).
    """
    where = str(reference) if isinstance(reference, (str, Path)) else "<in-memory eval dict>"
    if isinstance(reference, (str, Path)):
        reference = json.loads(Path(reference).read_text(encoding="utf-8"))
    entry = result["metrics"].get("forget_truth_ratio", {})
    if "per_sample_ratio" not in entry:
        raise ValueError("result has no per-sample forget truth ratios; compute it with `evaluate`")
    ratios = np.asarray(entry["per_sample_ratio"], dtype=np.float64)
    ref_ratios, kind = reference_ratios(result, reference, where)
    if len(ref_ratios) != len(ratios):
        raise ValueError(
            f"reference {where} has {len(ref_ratios)} forget samples but the model {len(ratios)}; "
            "forget quality needs the same forget split at the same size (legacy logs hold the first 300 rows)"
        )
    out = copy.deepcopy(result)
    out["metrics"]["forget_quality"] = {"value": forget_quality(ratios, ref_ratios), "direction": "higher"}
    floor = forget_quality_floor(len(ratios), len(ref_ratios))
    if floor > FQ_FLOOR_WARN:
        # Recorded with the number, so report and card can say it too, not only this run's log.
        out["metrics"]["forget_quality"]["smallest_possible"] = floor
        logger.warning(
            "forget quality on %d forget questions cannot fall below %.3g (the KS p-value of two samples that do "
            "not overlap): it cannot show that forgetting failed; use a forget set of at least %d questions",
            len(ratios), floor, MIN_FQ_QUESTIONS,
        )  # fmt: skip
    out["meta"]["forget_quality_reference"] = {
        "path": recorded_path(where),
        "ratios_from": kind,
        "model": reference.get("meta", {}).get("model") if kind == "eval.json" else None,
        "n": len(ref_ratios),
    }
    if kind == "eval.json":
        out["metrics"] |= _membership_reference(result, reference, where)
    return out


def _membership_reference(result: dict, reference: dict, where: str) -> dict:
    """`mia_auc_reference` and `privleak` when both evaluations scored membership on the same splits."""
    ours, theirs = scores_from_metrics(result["metrics"]), scores_from_metrics(reference.get("metrics", {}))
    if ours is None or theirs is None:
        return {}
    for role in ("forget", "holdout"):
        mine = result["meta"]["splits"].get(role, {}).get("questions_sha256")
        other = reference.get("meta", {}).get("splits", {}).get(role, {}).get("questions_sha256")
        if mine != other:
            raise ValueError(
                f"reference {where} scored membership on another {role} set than the model; re-evaluate the "
                "reference on the same forget and holdout splits"
            )
    return reference_metrics(ours[0], ours[1], theirs[0], theirs[1])


# ----------------------------------------------------------------------------- files


def load_eval(path: str | Path) -> dict:
    """Read an eval.json written by `write_eval`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"eval file {path} not found; run `llm-unlearn eval` to create it")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        why = err.msg if isinstance(err, json.JSONDecodeError) else err.reason
        raise ValueError(
            f"{path} is not valid JSON ({why}); evaluate again with `llm-unlearn eval`"
        ) from None
    if not (
        isinstance(result, dict)
        and isinstance(result.get("metrics"), dict)
        and isinstance(result.get("meta"), dict)
    ):
        raise ValueError(
            f"{path} is not an eval.json (it needs `metrics` and `meta`); evaluate again with `llm-unlearn eval`"
        )
    return result


def recorded_path(path: str | Path) -> str:
    """A model or data path as records name it: a local one absolute (the record means the same read from any
    folder), anything else (a Hub id) as given."""
    return str(Path(path).resolve()) if str(path) and Path(path).exists() else str(path)


def write_eval(result: dict, path: str | Path) -> Path:
    """Write `result` as JSON atomically (`write_text_atomic`). A Hugging Face token in it (a system prompt is
    recorded in `meta`) is written redacted."""
    from ..runs.folder import write_text_atomic
    from ..runs.redact import redact_secrets

    return write_text_atomic(path, redact_secrets(json.dumps(result, indent=1)) + "\n")
