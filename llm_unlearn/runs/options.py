"""The error every option check raises, and the "did you mean" every unknown name gets.

Option dataclasses live beside the feature they configure (`data/args.py`, `models/args.py`,
`methods/args.py`, `eval/args.py`, `core/config.py`); they share these three helpers.
"""

from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """An invalid configuration: the message names the key and the fix."""


def suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def require(ok: bool, name: str, value, requirement: str) -> None:
    if not ok:
        raise ConfigError(f"--{name} {value} is out of range; it must be {requirement}")
