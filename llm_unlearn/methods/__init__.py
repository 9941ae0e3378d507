"""The method registry: one file per method, each registering a function that returns loss terms.

A method is `fn(model, forget, retain, ctx) -> dict[str, Term]`: named quantities to *minimize*
(gradient ascent's forget term is -NLL). How terms become an update is the trainer's `combine`
option, which is why a method never sums its terms. Names are lowercase and unique; an unknown
name gets a "did you mean"; a dotted path (`my_pkg.my_module.my_method`) loads a method that lives
outside the package.

What a method needs besides the two batches it declares when it registers, and the trainer
provides it without knowing which method asked:
- `needs_reference(config)`: the frozen original model, as `ctx.reference_model` (under LoRA, the
  base model with the adapters switched off);
- `forget_alternatives(config)`: a list of answers, one of which is paired with every forget
  question (e.g. refusals): forget batches then also carry `alt_input_ids`, `alt_attention_mask`
  and `alt_labels`, the same prompt answered by the alternative;
- `trainable(model, config)`: the names of the parameters it trains; every other parameter is
  frozen before the optimizer is built.
Anything else (hidden states, second-order gradients) a method gets from the model itself, inside
its own function.

May import: `runs`, `data`.
"""

from __future__ import annotations

from . import dpo, ga, gc, graddiff, idkpo, ngdiff, npo, rmu, simnpo, undial  # noqa: F401  (registration side effects)
from .common import MethodContext, Term
from .registry import COMBINES, METHODS, Method, get_method, register

__all__ = ["COMBINES", "METHODS", "Method", "MethodContext", "Term", "get_method", "register"]
