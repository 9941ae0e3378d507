"""Unlearning by self-distillation on adjusted logits (`undial`): copy the original model, minus the fact.

For each forget answer token y_t, the target distribution is the frozen original model's next-token
distribution with the logit of y_t lowered by gamma = `undial_strength`:

    q_t = softmax(z_ref,t - gamma e_{y_t})              (z_ref,t: the reference's logits at position t)
    forget = (1/N_F) sum over forget answer tokens of KL(q_t || p_theta(. | y_<t))

N_F is the forget answer tokens in the window (end token included; question and padding tokens
never count). The paper minimizes the cross-entropy H(q_t, p_theta), which has the same gradient;
the KL reads 0 at the target. There is no retain term: the target keeps every other token's share
of the original distribution, which is what protects the rest of the model (the paper trains on the
forget set alone, as does open-unlearning's default). Dong et al., "UNDIAL: self-distillation with
adjusted logits for robust unlearning in large language models" (arXiv 2402.10052). Default gamma
10, open-unlearning's setting.

Why UNDIAL rather than WGA (arXiv 2502.19301): WGA weights each token's gradient-ascent term by the
token's (detached) probability, so its push fades as the token becomes unlikely: a refinement within
the gradient-ascent family we already ship (ga, graddiff, npo, simnpo). UNDIAL is of another kind:
distillation towards a fixed target that says what every next-token distribution should become (the
original's, with the answer token demoted) instead of only pushing the answer down. Its loss is
bounded below by 0, reached at a known model, so it cannot run away however long it trains, and it
needs no retain data; that gives users a genuinely different point to compare against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.qa import IGNORE_INDEX
from .common import MethodContext, Term
from .registry import register


def undial_forget_total(
    model, reference_model, batch: dict[str, torch.Tensor], strength: float
) -> torch.Tensor:
    """Sum over the batch's answer tokens of KL(softmax(z_ref - strength e_y) || p_theta)."""
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with torch.no_grad():
        ref_logits = reference_model(**inputs).logits[:, :-1].float()
    logits = model(**inputs).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    lowered = F.one_hot(labels.clamp_min(0), ref_logits.size(-1)).to(ref_logits.dtype) * strength
    target_logp = F.log_softmax(ref_logits - lowered, dim=-1)
    kl = (target_logp.exp() * (target_logp - F.log_softmax(logits, dim=-1))).sum(-1)
    return (kl * mask).sum()


@register(
    "undial",
    paper="arXiv:2402.10052",
    summary="self-distil the original model with the answer token's logit lowered",
    needs_reference=lambda config: True,
    knobs=("undial_strength", "forget_weight"),
    deviations="KL to the target instead of the paper's cross-entropy (same gradient; the value is 0 at the target)",
)
def undial(model, forget, retain, ctx: MethodContext) -> dict[str, Term]:
    total = undial_forget_total(model, ctx.reference_model, forget, ctx.config.undial_strength)
    return {"forget": Term(total, stream="forget", weight=ctx.config.forget_weight)}
