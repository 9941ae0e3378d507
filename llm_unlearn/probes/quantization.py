"""The quantization probe: the forget metrics and membership inference after RTN weight quantization.

Each model (the unlearned one and, as yardsticks, the original and the retain-only reference) is
scored at full precision and after `eval/quant.py`'s round-to-nearest quantization to each bit width,
on the whole forget set (nothing is trained, so there is no attack part): the metrics of `measure.py`
and the membership-inference AUCs of `eval/mia.py` (forget set = members, `holdoutNN` = non-members).
Zhang et al. (arXiv 2410.16454) found 4-bit quantization undoing much of what unlearning removed.

`mia_auc_reference` and `privleak` compare a model with the retain-only reference quantized the same
way (for the reference itself they are left out: it would be compared with itself). Recovery at b
bits is (m(unlearned, b) - m(retain, b)) / (m(original) - m(retain)) with the denominator at full
precision, the formula of the step-budget probes with quantization as the probe.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..eval.mia import mia_metrics, sample_scores
from ..eval.quant import load_bnb_4bit, quantized_copy
from .measure import EvalSettings, forget_metrics

MIA_RECOVERY_METRICS = ("mia_auc_loss", "mia_auc_zlib", "mia_auc_min_k", "mia_auc_min_k_plus_plus")


def full_precision_bits(model: nn.Module) -> int:
    """The bit width of the model's floating-point weights (32 for float32), the 'unquantized' label."""
    return torch.finfo(next(model.parameters()).dtype).bits


def _mia_scores(model, tokenizer, forget_rows, holdout_rows, settings: EvalSettings, desc: str) -> dict:
    kwargs = dict(max_length=settings.max_length, batch_size=settings.batch_size, **settings.prompt())
    return {
        role: sample_scores(
            model,
            tokenizer,
            [r["question"] for r in rows],
            [r["answer"] for r in rows],
            desc=f"{desc} mia {role}",
            **kwargs,
        )  # fmt: skip
        for role, rows in (("forget", forget_rows), ("holdout", holdout_rows))
    }


def quant_variants(
    model: nn.Module,
    tokenizer,
    forget_rows: Sequence[dict],
    holdout_rows: Sequence[dict] | None,
    bits: Sequence[int],
    group_size: int,
    settings: EvalSettings,
    *,
    reference_scores: dict | None = None,
    bnb_path: str | None = None,
    progress: bool = True,
    desc: str = "",
) -> tuple[dict, dict]:
    """Score `model` at full precision and at each of `bits`.

    Returns ({label: {metrics, quantization}}, {label: MIA scores}); labels are strings ("32" for
    float32 full precision, "8", "4", and "nf4" for bitsandbytes 4-bit loading of `bnb_path`, given
    only where `eval.quant.bnb_unavailable()` is None). `reference_scores`, the reference's MIA scores
    by the same labels, adds `mia_auc_reference` and `privleak`. Without `holdout_rows` no MIA is computed.
    """
    labels = [str(full_precision_bits(model))] + [str(b) for b in bits] + (["nf4"] if bnb_path else [])
    results, scores = {}, {}
    for label in tqdm(labels, desc=f"quantization {desc}".strip(), disable=not progress):
        if label == labels[0]:
            variant, report = model, {"method": "none", "bits": int(label)}
        elif label == "nf4":
            variant, report = load_bnb_4bit(bnb_path), {"method": "bitsandbytes_nf4", "bits": 4}
        else:
            variant, report = quantized_copy(model, int(label), group_size)
            report = {k: v for k, v in report.items() if k != "quantized_modules"}
        metrics = forget_metrics(variant, tokenizer, forget_rows, settings, f"{desc} {label}-bit")
        if holdout_rows is not None:
            scores[label] = _mia_scores(variant, tokenizer, forget_rows, holdout_rows, settings, desc)
            reference = reference_scores[label] if reference_scores is not None else None
            metrics |= mia_metrics(scores[label]["forget"], scores[label]["holdout"], reference)
        results[label] = {"metrics": metrics, "quantization": report}
    return results, scores
