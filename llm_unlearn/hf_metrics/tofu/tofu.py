"""TOFU forget quality and model utility as a metric for HF `evaluate`, from per-sample values.

    import evaluate
    from llm_unlearn.hf_metrics import TOFU_METRIC, inputs_from_eval
    tofu = evaluate.load(TOFU_METRIC)                      # or config_name="arithmetic"
    tofu.compute(**inputs_from_eval(eval_json, reference_eval_json))

TOFU: "A Task of Fictitious Unlearning for LLMs", Maini et al., arXiv 2401.06121. The numbers are
computed by `llm_unlearn.eval.metrics`, the same code as `llm-unlearn eval`, so they equal eval.json's.
"""

from __future__ import annotations

import math

import datasets
import evaluate
import numpy as np

from llm_unlearn.eval.metrics import (
    MODEL_UTILITY_INPUTS,
    TRUTH_RATIO_VARIANTS,
    SplitScores,
    forget_quality,
    tofu_metrics,
)

_DESCRIPTION = """
TOFU (arXiv 2401.06121) forget quality and model utility from per-sample values. One example is one
question of one eval set: `split` (forget, retain, ra = real authors, wf = world facts), the model's
mean answer NLLs l(a|q) (answer tokens plus the end token, divided by their count) of the answer, the
paraphrased answer (forget and retain only; None elsewhere) and each perturbed answer, the ROUGE-L
recall of its greedy answer, and for forget rows the retain-only reference model's truth ratio R on
the same question (None where there is no reference) and which variant of R that is. Config `geometric`
(default) or `arithmetic` picks how the perturbed probabilities are averaged in R, the model's and the
reference's alike.
"""

_KWARGS_DESCRIPTION = """
Args:
    split: eval set of each example: "forget", "retain", "ra" or "wf" (each must occur).
    answer_loss: l(answer | question).
    paraphrased_loss: l(paraphrased answer | question); None for ra and wf.
    perturbed_losses: l(perturbed answer_j | question) for each j.
    rouge_l: ROUGE-L recall of the greedy generation against the answer.
    reference_truth_ratio: forget rows: the retain-only model's R on the same question (None: no
        forget quality); ignored on other rows.
    reference_truth_ratio_variant: forget rows with a reference: "geometric" or "arithmetic", how its R
        was computed; it must be this config's ("" elsewhere).
Returns:
    model_utility: harmonic mean of the nine retain / ra / wf numbers (each also returned).
    forget_quality: KS-test p-value of the forget-set R against the reference's (only with references).
    forget_truth_ratio, forget_prob, forget_rouge_l: the forget-set numbers.
Examples:
    >>> tofu = evaluate.load(TOFU_METRIC)
    >>> tofu.compute(**inputs_from_eval(result, reference))["forget_quality"]
"""

_CITATION = """
@article{maini2024tofu,
  title={TOFU: A Task of Fictitious Unlearning for LLMs},
  author={Maini, Pratyush and Feng, Zhili and Schwarzschild, Avi and Lipton, Zachary C. and Kolter, J. Zico},
  journal={arXiv preprint arXiv:2401.06121},
  year={2024}
}
"""

SPLITS = ("forget", "retain", "ra", "wf")


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _with_variant(kwargs: dict, batch: bool) -> dict:
    if "split" not in kwargs or "reference_truth_ratio_variant" in kwargs:
        return kwargs
    return {**kwargs, "reference_truth_ratio_variant": [""] * len(kwargs["split"]) if batch else ""}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Tofu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "split": datasets.Value("string"),
                    "answer_loss": datasets.Value("float64"),
                    "paraphrased_loss": datasets.Value("float64"),
                    "perturbed_losses": datasets.Sequence(datasets.Value("float64")),
                    "rouge_l": datasets.Value("float64"),
                    "reference_truth_ratio": datasets.Value("float64"),
                    "reference_truth_ratio_variant": datasets.Value("string"),
                }
            ),
            reference_urls=[
                "https://arxiv.org/abs/2401.06121",
                "https://github.com/locuslab/open-unlearning",
            ],
        )

    # Inputs made before the variant column existed leave it out: filled with "" (no variant given), which
    # is refused only where reference ratios are given, as those need it.
    def compute(self, **kwargs):
        """The metrics of the examples given here and added before (`evaluate` appends the inputs' description)."""
        return super().compute(**_with_variant(kwargs, batch=True))

    def add_batch(self, **kwargs):
        """Add a batch of examples."""
        return super().add_batch(**_with_variant(kwargs, batch=True))

    def add(self, **kwargs):
        """Add one example."""
        return super().add(**_with_variant(kwargs, batch=False))

    def _compute(
        self,
        split,
        answer_loss,
        paraphrased_loss,
        perturbed_losses,
        rouge_l,
        reference_truth_ratio,
        reference_truth_ratio_variant,
    ):
        variant = "geometric" if self.config_name == "default" else self.config_name
        if variant not in TRUTH_RATIO_VARIANTS:
            raise ValueError(
                f"unknown config {self.config_name!r}; choose one of default, {', '.join(TRUTH_RATIO_VARIANTS)}"
            )
        unknown = sorted(set(split) - set(SPLITS))
        absent = [s for s in SPLITS if s not in split]
        if unknown or absent:
            raise ValueError(
                f"split values must be {', '.join(SPLITS)}, each at least once; unknown {unknown}, absent {absent}"
            )
        scores, reference = {}, []
        for name in SPLITS:
            rows = [i for i, s in enumerate(split) if s == name]
            has_paraphrase = name in ("forget", "retain")
            if has_paraphrase and any(_missing(paraphrased_loss[i]) for i in rows):
                raise ValueError(f"every {name} example needs a paraphrased_loss")
            scores[name] = SplitScores(
                answer_loss=np.array([answer_loss[i] for i in rows], dtype=np.float64),
                paraphrased_loss=np.array([paraphrased_loss[i] for i in rows]) if has_paraphrase else None,
                perturbed_loss=[np.asarray(perturbed_losses[i], dtype=np.float64) for i in rows],
                rouge_l=np.array([rouge_l[i] for i in rows], dtype=np.float64),
            )
            if name == "forget":
                reference = [reference_truth_ratio[i] for i in rows]
                kinds = {
                    reference_truth_ratio_variant[i] for i in rows if not _missing(reference_truth_ratio[i])
                }
                if "" in kinds or None in kinds:
                    raise ValueError(
                        "reference_truth_ratio_variant is not given for the reference's truth ratios: pass the "
                        "variant they were computed with, geometric or arithmetic (inputs_from_eval does)"
                    )
                if kinds - {variant}:
                    # The model's ratios are computed here with this config's variant: both must be of one kind.
                    raise ValueError(
                        f"the reference truth ratios are {', '.join(sorted(map(str, kinds)))}, not {variant}: load "
                        f"the metric with config_name={sorted(map(str, kinds))[0]!r}, or re-evaluate the reference "
                        f"with --truth_ratio_variant {variant}"
                    )
        metrics = tofu_metrics(scores, variant)
        out = {"model_utility": metrics["model_utility"]["value"]}
        out |= {name: metrics[name]["value"] for name in MODEL_UTILITY_INPUTS}
        out |= {
            name: metrics[name]["value"] for name in ("forget_truth_ratio", "forget_prob", "forget_rouge_l")
        }
        given = [not _missing(r) for r in reference]
        if all(given):
            out["forget_quality"] = forget_quality(
                metrics["forget_truth_ratio"]["per_sample_ratio"], reference
            )
        elif any(given):
            raise ValueError("reference_truth_ratio is given for some forget examples but not all")
        return out
