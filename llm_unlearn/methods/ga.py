"""Gradient ascent (`ga`): raise the forget set's NLL.

Objective (minimized): L = -(1/N_F) sum over forget answer tokens of -log p(y_t | y_<t),
i.e. gradient *ascent* on the forget NLL (N_F = forget answer tokens in the window).
Used as a baseline in TOFU (Maini et al., arXiv 2401.06121); it collapses the model when run long.
"""

from __future__ import annotations

from .common import MethodContext, Term, nll_sum
from .registry import register


@register(
    "ga",
    paper="arXiv:2401.06121",
    summary="gradient ascent on the forget NLL",
    knobs=("forget_weight",),
    deviations="none",
)
def ga(model, forget, retain, ctx: MethodContext) -> dict[str, Term]:
    return {"forget": Term(-nll_sum(model, forget), stream="forget", weight=ctx.config.forget_weight)}
