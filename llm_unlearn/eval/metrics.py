"""TOFU metrics as pure functions of per-sample losses and generations (numpy/scipy, no torch).

TOFU: "A Task of Fictitious Unlearning for LLMs", Maini et al., arXiv 2401.06121; the definitions
follow the maintained open-unlearning code (arXiv 2506.12618) and `shared/docs/tofu-metrics.md`.

Notation: l(a|q) = (1/|T(a)|) * sum_{t in T(a)} -log p(y_t | y_<t) is the mean answer NLL, where T(a)
are the answer tokens plus the one end-of-turn token; p(a|q) = exp(-l(a|q)) is the geometric-mean
per-token probability. Every probability below is this length-normalised p, as in both the legacy
and the maintained TOFU code (the paper writes unnormalised sequence probabilities).

Everything is computed in log space, without open-unlearning's 1e-10 added to denominators: the
two agree unless a probability falls below ~1e-8, where the epsilon would distort the ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

TRUTH_RATIO_VARIANTS = ("geometric", "arithmetic")
DIRECTIONS = ("higher", "lower", "closer_to_reference")
# The eval sets by role, as named in metric keys: forget set, retain set, real authors, world facts.
ROLES = ("forget", "retain", "ra", "wf")
MODEL_UTILITY_INPUTS = tuple(
    f"{role}_{m}" for role in ("retain", "ra", "wf") for m in ("prob", "rouge_l", "truth_ratio")
)


def _as_rows(perturbed_losses: Sequence[Sequence[float]]) -> list[np.ndarray]:
    return [np.asarray(row, dtype=np.float64) for row in perturbed_losses]


def normalized_prob(mean_nll: Sequence[float]) -> np.ndarray:
    """p(a|q) = exp(-l(a|q)) per sample: the geometric-mean per-token probability."""
    return np.exp(-np.asarray(mean_nll, dtype=np.float64))


def truth_ratio(
    para_loss: Sequence[float], perturbed_losses: Sequence[Sequence[float]], variant: str = "geometric"
) -> np.ndarray:
    """Per-sample truth ratio R = P_pert / p_para (TOFU arXiv 2401.06121, section 2.5.1).

    para_loss: l(paraphrased answer | q) per sample (for real authors / world facts, which have no
    paraphrase, the answer's own loss); perturbed_losses: per sample, l(perturbed_j | q) for each
    perturbed answer j (rows may differ in length).
    - `geometric` (open-unlearning and legacy `aggregate_eval_stat.py`): P_pert = exp(-mean_j l_j).
    - `arithmetic` (legacy `utils.py: get_model_utility`, the paper's formula): P_pert = mean_j exp(-l_j).
    R < 1 means the model prefers the (paraphrased) truth over the perturbations.
    """
    if variant not in TRUTH_RATIO_VARIANTS:
        raise ValueError(
            f"unknown truth_ratio_variant {variant!r}; choose one of {', '.join(TRUTH_RATIO_VARIANTS)}"
        )
    para = np.asarray(para_loss, dtype=np.float64)
    rows = _as_rows(perturbed_losses)
    if len(rows) != len(para):
        raise ValueError(f"{len(para)} paraphrase losses but {len(rows)} rows of perturbed losses")
    if variant == "geometric":
        return np.exp(log_truth_ratio(para, rows))
    return np.array([np.exp(p - row).mean() for p, row in zip(para, rows)])


def log_truth_ratio(para_loss: Sequence[float], perturbed_losses: Sequence[Sequence[float]]) -> np.ndarray:
    """log R of the geometric truth ratio, l_para - mean_j l_pert_j: finite where R itself overflows."""
    para = np.asarray(para_loss, dtype=np.float64)
    rows = _as_rows(perturbed_losses)
    if len(rows) != len(para):
        raise ValueError(f"{len(para)} paraphrase losses but {len(rows)} rows of perturbed losses")
    return np.array([p - row.mean() for p, row in zip(para, rows)])


def forget_truth_ratio(ratios: Sequence[float]) -> np.ndarray:
    """Forget-set per-sample score min(R, 1/R); its mean is the metric (1: truth and lies look alike)."""
    r = np.asarray(ratios, dtype=np.float64)
    return np.minimum(r, 1.0 / r)


def retain_truth_ratio(ratios: Sequence[float]) -> np.ndarray:
    """Retain / real-authors / world-facts per-sample score max(0, 1 - R); its mean is the metric."""
    return np.maximum(0.0, 1.0 - np.asarray(ratios, dtype=np.float64))


def options_normalized_prob(
    answer_loss: Sequence[float], perturbed_losses: Sequence[Sequence[float]]
) -> np.ndarray:
    """Per-sample P = p(a|q) / (p(a|q) + sum_j p(a~_j|q)), used for real authors and world facts.

    Computed as 1 / (1 + sum_j exp(l(a) - l(a~_j))).
    """
    ans = np.asarray(answer_loss, dtype=np.float64)
    return np.array([1.0 / (1.0 + np.exp(a - row).sum()) for a, row in zip(ans, _as_rows(perturbed_losses))])


def rouge_l_recall(targets: Sequence[str], predictions: Sequence[str]) -> np.ndarray:
    """Per-sample ROUGE-L recall: LCS(target, prediction) / len(target), in ROUGE tokens.

    Google `rouge_score` with `use_stemmer=True`; its tokenizer lowercases and keeps [a-z0-9] only.
    The target is the ground-truth answer (TOFU reports rougeL.recall, not F1, not rougeLsum).
    """
    from rouge_score import rouge_scorer

    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    return np.array(
        [scorer.score(t, p)["rougeL"].recall for t, p in zip(targets, predictions)], dtype=np.float64
    )


def fact_recall(facts: Sequence[str], generations: Sequence[str]) -> np.ndarray:
    """Per-sample 1.0 if the gold fact string occurs in the generation (case-insensitive), else 0.0."""
    return np.array([float(f.lower() in g.lower()) for f, g in zip(facts, generations, strict=True)])


def forget_quality(ratios: Sequence[float], reference_ratios: Sequence[float]) -> float:
    """p-value of the two-sample Kolmogorov-Smirnov test between per-sample forget-set truth ratios.

    `scipy.stats.ks_2samp` with its defaults (two-sided, method auto: exact at TOFU sizes), the model's
    R against the retain-only reference model's R on the same split (TOFU arXiv 2401.06121, section
    2.5.2). Legacy code feeds 1/R; KS is invariant to a monotone map of both samples, so the p-value
    is the same. High means the model is statistically indistinguishable from one never trained on
    the forget set.
    """
    return float(stats.ks_2samp(np.asarray(ratios), np.asarray(reference_ratios)).pvalue)


def forget_quality_floor(n: int, m: int) -> float:
    """The smallest forget quality `n` model and `m` reference ratios can give: the KS p-value of two samples
    that do not overlap at all. With 3 questions a side it is 0.1, so the usual 0.05 bar is met whatever the
    model does (a forget set that small cannot show forgetting failed)."""
    return float(stats.ks_2samp(np.arange(n), np.arange(n, n + m)).pvalue)


def model_utility(values: Sequence[float], partial: bool = False) -> float:
    """Harmonic mean of the nine retain / real-authors / world-facts numbers; 0 if any is 0.

    The nine are {Prob, ROUGE-L recall, truth ratio} on each of retain, real authors and world facts
    (TOFU arXiv 2401.06121, section 2.5.2; open-unlearning `hm_aggregate`). `partial`: the same mean of
    the roles' numbers there are (stop.py's utility guard under --auto, on data lacking some roles).
    """
    v = np.asarray(values, dtype=np.float64)
    if len(v) != len(MODEL_UTILITY_INPUTS) and not (partial and len(v) and len(v) % 3 == 0):
        raise ValueError(f"model utility needs {len(MODEL_UTILITY_INPUTS)} numbers, got {len(v)}")
    if (v <= 0).any():
        return 0.0
    return float(stats.hmean(v))


# ----------------------------------------------------------------------------- one eval set -> metrics


@dataclass
class SplitScores:
    """What the metrics of one eval set are computed from, per sample, in row order.

    answer_loss: l(answer|q); paraphrased_loss: l(paraphrased_answer|q), None for real authors and
    world facts; perturbed_loss: l(perturbed_j|q) per sample; rouge_l: ROUGE-L recall of the greedy
    generation; fact_hit: fact recall per sample where rows carry a gold `fact`, else None.
    """

    answer_loss: np.ndarray
    perturbed_loss: list[np.ndarray]
    rouge_l: np.ndarray
    paraphrased_loss: np.ndarray | None = None
    fact_hit: np.ndarray | None = None

    def ratios(self, variant: str) -> np.ndarray:
        para = self.paraphrased_loss if self.paraphrased_loss is not None else self.answer_loss
        return truth_ratio(para, self.perturbed_loss, variant)


def _entry(value: float, direction: str, per_sample: np.ndarray | None = None, **extra) -> dict:
    entry: dict = {"value": float(value), "direction": direction}
    if per_sample is not None:
        entry["per_sample"] = [float(x) for x in per_sample]
    for key, values in extra.items():
        entry[key] = [float(x) for x in values]
    return entry


def tofu_metrics(scores: dict[str, SplitScores], variant: str = "geometric") -> dict[str, dict]:
    """The `metrics` section of eval.json from per-role scores (roles: forget, retain, ra, wf).

    Forget set: prob, rouge_l and fact recall (lower: less is remembered; the retain-only model's
    value is the practical floor) and the truth ratio mean min(R, 1/R) (closer to the retain-only
    model's value is better). Retain, real authors, world facts: prob (options-normalised for ra and
    wf), rouge_l, truth ratio mean max(0, 1 - R), all higher-is-better, and their harmonic mean,
    model utility. Truth-ratio entries keep the raw per-sample R as `per_sample_ratio`.
    """
    metrics: dict[str, dict] = {}
    for role in (r for r in ROLES if r in scores):  # without forget: model utility alone (stop.py's guard)
        s = scores[role]
        ratios = s.ratios(variant)
        if role in ("ra", "wf"):
            prob = options_normalized_prob(s.answer_loss, s.perturbed_loss)
        else:
            prob = normalized_prob(s.answer_loss)
        direction = "lower" if role == "forget" else "higher"
        metrics[f"{role}_prob"] = _entry(prob.mean(), direction, prob)
        metrics[f"{role}_rouge_l"] = _entry(s.rouge_l.mean(), direction, s.rouge_l)
        if role == "forget":
            closeness = forget_truth_ratio(ratios)
            metrics["forget_truth_ratio"] = _entry(
                closeness.mean(), "closer_to_reference", closeness, per_sample_ratio=ratios
            )
        else:
            tr = retain_truth_ratio(ratios)
            metrics[f"{role}_truth_ratio"] = _entry(tr.mean(), "higher", tr, per_sample_ratio=ratios)
        if s.fact_hit is not None:
            metrics[f"{role}_fact_recall"] = _entry(s.fact_hit.mean(), direction, s.fact_hit)
    # The evaluation always has every role (inputs.py checks); stop.py's guard under --auto may lack some.
    names = [name for name in MODEL_UTILITY_INPUTS if name in metrics]
    parts = [metrics[name]["value"] for name in names]
    metrics["model_utility"] = {
        "value": model_utility(parts, partial=True),
        "direction": "higher",
        "inputs": dict(zip(names, parts)),
    }
    return metrics
