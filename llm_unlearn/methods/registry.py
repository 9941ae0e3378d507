"""The method registry itself: `register` (a decorator each method file applies), `get_method`, `METHODS`.

Method files import `register` from here, and `methods/__init__.py` imports the method files, so the
registry is filled on first import of `llm_unlearn.methods` without any module importing itself back.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass

from .common import Term

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


def _same_function(a, b) -> bool:
    """One function, also when its file was loaded twice: run as a script (`__main__`), then imported by
    a dotted --method path, or reloaded."""
    if a is b:
        return True
    code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
    return (
        code_a is not None
        and code_b is not None
        and a.__qualname__ == b.__qualname__
        and code_a.co_filename == code_b.co_filename
    )


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
        if name in METHODS and not _same_function(METHODS[name].fn, fn):
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
        # A function `register` declared (its combine, its reference, its knobs) keeps what it declared.
        declared = next((m for m in METHODS.values() if _same_function(m.fn, fn)), None)
        if declared is not None:
            return declared
        return Method(
            name, fn, paper=getattr(fn, "paper", ""), summary=(fn.__doc__ or "").strip().split("\n")[0]
        )
    close = [m for m in METHODS if m == name.lower()] or difflib.get_close_matches(
        name.lower(), list(METHODS), n=1
    )
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown method {name!r}; {hint}registered: {', '.join(sorted(METHODS))}")
