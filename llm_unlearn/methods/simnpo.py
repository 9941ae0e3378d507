"""Simple NPO (`simnpo`): NPO without the reference model, on the length-normalized likelihood.

Objective (minimized), per forget sequence (x, y) with |y| answer tokens (end token included),
beta = `simnpo_beta` and margin gamma = `simnpo_gamma`:

    forget = (1/S_F) sum_forget -(2/beta) log sigmoid( -(beta/|y|) log p_theta(y | x) - gamma )
    retain = graddiff's retain term: mean retain-token NLL, or the KL to the original model (`retain_loss`)

S_F is the forget sequences in the window (a per-sequence reduction). -(1/|y|) log p is the answer's
mean token NLL, so the term saturates once beta x (mean NLL) clears the margin gamma and long answers
do not dominate the sum; dropping the reference removes what the paper calls NPO's reference-model
bias (the effort spent on an answer follows how likely the original model found it). Question and
padding tokens never count. Fan et al., "Simplicity prevails: rethinking negative preference
optimization for LLM unlearning" (arXiv 2410.07163). We follow the paper's
equation; the authors' code writes the margin inside the product, beta x (mean NLL - gamma'), so
their gamma' is our gamma / beta (the same at their TOFU default gamma = 0). Default beta 2.5 is
the paper's TOFU forget05 setting.

Weights. The paper's objective is forget + lambda x retain, the forget term unweighted, which is
our default (`forget_weight` 1, `retain_weight` lambda = 1). The authors' TOFU configuration
instead multiplies the forget term by 0.1375 and the retain term by 1 (lambda moved onto the forget
term), and open-unlearning's SimNPO weighs its forget term by 0.125. We keep 1: `forget_weight` is
one toolkit-wide option whose default weighs every method's forget term alike, so that methods
compare at their own formulas, and 0.1375 was chosen with Llama-2-7B at lr 1e-5, while our recipes'
learning rates were set at weight 1. `--forget_weight 0.1375` gives the authors' TOFU objective
(tests/test_fidelity.py checks it against their formula), `--forget_weight 0.125` open-unlearning's.
"""

from __future__ import annotations

import torch.nn.functional as F

from .common import MethodContext, Term, retain_needs_reference, retain_term, sequence_logprobs
from .registry import register


@register(
    "simnpo",
    paper="arXiv:2410.07163",
    summary="reference-free NPO on the length-normalized likelihood, with a margin",
    needs_reference=retain_needs_reference,
    knobs=(
        "simnpo_beta",
        "simnpo_gamma",
        "retain_loss",
        "retain_kl_positions",
        "forget_weight",
        "retain_weight",
    ),
    deviations="forget_weight 1, the paper's equation (authors' TOFU code: 0.1375, open-unlearning: 0.125; "
    "--forget_weight 0.1375)",
)
def simnpo(model, forget, retain, ctx: MethodContext) -> dict[str, Term]:
    cfg = ctx.config
    beta, gamma = cfg.simnpo_beta, cfg.simnpo_gamma
    logp, length = sequence_logprobs(model, forget)
    margin = -(beta / length.clamp_min(1)) * logp - gamma
    forget_total = -(2.0 / beta) * F.logsigmoid(margin).sum()
    return {
        "forget": Term(forget_total, stream="forget", reduction="sequence", weight=cfg.forget_weight),
        "retain": retain_term(model, retain, ctx),
    }
