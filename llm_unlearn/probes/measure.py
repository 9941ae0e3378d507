"""What a probe measures on a set of forget rows, and recovery relative to the retain-only model.

Per row, with l(a|q) the mean answer NLL of `eval/scoring.py` (answer tokens plus the end token):
    forget_prob         p(a|q) = exp(-l(a|q))                                         (lower: forgotten)
    forget_rouge_l      ROUGE-L recall of the greedy answer against the gold answer   (lower)
    forget_truth_ratio  min(R, 1/R), R = exp(-mean_j l(pert_j|q)) / exp(-l(para|q))   (closer to the
                        retain-only model's value), where rows have paraphrased and perturbed answers
    forget_fact_recall  the gold fact string inside the greedy answer                  (lower), where rows
                        carry a `fact` (the built-in world)
each averaged over rows (TOFU, arXiv 2401.06121; `eval/metrics.py` holds the formulas).

Recovery (`shared/docs/ngdiff-gen.md` section 4) puts a probed metric on the scale from the retain-only
model (0) to the original model (1):

    recovery = (m(unlearned + probe) - m(retain + probe)) / (m(original) - m(retain))

The same probe is applied to the retain-only model so that what the probe teaches by itself (A's
answers share templates and facts with E's) is subtracted; the denominator is the gap the unlearning
had to close, taken without any probe. Where |m(original) - m(retain)| < eps there is nothing to
recover on that metric, and recovery is None with the reason rather than a huge or infinite ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..eval.metrics import fact_recall, forget_truth_ratio, normalized_prob, rouge_l_recall, truth_ratio
from ..eval.scoring import answer_losses, generate_answers

DIRECTIONS = {
    "forget_prob": "lower",
    "forget_rouge_l": "lower",
    "forget_truth_ratio": "closer_to_reference",
    "forget_fact_recall": "lower",
}
RECOVERY_EPS = 1e-3  # every metric above lies in [0, 1]; a smaller gap is noise, not knowledge


@dataclass
class EvalSettings:
    """How rows are scored: the prompt format of the run, and scoring / generation sizes."""

    prompt_format: str = "chat_template"
    system_prompt: str | None = None
    max_length: int = 1024
    batch_size: int = 32
    max_new_tokens: int = 64

    def prompt(self) -> dict:
        return dict(prompt_format=self.prompt_format, system_prompt=self.system_prompt)


def has_truth_ratio_fields(rows: Sequence[dict]) -> bool:
    return all("paraphrased_answer" in r and "perturbed_answer" in r for r in rows)


def _entry(per_sample: np.ndarray, name: str) -> dict:
    return {
        "value": float(per_sample.mean()),
        "direction": DIRECTIONS[name],
        "per_sample": [float(x) for x in per_sample],
    }


def forget_metrics(model, tokenizer, rows: Sequence[dict], settings: EvalSettings, desc: str = "") -> dict:
    """The metrics of the module docstring on `rows` (all answers of a row scored in one length-sorted pass)."""
    with_tr = has_truth_ratio_fields(rows)
    questions, texts = [], []
    for r in rows:
        candidates = [r["answer"]] + ([r["paraphrased_answer"], *r["perturbed_answer"]] if with_tr else [])
        questions += [r["question"]] * len(candidates)
        texts += candidates
    flat = answer_losses(
        model, tokenizer, questions, texts, max_length=settings.max_length, batch_size=settings.batch_size,
        desc=f"{desc} losses", **settings.prompt(),
    )  # fmt: skip
    generated = generate_answers(
        model, tokenizer, [r["question"] for r in rows], batch_size=settings.batch_size,
        max_new_tokens=settings.max_new_tokens, desc=f"{desc} generation", **settings.prompt(),
    )  # fmt: skip
    answer, para, pert, i = [], [], [], 0
    for r in rows:
        answer.append(flat[i])
        if with_tr:
            para.append(flat[i + 1])
            pert.append(flat[i + 2 : i + 2 + len(r["perturbed_answer"])])
            i += 2 + len(r["perturbed_answer"])
        else:
            i += 1
    metrics = {
        "forget_prob": _entry(normalized_prob(answer), "forget_prob"),
        "forget_rouge_l": _entry(rouge_l_recall([r["answer"] for r in rows], generated), "forget_rouge_l"),
    }
    if with_tr:
        metrics["forget_truth_ratio"] = _entry(
            forget_truth_ratio(truth_ratio(para, pert)), "forget_truth_ratio"
        )
    if all("fact" in r for r in rows):
        metrics["forget_fact_recall"] = _entry(
            fact_recall([r["fact"] for r in rows], generated), "forget_fact_recall"
        )
    return metrics


def recovery(
    unlearned_probed: float, retain_probed: float, original: float, retain: float, eps: float = RECOVERY_EPS
) -> tuple[float | None, str | None]:
    """(recovery, None), or (None, why) when |original - retain| < eps (module docstring)."""
    gap = original - retain
    if not abs(gap) >= eps:  # also catches a NaN gap
        return None, f"original and retain-only models differ by {abs(gap):.2g} < {eps:g}: nothing to recover"
    return (unlearned_probed - retain_probed) / gap, None
