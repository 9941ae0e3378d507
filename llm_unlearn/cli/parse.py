"""The YAML + command-line parser and `--help`, over the option dataclasses of every feature.

A recipe is a flat YAML file whose keys are fields of `ModelArgs` (models/args.py), `DataArgs`
(data/args.py), `UnlearnConfig` (core/config.py, which adds `MethodOptions` from methods/args.py to
`transformers.TrainingArguments`) and `EvalArgs` (eval/args.py); precedence is dataclass default <
YAML < command line. Field names are unique across the dataclasses, so a flat key always means one
thing, and an unknown key is an error that names the nearest valid one.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments

from ..core.config import AUTO_SETTINGS, UnlearnConfig
from ..data.args import DataArgs
from ..eval.args import EvalArgs
from ..models.args import ModelArgs
from ..runs.options import ConfigError, suggest, underscored

CONFIG_CLASSES = (ModelArgs, DataArgs, UnlearnConfig, EvalArgs)


def field_names(classes=CONFIG_CLASSES) -> set[str]:
    return {f.name for cls in classes for f in dataclasses.fields(cls) if f.init}


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, first: int, again: int):
        super().__init__(key)
        self.key, self.lines = key, (first, again)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word; in a recipe that hides which value a run used."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, str) and key in seen:
                raise _DuplicateKey(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path, classes=CONFIG_CLASSES) -> dict[str, Any]:
    """Read a flat recipe; refuse unknown keys with a suggestion."""
    if not str(path).strip():  # Path("") is ".", which would be named as the missing file
        raise ConfigError("--config is empty; pass a YAML recipe (see recipes/README.md), or leave it out")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {path} not found; pass an existing YAML recipe (see recipes/README.md)"
        )
    try:
        values = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; save the recipe as UTF-8") from None
    except _DuplicateKey as err:
        first, again = err.lines
        raise ConfigError(
            f"config file {path} sets {err.key!r} twice (lines {first} and {again}); keep one"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or "unparsable"
        raise ConfigError(
            f"config file {path} is not valid YAML ({problem}{where}); fix its syntax"
        ) from None
    if not isinstance(values, dict):
        raise ConfigError(
            f"config file {path} must be a flat mapping of key: value; write one `key: value` per line "
            "(see recipes/world/graddiff.yaml)"
        )
    known = field_names(classes)
    scalar, nullable, mappings = _scalar_fields(classes), _nullable_fields(classes), _mapping_fields(classes)
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown config key {key!r} in {path}{suggest(key, known)}")
        if value is None and key not in nullable:
            # argparse never converts a None default: it would reach the code as None and fail there.
            kind = {"int": "an int", "float": "a number", "bool": "true or false"}.get(
                scalar.get(key), "a value"
            )
            raise ConfigError(f"config key {key!r} in {path} is empty (null); give {kind} or remove the line")
        if key in scalar and isinstance(value, (list, dict)):
            raise ConfigError(
                f"config key {key!r} in {path} must be a single {scalar[key]}, not a {type(value).__name__}; "
                "fix its value"
            )
        if key in mappings and value is not None:
            values[key] = _mapping(value, f"config key {key!r} in {path}", key)
    return values


# Mapping options that also take the path of a JSON file (transformers reads it).
PATH_OR_MAPPING = frozenset({"deepspeed", "fsdp_config", "accelerator_config"})


def _mapping(value: Any, where: str, key: str) -> Any:
    """A mapping option's value (a YAML mapping, or JSON text as on the command line; a file path where
    `PATH_OR_MAPPING` allows one), or one line saying what is wrong with it."""
    import json

    if isinstance(value, str) and key in PATH_OR_MAPPING and not value.lstrip().startswith("{"):
        return value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as err:
            raise ConfigError(
                f"{where} is not a JSON object ({err.args[0].split(':')[0]}): {value!r}; "
                'write it as {"name": value, ...}'
            ) from None
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where} must be a mapping of name: value, not a {type(value).__name__} ({value!r}); "
            'write it as {"name": value, ...}'
        )
    return value


_SCALAR_TYPES = ("int", "float", "bool", "str")


def _scalar_fields(classes) -> dict[str, str]:
    """Fields holding one int, float, bool or str (optionally None): name -> type name."""
    out = {}
    for name, text in _declared_types(classes).items():
        text = text.replace("<class '", "").replace("'>", "").replace(" | None", "")
        if text in _SCALAR_TYPES:
            out[name] = text
    return out


@functools.cache
def _declared_types(classes) -> dict[str, str]:
    """Each init field's type as its class declares it, as text. Not `Field.type`: HfArgumentParser
    rewrites that in place (a `dict | str | None` field becomes `str`) once any parser has been built."""
    out = {}
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        for klass in reversed(cls.__mro__):
            for name, hint in vars(klass).get("__annotations__", {}).items():
                if name in names:
                    out[name] = hint if isinstance(hint, str) else str(hint)
    return out


def _nullable_fields(classes) -> set[str]:
    """Fields that may hold None (typed `X | None`, `Optional[X]`, or None by default)."""
    types = _declared_types(classes)
    defaults = {f.name: f.default for cls in classes for f in dataclasses.fields(cls) if f.init}
    return {n for n, t in types.items() if "None" in t or "Optional" in t or defaults.get(n) is None}


def _mapping_fields(classes) -> set[str]:
    """Fields that hold a mapping of settings (`lr_scheduler_kwargs`, `fsdp_config`, ...)."""
    return {n for n, t in _declared_types(classes).items() if "dict" in t}


def _as_cli_text(value: Any) -> Any:
    """A YAML scalar as the command line would spell it, so argparse checks and converts its type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return value


def _wants_auto(argv: list[str], yaml_values: dict) -> bool:
    """`--auto` (bare or `--auto true`) on the command line, or `auto: true` in the recipe."""
    truthy = ("true", "1", "yes", "y", "t")
    for i, token in enumerate(argv):
        if token == "--auto":
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else "true"
            return value.lower() in truthy
        if token.startswith("--auto="):
            return token.split("=", 1)[1].lower() in truthy
    return str(yaml_values.get("auto", "")).lower() in truthy


# `--help` sections, in a recipe's order (model, data, method, training, evaluation), then Trainer's own
# options. UnlearnConfig's own fields go to the section `_FIELD_SECTIONS` names, else to the method knobs
# (those a registered method reads) or "unlearning, other options"; any TrainingArguments field in
# `_TRAINING_FIELDS` to "training", the others last; another dataclass's fields to its `_CLASS_SECTIONS`
# title (else its docstring's first line), with its docstring's first line below the title.
TRAINER_SECTION = "transformers.TrainingArguments options (standard Trainer settings)"
_METHOD_SECTION = "unlearning method and combination"
_KNOBS_SECTION = "options of particular methods (`llm-unlearn ls` lists which method reads which)"
_OTHER_SECTION = "unlearning, other options"
_GEN_SECTION = "GeN learning rate (arXiv 2407.02772)"
_STOP_SECTION = "stop rule (stop.py): stop once the forget set looks unseen"
_TRAINING_SECTION = "training (the Trainer settings most runs set)"
_CLASS_SECTIONS = {
    "ModelArgs": "model",
    "LoadArgs": "model",
    "DataArgs": "data",
    "FinetuneArgs": "fine-tuning",
    "EvalArgs": "evaluation",
}
_FIELD_SECTIONS = {
    **dict.fromkeys(
        ("method", "auto", "auto_fallback", "combine", "vanish_ratio", "vanish_stop", "retain_loss", "retain_kl_positions", "forget_weight", "retain_weight",
         "retain_batch_size", "retain_seed", "max_grad_norm", "sam_rho"),
        _METHOD_SECTION,
    ),
    **dict.fromkeys(("gen", "gen_interval", "gen_gamma"), _GEN_SECTION),
}  # fmt: skip
_TRAINING_FIELDS = (
    "output_dir", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "learning_rate", "lr_scheduler_type", "warmup_steps", "optim", "weight_decay", "seed", "bf16",
    "logging_steps", "save_strategy", "save_total_limit", "remove_unused_columns", "push_to_hub", "hub_model_id",
)  # fmt: skip
_SECTION_ORDER = ("model", "data", "fine-tuning", None, _METHOD_SECTION, _KNOBS_SECTION, _OTHER_SECTION,
                  _GEN_SECTION, _STOP_SECTION, _TRAINING_SECTION, "evaluation", TRAINER_SECTION)  # fmt: skip


def help_section(cls: type, f: dataclasses.Field) -> str:
    """The `--help` section of field `f` of dataclass `cls` (see `_FIELD_SECTIONS`)."""
    from ..methods import METHODS

    if issubclass(cls, TrainingArguments):
        inherited = TrainingArguments.__dataclass_fields__.get(f.name) is f  # not redeclared by `cls`
        if not inherited and f.name in _FIELD_SECTIONS:
            return _FIELD_SECTIONS[f.name]
        if f.name in _TRAINING_FIELDS:
            return _TRAINING_SECTION
        if inherited:
            return TRAINER_SECTION
        if f.name == "stop_rule" or f.name.startswith("stop_"):
            return _STOP_SECTION
        return _KNOBS_SECTION if any(f.name in m.knobs for m in METHODS.values()) else _OTHER_SECTION
    return _CLASS_SECTIONS.get(cls.__name__) or _first_line(cls)


def _first_line(cls: type) -> str:
    return (cls.__doc__ or cls.__name__).strip().splitlines()[0]


class _DefaultsOnceFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: ...)" suffix, except where the help already states its default in words."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or "") or getattr(action, "negation", False):
            return action.help
        return super()._get_help_string(action)


class _Parser(HfArgumentParser):
    """HfArgumentParser whose errors (a bad type, a bad choice) are one ConfigError line, not usage + exit,
    and whose `--help` shows our options first, in sections (`help_section`), and Trainer's last.

    argparse %-formats every help string when `--help` prints, so a literal percent sign in a field's
    help ("the 80% floor") would crash `--help`; every bare `%` is escaped once the fields are added.
    """

    def __init__(self, dataclass_types, **kwargs):
        kwargs.setdefault("formatter_class", _DefaultsOnceFormatter)
        kwargs.setdefault("usage", "%(prog)s [--config RECIPE.yaml] [--OPTION VALUE ...]")
        kwargs.setdefault(
            "description",
            "Options are the fields of a flat YAML recipe (--config) and flags; a flag wins over the recipe, "
            "which wins over the defaults. Booleans take true/false.",
        )
        super().__init__(dataclass_types, **kwargs)
        for action in self._actions:
            if action.option_strings and all(o.startswith(("--no_", "--no-")) for o in action.option_strings):
                action.help = (
                    f"The same as --{action.dest} false."  # HfArgumentParser copies the option's help
                )
                action.negation = True  # no "(default: False)": the option it negates states the default
            if (
                action.dest == "debug"
            ):  # Trainer's debug modes: `--debug` is taken first by the CLI (traceback)
                action.help = (
                    "(anywhere on the line) show the full traceback of an error instead of one line; Trainer's "
                    "own debug modes are set in a recipe (`debug: underflow_overflow`)"
                )
                action.nargs = 0  # shown as the bare flag it is on the command line (never parsed from it)
            if isinstance(action.help, str):
                action.help = re.sub(
                    r"%%|%\(|%", lambda m: "%%" if m.group() == "%" else m.group(), action.help
                )
        self._group_help(dataclass_types)

    def _group_help(self, dataclass_types) -> None:
        """Move each option (and its `--no_` twin, same dest) into its section's argument group; parsing
        does not see groups, only `--help` does."""
        classes = dataclass_types if isinstance(dataclass_types, (list, tuple)) else [dataclass_types]
        section = {f.name: help_section(cls, f) for cls in classes for f in dataclasses.fields(cls) if f.init}
        rank = {title: i for i, title in enumerate(_SECTION_ORDER)}
        titles = sorted(dict.fromkeys(section.values()), key=lambda t: rank.get(t, rank[None]))
        described = {help_section(cls, f): _first_line(cls) for cls in classes
                     if not issubclass(cls, TrainingArguments) for f in dataclasses.fields(cls)}  # fmt: skip
        groups = {title: self.add_argument_group(title, described.get(title)) for title in titles}
        for action in self._actions:
            if action.dest in section:
                for group in self._action_groups:
                    if action in group._group_actions:
                        group._group_actions.remove(action)
                groups[section[action.dest]]._group_actions.append(action)
        listed = {name: i for i, name in enumerate([*_FIELD_SECTIONS, *_TRAINING_FIELDS])}  # in listed order
        for group in groups.values():
            group._group_actions.sort(key=lambda action: listed.get(action.dest, len(listed)))

    def error(self, message: str):
        raise ConfigError(f"{message}; see `llm-unlearn {self.prog.split()[-1]} --help`")


def config_path(argv: list[str]) -> str | None:
    """The recipe of `--config FILE` or `--config=FILE` in `argv`, if any."""
    for i, token in enumerate(argv):
        if token.startswith("--config="):
            return token.partition("=")[2]
        if token == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a YAML file path")
            return argv[i + 1]
    return None


def given_options(argv: list[str], classes=CONFIG_CLASSES) -> set[str]:
    """The options `argv` names, on the command line (`--no_x` names `x` too) or in its `--config` recipe of
    the command's option `classes`: what a command must not replace with a default or a recorded value."""
    given = {a[2:].partition("=")[0] for a in underscored(argv) if a.startswith("--")}
    given |= {g[3:] for g in given if g.startswith("no_")}
    recipe = config_path(argv)
    if recipe is not None:
        given |= set(load_yaml(recipe, classes))
    return given


def _is_config_token(argv: list[str], i: int) -> bool:
    token = argv[i]
    return token == "--config" or token.startswith("--config=") or (i > 0 and argv[i - 1] == "--config")


def parse_config(
    argv: list[str] | None = None,
    classes=CONFIG_CLASSES,
    overrides: dict | None = None,
    command: str = "unlearn",
):
    """Parse `--config FILE` and `--key value` flags into one instance of each dataclass.

    `overrides` (e.g. a subcommand's own defaults) sit between the dataclass defaults and the YAML.
    YAML scalars are handed to argparse as text, so a recipe's values are type-checked exactly like flags.
    """
    argv = underscored(list(sys.argv[1:] if argv is None else argv))
    yaml_values: dict[str, Any] = {}
    recipe = config_path(argv)
    if recipe is not None:
        yaml_values = load_yaml(recipe, classes)
        argv = [a for i, a in enumerate(argv) if not _is_config_token(argv, i)]
    if UnlearnConfig in classes and _wants_auto(argv, yaml_values):
        overrides = {**(overrides or {}), **AUTO_SETTINGS}
    parser = _Parser(classes, prog=f"llm-unlearn {command}")
    scalar = _scalar_fields(classes)
    yaml_values = {k: _as_cli_text(v) if k in scalar else v for k, v in yaml_values.items()}
    parser.set_defaults(**{**(overrides or {}), **yaml_values})
    known, mappings = field_names(classes), _mapping_fields(classes)
    for i, token in enumerate(argv):
        if token == "-help" or (i == 0 and token == "help"):
            raise ConfigError(f"unknown argument {token!r} (did you mean '--help'?)")
        if token.startswith("--") and token != "--help":
            key, eq, text = token[2:].partition("=")
            if (
                key not in known and f"--{key}" not in parser._option_string_actions
            ):  # `--no_mia` is known too
                raise ConfigError(
                    f"unknown option --{key}{suggest(key, known | {'help'})}; see `llm-unlearn {command} --help`"
                )
            if key in mappings and (eq or i + 1 < len(argv)):
                _mapping(text if eq else argv[i + 1], f"--{key}", key)
    try:
        parsed = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        line = str(err).splitlines()[0]
        # A recipe's value is the parser's default, so argparse names the option only: say which file holds it.
        bad = re.search(r"argument --(\w+)", line)
        if bad and bad[1] in yaml_values and f"--{bad[1]}" not in {a.partition("=")[0] for a in argv}:
            line = f"config key {bad[1]!r} in {recipe}: {line}"
        if (
            "doesn't support bf16/gpu" in line
        ):  # Trainer's words name no option of ours (a GPU recipe on a CPU)
            where = f" ({recipe} sets it)" if "bf16" in yaml_values else ""
            line = (
                f"--bf16 true needs a GPU with bfloat16 and none is visible{where}; pass --bf16 false to train in "
                "float32, or --use_cpu true to train in bfloat16 on the CPU"
            )
        raise ConfigError(line) from None
    for config in (c for c in parsed if isinstance(c, UnlearnConfig)):
        own = config.end_fallback_for_own_regime()
        if own:
            import logging

            logging.getLogger("llm_unlearn").info(
                "--auto with your own %s: the fallback to its second regime is off (docs/auto.md)",
                ", ".join(f"--{k}" for k in own),
            )
    return parsed
