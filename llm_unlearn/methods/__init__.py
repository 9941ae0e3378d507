"""The method registry: one file per method, each registering a function that returns loss terms.

A method is `fn(model, forget, retain, ctx) -> dict[str, Term]`: named quantities to *minimize*
(gradient ascent's forget term is -NLL). How terms become an update is the trainer's `combine`
option, which is why a method never sums its terms. Names are lowercase and unique; an unknown
name gets a "did you mean"; a dotted path (`my_pkg.my_module.my_method`) loads a method that lives
outside the package.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass

from .common import MethodContext, Term

METHODS: dict[str, Method] = {}


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[..., dict[str, Term]]
    paper: str
    needs_reference: Callable[[object], bool] = lambda config: False
    summary: str = ""
    combine: str = "sum"


def register(name: str, paper: str, summary: str, needs_reference=lambda config: False, combine: str = "sum"):
    """Decorator: add a method to the registry under a lowercase, unique name."""

    def wrap(fn):
        if name != name.lower() or not name.replace("_", "").isalnum():
            raise ValueError(f"method name {name!r} must be lowercase letters, digits and underscores")
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered (by {METHODS[name].fn.__module__})")
        METHODS[name] = Method(name, fn, paper, needs_reference, summary, combine)
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


from . import ga, graddiff, ngdiff  # noqa: E402,F401  (registration side effects)

__all__ = ["METHODS", "Method", "MethodContext", "Term", "get_method", "register"]
