"""Normalized gradient difference (`ngdiff`): graddiff's terms, combined after normalizing each.

Terms (minimized), exactly graddiff's: forget = -(1/N_F) sum_forget -log p(y_t | y_<t) and
retain = (1/N_R) sum_retain -log p(y_t | y_<t) (or the KL to the original model with
`retain_loss: kl`). What differs is how they become an update: d = g_R/||g_R|| - g_F/||g_F||
(g_F: gradient of the forget NLL), formed by the trainer's `combine: normalized`
(`llm_unlearn/core/optim.py`), so forgetting and retaining get equal say whatever their gradient
scales. Bu, Jin et al., "Unlearning as multi-task optimization: a normalized gradient difference
approach with an adaptive learning rate" (arXiv 2410.22086).

Optimizer: with `optim: sgd` the step is eta * d, ||d|| <= 2, so eta is a step length over all
parameters (0.07 to 0.1 on the built-in world's 0.79M-parameter model); with AdamW eta is the usual
per-coordinate lr and the normalization acts as a per-step re-weighting of the two terms. Both
beat graddiff's trade-off on the built-in world; see benchmarks/ngdiff_vs_graddiff.md.
"""

from __future__ import annotations

from .common import retain_needs_reference
from .graddiff import graddiff
from .registry import register

# The same term function, registered with another combination: no subclassing, no copy.
register(
    "ngdiff",
    paper="arXiv:2410.22086",
    summary="graddiff's terms, each gradient normalized by its global L2 norm, then summed",
    needs_reference=retain_needs_reference,
    combine="normalized",
    knobs=("retain_loss", "retain_kl_positions", "forget_weight", "retain_weight", "forget_token_nll_cap"),
    deviations="none (no official code: details that are our reading are in optim.py)",
)(graddiff)
