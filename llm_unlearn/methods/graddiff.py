"""Gradient difference (`graddiff`): ascend on the forget NLL, descend on a retain term.

Objective (minimized), with N_F / N_R the forget / retain answer tokens in the window:
    forget = -(1/N_F) sum_forget -log p(y_t | y_<t)
    retain = (1/N_R) sum_retain -log p(y_t | y_<t)                      (retain_loss: nll)
          or (1/N_R) sum_retain KL(p_ref(.|y_<t) || p_theta(.|y_<t))      (retain_loss: kl)
where p_ref is the frozen model from before unlearning and only answer tokens (and the end token)
count. TOFU's KL baseline averages the KL over every position instead (`retain_kl_positions: all`;
why answer tokens are our default: methods/common.py, `retain_term`). With `forget_token_nll_cap` c,
the forget term ascends on min(-log p(y_t | y_<t), c) instead: a token stops being pushed down once it
is c nats unlikely (common.py, `capped_nll_sum`). Liu et al., "Continual learning and private
unlearning" (arXiv 2203.12817); TOFU's GradDiff and KL baselines (arXiv 2401.06121).
"""

from __future__ import annotations

from .common import MethodContext, Term, capped_nll_sum, nll_sum, retain_needs_reference, retain_term
from .registry import register


@register(
    "graddiff",
    paper="arXiv:2203.12817",
    summary="ascend the forget NLL, descend the retain NLL (or KL to the original model)",
    needs_reference=retain_needs_reference,
    knobs=("retain_loss", "retain_kl_positions", "forget_weight", "retain_weight", "forget_token_nll_cap"),
    deviations="none",
)
def graddiff(model, forget, retain, ctx: MethodContext) -> dict[str, Term]:
    # The pipeline has turned `holdout` into nats before training (core/nll_cap.py).
    cap = getattr(ctx.config, "forget_token_nll_cap", None)
    forget_nll = nll_sum(model, forget) if cap is None else capped_nll_sum(model, forget, float(cap))
    return {
        "forget": Term(-forget_nll, stream="forget", weight=ctx.config.forget_weight),
        "retain": retain_term(model, retain, ctx),
    }
