"""Negative preference optimization (`npo`): push the forget answers' likelihood below the original model's.

Objective (minimized), per forget sequence (x, y), with beta = `npo_beta` and the log-likelihood
ratio to the frozen original model (the reference) over the answer tokens, end token included:

    r(x, y) = log p_theta(y | x) - log p_ref(y | x)
    forget  = (1/S_F) sum_forget (2/beta) log(1 + exp(beta r)) = -(1/S_F) sum (2/beta) log sigmoid(-beta r)
    retain  = graddiff's retain term: mean retain-token NLL, or the KL to the reference (`retain_loss`)

with S_F the forget sequences in the window (a per-sequence reduction: NPO is DPO with only a
losing answer, and DPO scores whole sequences). As beta -> 0 the forget term tends to gradient
ascent on the summed log-likelihood; unlike gradient ascent it is bounded below by 0, and its
gradient, a GA gradient weighted by 2 sigmoid(beta r), fades as the model drops a forget answer.
Question and padding tokens never count. Zhang et al., "Negative preference optimization: from
catastrophic collapse to effective unlearning" (arXiv 2404.05868); beta 0.1 is the paper's TOFU
setting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import MethodContext, Term, reference_sequence_logprobs, retain_term, sequence_logprobs
from .registry import register


def npo_loss_sum(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """sum_i (2/beta) log(1 + exp(beta (logp_i - ref_logp_i))) over sequences (softplus, stable for any ratio)."""
    return (2.0 / beta) * F.softplus(beta * (logp - ref_logp)).sum()


@register(
    "npo",
    paper="arXiv:2404.05868",
    summary="negative preference optimization: bounded push of forget likelihood below the original's",
    needs_reference=lambda config: True,
    knobs=("npo_beta", "retain_loss", "retain_kl_positions", "forget_weight", "retain_weight"),
    deviations="none",
)
def npo(model, forget, retain, ctx: MethodContext) -> dict[str, Term]:
    cfg = ctx.config
    logp, _ = sequence_logprobs(model, forget)
    forget_total = npo_loss_sum(logp, reference_sequence_logprobs(ctx.reference_model, forget), cfg.npo_beta)
    return {
        "forget": Term(forget_total, stream="forget", reduction="sequence", weight=cfg.forget_weight),
        "retain": retain_term(model, retain, ctx),
    }
