"""Keeping secrets and local paths out of what a run writes or publishes.

Tokens are never printed, logged or uploaded: an option whose name says it holds a secret has its
value replaced in `run_info.json`, and a Hugging Face token is replaced wherever it appears. Paths on
this machine (home folders, Hub cache snapshots, the model cache) are reduced to a portable name
before they go into a model card or a report.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

# An option holds a secret when its name is one of these words or ends in `_<word>` (`--hub_token`,
# `--token`, `--openai_api_key`). Counts and sizes of tokens (`--max_new_tokens`) end otherwise, and
# the tokenizer's special tokens are named, not secret.
_SECRET_WORDS = ("token", "password", "passwd", "secret", "api_key", "apikey")
_NOT_SECRET = {f"{kind}_token" for kind in ("pad", "eos", "bos", "unk", "sep", "cls", "mask")}
# A Hugging Face access token: `hf_` and 34 letters and digits today; 30 or more is matched.
_HF_TOKEN = re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{30,}")
REDACTED = "<redacted>"


def is_secret_option(name: str) -> bool:
    """True for an option (or config field) whose value is a secret: `hub_token`, not `max_new_tokens`."""
    name = name.lstrip("-").lower().replace("-", "_")
    return name not in _NOT_SECRET and any(name == w or name.endswith(f"_{w}") for w in _SECRET_WORDS)


def redact_secrets(text: str) -> str:
    """`text` with every Hugging Face token in it (`hf_...`) replaced, wherever it appears."""
    return _HF_TOKEN.sub(REDACTED, text)


def redacted_argv(argv: list[str]) -> list[str]:
    """The command line with the value of every secret option replaced (`--hub_token X`, `--hub_token=X`,
    see `is_secret_option`) and any Hugging Face token replaced wherever it appears."""
    out, hide_next = [], False
    for arg in argv:
        if hide_next and not arg.startswith("--"):
            out.append(REDACTED)
            hide_next = False
            continue
        hide_next = False
        name, eq, _ = arg.partition("=")
        if arg.startswith("--") and is_secret_option(name):
            out.append(f"{name}={REDACTED}" if eq else arg)
            hide_next = not eq
            continue
        out.append(redact_secrets(arg))
    return out


# Local paths: what a card or a report may say about where a model lives.
LOCAL_PATH = re.compile(r"(?<![\w.~/:<-])~?/[^\s\"'`,;()\[\]{}<>|]+")
HUB_SNAPSHOT = re.compile(r"models--(?P<id>[^/]+)/snapshots/[0-9a-f]+")
WORLD_MODELS = re.compile(r"world-[a-z]+-[0-9a-f]{16}")  # models.build_default_models' cache folder


def local_name(path: str, home: str | None = None) -> str:
    """`path` without the machine's folders: a Hub cache snapshot's Hub id, `.../world-SIZE-HASH/ROLE` for
    a model of the built-in world, else `.../NAME` (`.../FOLDER/NAME` for a file); the home folder is `...`.
    """
    if match := HUB_SNAPSHOT.search(path):
        return match["id"].replace("--", "/")
    home = home or os.path.expanduser("~")
    pure = PurePosixPath(path)
    parts = pure.parts[1:]  # without "/" or "~"
    for root in {home, os.path.realpath(home)} - {os.sep, ""}:
        if pure.is_relative_to(root):
            parts = pure.relative_to(root).parts
    world = next((i for i, part in enumerate(parts) if WORLD_MODELS.fullmatch(part)), None)
    if world is not None:
        kept = parts[world:]
    else:
        kept = parts[-2:] if len(parts) > 1 and pure.suffix else parts[-1:]
    return "/".join(("...", *kept))


def redact_paths(text: str, home: str | None = None, known: Iterable[str] = ()) -> str:
    """`text` with every absolute or `~/` path written as its `local_name`.

    A path is found in free text up to the first space, so a folder name with a space would leave the
    rest of the path in the text: `known` paths (a run's folder and the paths its config names,
    `known_paths`) are replaced whole first, longest first."""
    spaced = {p for p in known if p and os.path.isabs(p) and re.search(r"\s", p)}
    for path in sorted(spaced, key=len, reverse=True):
        text = text.replace(path, local_name(path, home))
    return LOCAL_PATH.sub(lambda match: local_name(match.group(), home), text)


def known_paths(run_dir: str | os.PathLike, config: dict) -> list[str]:
    """The absolute paths a run's records may hold: its folder, the working folder, and the config's path
    values (as saved and resolved)."""
    values = [str(v) for v in config.values() if isinstance(v, str) and v.startswith(("/", "~"))]
    values += [str(Path(run_dir).absolute()), str(Path(run_dir).resolve()), os.getcwd()]
    return values + [os.path.realpath(v) for v in values] + [os.path.dirname(v) for v in values]


def to_dict(*configs) -> dict[str, Any]:
    """Flat dict of all fields, with secrets redacted (`is_secret_option`, and any Hugging Face
    token in a text value), for `unlearn_config.yaml`."""
    out: dict[str, Any] = {}
    for cfg in configs:
        for f in dataclasses.fields(cfg):
            if not f.init:
                continue
            value = getattr(cfg, f.name)
            if isinstance(value, str) and value:
                value = REDACTED if is_secret_option(f.name) else redact_secrets(value)
            out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    """`value` as YAML writes plainly: an enum as its value, a nested dataclass (Trainer's AcceleratorConfig) or
    mapping as a mapping, a sequence as a list, anything else as its text; never a Python repr."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, str):
        return redact_secrets(value)
    if isinstance(value, (bool, type(None))):
        return value
    if isinstance(value, (int, float)):  # as the plain type: YAML has no representer for a subclass
        return float(value) if isinstance(value, float) else int(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict):  # a secret-named key inside (optim_args, a kwargs mapping) is redacted too
        return {str(k): REDACTED if isinstance(v, str) and v and is_secret_option(str(k)) else _plain(v)
                for k, v in value.items()}  # fmt: skip
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    return str(value)
