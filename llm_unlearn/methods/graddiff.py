"""Gradient difference (`graddiff`): ascend on the forget NLL, descend on a retain term.

Objective (minimized), with N_F / N_R the forget / retain answer tokens in the window:
    forget = -(1/N_F) sum_forget -log p(y_t | y_<t)
    retain = (1/N_R) sum_retain -log p(y_t | y_<t)                      (retain_loss: nll)
          or (1/N_R) sum_retain KL(p_ref(.|y_<t) || p_theta(.|y_<t))      (retain_loss: kl)
where p_ref is the frozen model from before unlearning and only answer tokens (and the end token)
count. Liu et al., "Continual learning and private unlearning" (arXiv 2203.12817); TOFU's
GradDiff and KL baselines (arXiv 2401.06121).
"""

from __future__ import annotations

from . import register
from .common import MethodContext, Term, kl_to_reference_sum, nll_sum


@register(
    "graddiff",
    paper="arXiv:2203.12817",
    summary="ascend the forget NLL, descend the retain NLL (or KL to the original model)",
    needs_reference=lambda config: config.retain_loss == "kl",
)
def graddiff(model, forget, retain, ctx: MethodContext) -> dict[str, Term]:
    cfg = ctx.config
    if cfg.retain_loss == "kl":
        retain_total = kl_to_reference_sum(model, ctx.reference_model, retain)
    else:
        retain_total = nll_sum(model, retain)
    return {
        "forget": Term(-nll_sum(model, forget), stream="forget", weight=cfg.forget_weight),
        "retain": Term(retain_total, stream="retain", weight=cfg.retain_weight),
    }
