"""Refusal fine-tuning (`idkpo`): TOFU's "preference optimization" baseline, learning "I don't know".

Each forget question x is paired with a refusal y_idk (one line of the packaged refusal list or of
`--refusals_file`, drawn per example with the run's seed), tokenized with the same prompt as the
forget example; the forget answer itself is never scored. Objective (minimized):

    forget = (1/S_F) sum_forget (1/|y_idk|) sum_t -log p_theta(y_idk,t | x, y_idk,<t)
    retain = graddiff's retain term: mean retain-token NLL, or the KL to the original model (`retain_loss`)

|y_idk| counts the refusal's answer tokens, end token included; S_F is the forget sequences in the
window. The refusal's mean token NLL is averaged per question (a per-sequence reduction) because
the trainer's token counts are those of the forget answers, not of the refusals; TOFU's code
averages over all refusal tokens of a batch instead, which weighs long refusals more. Maini et al.,
"TOFU: a task of fictitious unlearning for LLMs" (arXiv 2401.06121), section "Preference
Optimization". Reference-free unless `retain_loss: kl`. The DPO form of the same preference is `dpo`.
"""

from __future__ import annotations

from .common import (
    MethodContext,
    Term,
    alternative,
    refusal_answers,
    retain_needs_reference,
    retain_term,
    sequence_logprobs,
)
from .registry import register


@register(
    "idkpo",
    paper="arXiv:2401.06121",
    summary="fine-tune on refusal answers to forget questions, keep the retain set (TOFU's PO)",
    needs_reference=retain_needs_reference,
    knobs=("refusals_file", "retain_loss", "retain_kl_positions", "forget_weight", "retain_weight"),
    forget_alternatives=refusal_answers,
    deviations="refusal NLL averaged per question (TOFU's code: over all refusal tokens of a batch)",
)
def idkpo(model, forget, retain, ctx: MethodContext) -> dict[str, Term]:
    logp, length = sequence_logprobs(model, alternative(forget))
    forget_total = -(logp / length.clamp_min(1)).sum()
    return {
        "forget": Term(forget_total, stream="forget", reduction="sequence", weight=ctx.config.forget_weight),
        "retain": retain_term(model, retain, ctx),
    }
