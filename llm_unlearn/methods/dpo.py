"""Direct preference optimization towards refusals (`dpo`): prefer "I don't know" to the forget answer.

Each forget question x is paired with a refusal y_w (the preferred answer: one line of the packaged
refusal list or of `--refusals_file`, drawn per example with the run's seed) and its forget answer
y_l (the dispreferred one). Both are tokenized with the same prompt, and only answer tokens (end token
included) are scored. With beta = `dpo_beta` and the frozen original model as reference:

    m(x)   = [log p_theta(y_w|x) - log p_ref(y_w|x)] - [log p_theta(y_l|x) - log p_ref(y_l|x)]
    forget = (1/S_F) sum_forget -log sigmoid(beta m(x))
    retain = graddiff's retain term: mean retain-token NLL, or the KL to the reference (`retain_loss`)

S_F is the forget sequences in the window (a per-sequence reduction). Rafailov et al., "Direct
preference optimization" (arXiv 2305.18290), used for unlearning with refusal answers as in
TOFU's and NPO's baselines (arXiv 2401.06121, 2404.05868). Default beta 0.1.

Scale. This is the paper's loss, -log sigmoid(beta m), and we keep it. open-unlearning's DPO (its
IdkDPO) multiplies it by 2/beta, 20 at beta 0.1, the factor of NPO's loss. With the paper's scale
the loss starts at log 2 whatever beta is, so changing beta does not also reweigh the forget term
against the retain term, and `dpo` is the DPO its paper defines. `--forget_weight`
2/beta (20 at beta 0.1) gives open-unlearning's objective; tests/test_fidelity.py checks both.
"""

from __future__ import annotations

import torch.nn.functional as F

from .common import (
    MethodContext,
    Term,
    alternative,
    reference_sequence_logprobs,
    refusal_answers,
    retain_term,
    sequence_logprobs,
)
from .registry import register


@register(
    "dpo",
    paper="arXiv:2305.18290",
    summary="DPO with a refusal preferred over the forget answer, against the original model",
    needs_reference=lambda config: True,
    knobs=(
        "dpo_beta",
        "refusals_file",
        "retain_loss",
        "retain_kl_positions",
        "forget_weight",
        "retain_weight",
    ),
    forget_alternatives=refusal_answers,
    deviations="none: the paper's loss (open-unlearning's is 2/beta times it: --forget_weight 20 at beta 0.1)",
)
def dpo(model, forget, retain, ctx: MethodContext) -> dict[str, Term]:
    cfg = ctx.config
    refusal = alternative(forget)
    chosen = sequence_logprobs(model, refusal)[0] - reference_sequence_logprobs(ctx.reference_model, refusal)
    rejected = sequence_logprobs(model, forget)[0] - reference_sequence_logprobs(ctx.reference_model, forget)
    forget_total = -F.logsigmoid(cfg.dpo_beta * (chosen - rejected)).sum()
    return {
        "forget": Term(forget_total, stream="forget", reduction="sequence", weight=cfg.forget_weight),
        "retain": retain_term(model, retain, ctx),
    }
