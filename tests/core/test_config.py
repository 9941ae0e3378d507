"""Config dataclasses, YAML recipes and CLI precedence; the method registry. `pytest tests/test_config.py`"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest
import yaml

from llm_unlearn.cli.parse import CONFIG_CLASSES, load_yaml, parse_config
from llm_unlearn.core.config import UnlearnConfig
from llm_unlearn.methods import METHODS, get_method, register
from llm_unlearn.runs.options import ConfigError

ROOT = Path(__file__).resolve().parents[2] / "recipes"
RECIPES = sorted(p for p in ROOT.glob("*/*.yaml") if p.parent.name != "accelerate")
ACCELERATE_CONFIGS = sorted((ROOT / "accelerate").glob("*.yaml"))


def test_field_names_are_unique_across_config_dataclasses():
    counts = Counter(f.name for cls in CONFIG_CLASSES for f in dataclasses.fields(cls))
    assert [name for name, n in counts.items() if n > 1] == []


def test_precedence_is_default_then_yaml_then_cli(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"learning_rate": 3e-4, "method": "ga", "output_dir": "x"}))
    _, _, config, _ = parse_config(["--config", str(recipe), "--method", "graddiff"])
    assert config.learning_rate == 3e-4  # YAML over default
    assert config.method == "graddiff"  # CLI over YAML
    assert config.num_train_epochs == 5.0  # default
    assert config.remove_unused_columns is False


def test_unknown_yaml_key_is_an_error_with_a_suggestion(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rat: 1.0\n")
    with pytest.raises(ConfigError, match="unknown config key 'learning_rat'.*did you mean 'learning_rate'"):
        load_yaml(recipe)


def test_a_recipe_parses_the_same_the_second_time_in_one_process(tmp_path):
    """HfArgumentParser rewrites the dataclass fields' types when it is built (a `dict | str | None` becomes
    `str`); the recipe checks read the declared types, so a mapping or a list in a recipe stays valid."""
    from llm_unlearn.cli.parse import _Parser

    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr_scheduler_type: cosine_with_min_lr\nlr_scheduler_kwargs: {min_lr_rate: 0.1}\n"
                      "report_to: [none]\noutput_dir: x\n")  # fmt: skip
    _Parser(CONFIG_CLASSES, prog="first")
    for _ in range(2):
        _, _, config, _ = parse_config(["--config", str(recipe)])
        assert config.lr_scheduler_kwargs == {"min_lr_rate": 0.1} and config.report_to == []


def test_unknown_cli_option_is_an_error_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown option --forget_spilt.*did you mean 'forget_split'"):
        parse_config(["--forget_spilt", "forget05"])


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_starts_with_its_launch_command_and_has_only_known_keys(recipe):
    first = recipe.read_text().splitlines()[0]
    assert first.startswith("# ") and ("llm-unlearn" in first or "accelerate launch" in first)
    assert f"{recipe.parent.name}/{recipe.name}" in first
    if "llm-unlearn train" in first:
        from transformers import TrainingArguments

        from llm_unlearn.data.args import DataArgs
        from llm_unlearn.models.args import ModelArgs
        from llm_unlearn.models.build import FinetuneArgs

        load_yaml(recipe, classes=(ModelArgs, DataArgs, FinetuneArgs, TrainingArguments))
    else:
        load_yaml(recipe)


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_configs_load_and_name_their_launch_command(path):
    from accelerate.commands.config.config_args import ClusterConfig

    first = path.read_text().splitlines()[0]
    assert first.startswith("# accelerate launch --config_file recipes/accelerate/" + path.name)
    config = ClusterConfig.from_yaml_file(str(path))
    if config.distributed_type == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2  # NGDiff refuses FSDP1


def test_unknown_method_suggests_the_closest_name():
    with pytest.raises(ValueError, match="did you mean 'graddiff'"):
        get_method("gradiff")


def test_dotted_path_loads_a_method_from_outside_the_package():
    assert get_method("llm_unlearn.methods.ga.ga").fn is METHODS["ga"].fn


def test_a_dotted_path_to_a_registered_method_keeps_what_it_declared():
    # npo declares its reference, which a bare entry lost (its first step then called None).
    assert get_method("llm_unlearn.methods.npo.npo") is METHODS["npo"]
    # One function under two names (ngdiff is graddiff's terms, combined otherwise): the first registered.
    assert get_method("llm_unlearn.methods.graddiff.graddiff") is METHODS["graddiff"]


def test_a_method_file_run_as_a_script_and_then_imported_by_its_dotted_path_registers_once(
    tmp_path, monkeypatch
):
    """`python mytrain.py` registers its method from `__main__`; `--method mytrain.my_ga` then imports the
    same file as `mytrain`, whose `register` ran again and was refused as a duplicate."""
    import runpy
    import sys

    (tmp_path / "mytrain_abc.py").write_text(
        "from llm_unlearn.methods import register\n"
        "from llm_unlearn.methods.ga import ga\n\n\n"
        "@register('my_ga_abc', paper='arXiv:0000.00000', summary='ga again', combine='normalized', deviations='none')\n"
        "def my_ga(model, forget, retain, ctx):\n"
        "    return ga(model, forget, retain, ctx)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        runpy.run_path(str(tmp_path / "mytrain_abc.py"), run_name="__main__")
        method = get_method("mytrain_abc.my_ga")
        assert method is METHODS["my_ga_abc"] and method.combine == "normalized"
    finally:
        METHODS.pop("my_ga_abc", None)
        sys.modules.pop("mytrain_abc", None)


def test_registry_rejects_duplicates_and_uppercase_names():
    with pytest.raises(ValueError, match="already registered"):
        register("ga", paper="", summary="")(lambda *a: {})
    with pytest.raises(ValueError, match="lowercase"):
        register("GA2", paper="", summary="")(lambda *a: {})


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_has_a_paper_summary_and_docstring(name):
    method = METHODS[name]
    assert method.paper.startswith("arXiv:") and method.summary
    assert "arXiv" in (method.fn.__module__ and __import__(method.fn.__module__, fromlist=["x"]).__doc__)


@pytest.mark.parametrize("method", ["graddiff", "ngdiff"])
def test_world_recipes_use_the_demo_settings(method):
    from llm_unlearn.pipeline.demo import DEMO_UNLEARN

    recipe = load_yaml(ROOT / "world" / f"{method}.yaml")
    for key, value in DEMO_UNLEARN["default"][method].items():
        assert recipe[key] == value, key


def test_world_ngdiff_recipe_is_the_studys_best_measured_setting():
    """Of the settings whose every forget10 seed reaches forget quality >= 0.1 in the recorded study
    (benchmarks/ngdiff_vs_graddiff.json), the recipe's has the highest mean model utility."""
    import json
    import statistics

    study = json.loads((ROOT.parent / "benchmarks" / "ngdiff_vs_graddiff.json").read_text())
    recipe = load_yaml(ROOT / "world" / "ngdiff.yaml")
    groups: dict[tuple, list[dict]] = {}
    for r in study["runs"]:
        if r["split"] == "forget10" and r["epochs"] == recipe["num_train_epochs"]:
            key = (r["method"], r["optimizer"], r["learning_rate"], r["gen"], r.get("gen_gamma", 0.9),
                   r.get("gen_probe"), r.get("models"))  # fmt: skip
            groups.setdefault(key, []).append(r)
    passing = {k: statistics.fmean(r["model_utility"] for r in rs) for k, rs in groups.items()
               if len(rs) == 3 and all(r["forget_quality"] >= 0.1 for r in rs)}  # fmt: skip
    best = max(passing, key=passing.get)
    assert best == (
        recipe["method"],
        recipe["optim"],
        recipe["learning_rate"],
        recipe["gen"],
        0.9,
        None,
        None,
    )


def test_help_sections_leave_parsing_unchanged():
    """`--help` regroups the options; every option keeps its flags, dest, default, type and choices."""
    from transformers import HfArgumentParser

    from llm_unlearn.cli.parse import TRAINER_SECTION, _Parser

    def actions(parser):
        # a choice field's type is a fresh closure per parser: compare its name. `--debug` is the CLI's own
        # flag, taken off the line before parsing (cli/commands.main): its help shows it bare (nargs 0).
        types = [a.type.__qualname__ if a.type else None for a in parser._actions]
        return [
            (type(a).__name__, a.option_strings, a.dest, a.default, a.choices, a.dest != "debug" and a.nargs,
             a.required, a.const)
            for a in parser._actions
        ] + types  # fmt: skip

    plain, ours = HfArgumentParser(CONFIG_CLASSES), _Parser(CONFIG_CLASSES)
    assert actions(ours) == actions(plain)
    grouped = [a for g in ours._action_groups for a in g._group_actions]
    assert sorted(map(id, grouped)) == sorted(map(id, ours._actions))  # each option in exactly one section
    assert ours._action_groups[-1].title == TRAINER_SECTION
    assert "adam_beta1" in {a.dest for a in ours._action_groups[-1]._group_actions}
    assert "method" not in {a.dest for a in ours._action_groups[-1]._group_actions}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: UnlearnConfig(output_dir="/tmp/never", learning_rate="1e-4"),
         r"learning_rate must be a float, got '1e-4' \(str\) \(YAML 1\.1 reads 1e-4 as text"),
        (lambda: UnlearnConfig(output_dir="/tmp/never", gen="false"), r"gen must be a bool, got 'false' \(str\)"),
        (lambda: UnlearnConfig(output_dir="/tmp/never", seed=1.5), r"seed must be an int, got 1\.5"),
    ],
)  # fmt: skip
def test_values_of_another_type_are_refused_from_python(make, message):
    """`gen="false"` is true in an `if`: it trained with GeN. The command line converts its text itself."""
    with pytest.raises(ConfigError, match=message):
        make()


def test_option_classes_refuse_text_for_numbers():
    from llm_unlearn.data.args import DataArgs
    from llm_unlearn.eval.args import EvalArgs

    with pytest.raises(ConfigError, match=r"max_length must be an int, got '128'"):
        DataArgs(max_length="128")
    with pytest.raises(ConfigError, match=r"eval_batch_size must be an int, got '4'"):
        EvalArgs(eval_batch_size="4")
    assert UnlearnConfig(output_dir="/tmp/never", learning_rate=1, num_train_epochs=2).learning_rate == 1


def test_options_the_python_api_accepted_and_then_ignored_or_failed_on_are_refused(tmp_path):
    from llm_unlearn.data.args import DataArgs
    from llm_unlearn.eval.args import EvalArgs
    from llm_unlearn.models.args import ModelArgs
    from llm_unlearn.pipeline.unlearn import unlearn
    from llm_unlearn.runs.folder import RunError

    for alpha in (2.0, -1.0):
        with pytest.raises(ConfigError, match=r"--undo_alpha .* is out of range; it must be in \[0, 1\]"):
            UnlearnConfig(output_dir=str(tmp_path), undo_alpha=alpha)
    for modules in ("", "q_proj,,v_proj"):
        with pytest.raises(ConfigError, match="names an empty module"):
            ModelArgs(lora_target_modules=modules)
    # unlearn() does not distill: recording undo_alpha would say the run was distilled.
    with pytest.raises(RunError, match=r"unlearn\(\) does not distill: .*--undo_alpha A"):
        unlearn(ModelArgs(model_name_or_path="m"), DataArgs(data_dir=str(tmp_path)),
                UnlearnConfig(output_dir=str(tmp_path / "run"), undo_alpha=0.3), EvalArgs())  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_numpy_numbers_and_paths_are_kept_as_the_plain_values_they_stand_for():
    """A numpy integer reached torch's DataLoader (refused) and the YAML record (as text); a Path was refused."""
    from pathlib import Path

    import numpy as np

    from llm_unlearn.data.args import DataArgs
    from llm_unlearn.models.args import ModelArgs

    config = UnlearnConfig(output_dir="/tmp/never", per_device_train_batch_size=np.int64(2), seed=np.int32(3),
                           learning_rate=np.float32(0.5))  # fmt: skip
    assert [type(v) for v in (config.per_device_train_batch_size, config.seed, config.learning_rate)] == [
        int,
        int,
        float,
    ]
    assert config.retain_batch_size == 2 and DataArgs(max_length=np.int64(64)).max_length.__class__ is int
    assert ModelArgs(model_name_or_path=Path("/tmp/m")).model_name_or_path == "/tmp/m"
    assert DataArgs(data_dir=Path("/tmp/w")).data_dir == "/tmp/w"
