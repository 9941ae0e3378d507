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
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass

from .common import MethodContext, Term

METHODS: dict[str, Method] = {}
COMBINES = ("sum", "normalized", "pcgrad")


def _never(config) -> bool:
    return False


@dataclass(frozen=True)
class Method:
    """A registered method: its term function, its paper, and what it needs (module docstring).

    `knobs` are the config fields the method reads, listed by `llm-unlearn ls`; `combine` is the
    combination used unless `--combine` says otherwise; `deviations` is one line saying where the
    defaults depart from the paper (and open-unlearning) and which options restore the paper's
    setting, or "none" (the module docstring gives the reasons).
    """

    name: str
    fn: Callable[..., dict[str, Term]]
    paper: str
    needs_reference: Callable[[object], bool] = _never
    summary: str = ""
    combine: str = "sum"
    knobs: tuple[str, ...] = ()
    forget_alternatives: Callable[[object], list[str]] | None = None
    trainable: Callable[[object, object], set[str]] | None = None
    deviations: str = ""


def register(
    name: str,
    paper: str,
    summary: str,
    needs_reference: Callable[[object], bool] = _never,
    combine: str = "sum",
    knobs: tuple[str, ...] = (),
    forget_alternatives: Callable[[object], list[str]] | None = None,
    trainable: Callable[[object, object], set[str]] | None = None,
    deviations: str = "",
):
    """Decorator: add a method to the registry under a lowercase, unique name.

    A registered method must state its `deviations` from its paper, on one line ("none" if there are none).
    """

    def wrap(fn):
        if name != name.lower() or not name.replace("_", "").isalnum():
            raise ValueError(f"method name {name!r} must be lowercase letters, digits and underscores")
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered (by {METHODS[name].fn.__module__})")
        if combine not in COMBINES:
            raise ValueError(f"method {name!r}: combine {combine!r} is not one of {', '.join(COMBINES)}")
        if not deviations.strip() or "\n" in deviations:
            raise ValueError(
                f"method {name!r}: give deviations, one line on where its defaults differ from its paper, or 'none'"
            )
        METHODS[name] = Method(
            name, fn, paper, needs_reference, summary, combine, tuple(knobs), forget_alternatives, trainable,
            deviations,
        )  # fmt: skip
        return fn

    return wrap


def get_method(name: str) -> Method:
    """Look up a registered name, or import a dotted path to a method function."""
    if name in METHODS:
        return METHODS[name]
    if "." in name:
        module_name, _, attr = name.rpartition(".")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot import method {name!r}: {err}; give a module.function path") from None
        return Method(
            name, fn, paper=getattr(fn, "paper", ""), summary=(fn.__doc__ or "").strip().split("\n")[0]
        )
    close = difflib.get_close_matches(name, list(METHODS), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown method {name!r}; {hint}registered: {', '.join(sorted(METHODS))}")


from . import dpo, ga, gc, graddiff, idkpo, ngdiff, npo, rmu, simnpo, undial  # noqa: E402,F401  (registration side effects)

__all__ = ["COMBINES", "METHODS", "Method", "MethodContext", "Term", "get_method", "register"]
