"""The error every option check raises, the "did you mean" every unknown name gets, and the subcommands' parser.

Option dataclasses live beside the feature they configure (`data/args.py`, `models/args.py`,
`methods/args.py`, `eval/args.py`, `core/config.py`); they share these three helpers.
"""

from __future__ import annotations

import argparse
import difflib
import numbers
import os


class ConfigError(ValueError):
    """An invalid configuration: the message names the key and the fix."""


class CommandParser(argparse.ArgumentParser):
    """argparse for a subcommand whose errors (a missing argument, a bad number) are one `ConfigError` line
    through the CLI's error path, naming its `--help`, not argparse's usage block and exit."""

    def error(self, message: str):
        raise ConfigError(f"{message}; see `{self.prog} --help`")


def underscored(argv: list[str]) -> list[str]:
    """`argv` with every option name spelled with underscores (`--forget-split` -> `--forget_split`, also in
    `--name=value`): `--help` lists both spellings, and the commands look options up by the first."""
    out = []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token[2:].partition("=")
            token = "--" + name.replace("-", "_") + eq + value
        out.append(token)
    return out


def truth(text: str) -> bool:
    """An argparse type for `--option true|false`, as the option dataclasses' booleans are spelled."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
    return value


def add_trust_remote_code(parser: argparse.ArgumentParser) -> None:
    """`--trust_remote_code true`: asked for on each command line, never read from a run's recorded settings
    (a run folder may come from elsewhere, and the code it names would run on loading)."""
    parser.add_argument(
        "--trust_remote_code", type=truth, default=False, metavar="BOOL",
        help="run code shipped with the model (its config names an auto_map); off: such a model is refused",
    )  # fmt: skip


def require_one_process(command: str) -> None:
    """Refuse a multi-process launch (torchrun, accelerate launch) of a command that runs in one process:
    each rank would do all the work and write the same files, or wait on the first one's claim."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            f"llm-unlearn {command} runs in one process; start it without torchrun or accelerate launch "
            f"(`llm-unlearn {command} ...`)"
        )


def suggest(name: str, choices) -> str:
    choices = list(choices)
    close = [c for c in choices if str(c).lower() == str(name).lower()]  # `NPO` for `npo`
    close = close or difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_SIMPLE = {"float": float, "int": int, "bool": bool, "str": str}


def _simple_type(annotation) -> tuple[type, bool] | None:
    """(type, None allowed) of a field annotated `float`, `int | None`, `Optional[bool]`, ...; None for others."""
    text = (
        annotation
        if isinstance(annotation, str)
        else getattr(annotation, "__name__", None) or str(annotation)
    )
    text = text.replace("typing.", "").replace(" ", "")
    if text.startswith("Optional[") and text.endswith("]"):
        text = text[len("Optional[") : -1] + "|None"
    parts = text.split("|")
    kinds = [p for p in parts if p != "None"]
    if len(kinds) != 1 or kinds[0] not in _SIMPLE:
        return None
    return _SIMPLE[kinds[0]], len(parts) > 1


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_field_types(obj, skip=frozenset()) -> None:
    """Refuse a value of another type than its field's: from Python (or a YAML file read by hand), "1e-4" or
    "false" would otherwise be kept as text, and "false" is true in an `if`. The command line converts them.
    `skip`: fields left to their own class (Trainer's, some of which its `__post_init__` rewrites to text)."""
    import dataclasses

    for f in dataclasses.fields(obj):
        kind = _simple_type(f.type) if f.init and f.name not in skip else None
        value = getattr(obj, f.name)
        if kind is None or (
            value is None and (kind[1] or f.default is None)
        ):  # `x: str = None` is optional too
            continue
        want, _ = kind
        # numbers.Integral / Real: a numpy integer or float from a sweep is a number too, kept as the plain one
        # (torch's DataLoader and the YAML record take no numpy scalar); a bool is not a number here. A path
        # object is the text it stands for.
        numeric = {int: numbers.Integral, float: numbers.Real}.get(want)
        if numeric is not None:
            ok = isinstance(value, numeric) and not isinstance(value, bool)
            if ok and type(value) not in (int, float) and not isinstance(value, want):
                setattr(obj, f.name, want(value))
        elif want is str and isinstance(value, os.PathLike):
            ok = True
            setattr(obj, f.name, os.fspath(value))
        else:
            ok = isinstance(value, want)
        if not ok:
            hint = ""
            if want is float and isinstance(value, str) and _is_number(value):
                hint = " (YAML 1.1 reads 1e-4 as text: write 1.0e-4, or pass the number)"
            raise ConfigError(
                f"{f.name} must be {'an' if want is int else 'a'} {want.__name__}, got {value!r} "
                f"({type(value).__name__}){hint}"
            )


def require(ok: bool, name: str, value, requirement: str) -> None:
    if not ok:
        raise ConfigError(f"--{name} {value} is out of range; it must be {requirement}")
