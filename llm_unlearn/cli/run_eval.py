"""What `llm-unlearn eval` of a run directory takes from the run, and what it may not change.

A run's `eval.json` is its numbers for `report` and `push`. So evaluating a run directory uses the settings
its `unlearn_config.yaml` records (data, split, formatting, generation length, reference) wherever the command
line does not name them, and an evaluation with other data or settings does not replace that eval.json
(`--output_dir` writes it elsewhere). See docs/evaluation.md.
"""

from __future__ import annotations

from pathlib import Path

# What `eval` of a run directory takes from its unlearn_config.yaml when not given: the data, how questions
# are formatted and answered, the reference. Never trust_remote_code or allow_pickle: those are asked for on
# the command line, not read from a file. The measured ones must match the run's to replace its eval.json.
RUN_EVAL_SETTINGS = ("data_dir", "dataset_name", "forget_split", "retain_split", "prompt_format", "system_prompt",
                     "max_length", "max_new_tokens", "truth_ratio_variant", "reference_model", "reference_eval",
                     "mia", "torch_dtype", "eval_batch_size")  # fmt: skip
PATH_SETTINGS = ("data_dir", "reference_model", "reference_eval")


def recorded_settings(model: str, argv: list[str], classes) -> dict:
    """The evaluation settings `model` (a run directory) recorded, less those the command line or its recipe
    names (of eval's option `classes`); {} for a model folder or Hub id. A data source or reference given
    replaces both of the run's."""
    from ..runs.folder import read_run_config, read_status
    from .parse import given_options

    if not Path(model).is_dir() or read_status(model) is None:
        return {}
    config = read_run_config(model)
    given = given_options(argv, classes)
    settings = {k: config[k] for k in RUN_EVAL_SETTINGS if k in config and k not in given}
    for pair in (("data_dir", "dataset_name"), ("reference_model", "reference_eval")):
        if given & set(pair):
            settings = {k: v for k, v in settings.items() if k not in pair}
    for key in PATH_SETTINGS:  # a folder moved since the run: named as the run's, not as if typed
        if settings.get(key) and Path(settings[key]).is_absolute() and not Path(settings[key]).exists():
            raise FileNotFoundError(
                f"the {key} that {model}'s unlearn_config.yaml records, {settings[key]}, does not exist; pass "
                f"--{key} with where it is now"
            )
    return settings


def refuse_other_settings(model: str, parsed: tuple) -> None:
    """The run's own eval.json is what report and push read as its numbers: it is not replaced by an evaluation
    on other data or settings. The reference may differ (another retain-only model, or its eval.json in place
    of the model): it changes forget quality's yardstick, which eval.json records, not what was measured."""
    from ..eval.tofu import recorded_path
    from ..runs.folder import RunError, read_run_config

    config = read_run_config(model)
    values = {k: getattr(obj, k) for obj in parsed for k in RUN_EVAL_SETTINGS if hasattr(obj, k)}

    def source(where: dict, local: str, hub: str):  # a local path wins over a Hub id, as when loading
        return recorded_path(where[local]) if where.get(local) else where.get(hub)

    changed = [f"--{k} {values[k]} (the run's: {config[k]})" for k in RUN_EVAL_SETTINGS
               if k in config and k not in (*PATH_SETTINGS, "dataset_name", "eval_batch_size")
               and config[k] != values[k]]  # fmt: skip
    ran, now = source(config, "data_dir", "dataset_name"), source(values, "data_dir", "dataset_name")
    if ran is not None and ran != now and not _same_training_splits(config, values):
        changed.append(f"the data {now} (the run's: {ran})")
    reference = config.get("reference_model") or config.get("reference_eval")
    if reference and not (values.get("reference_model") or values.get("reference_eval")):
        changed.append(f"no reference, so no forget quality (the run's: {reference})")
    if changed:
        raise RunError(
            f"{model}'s eval.json holds its own evaluation, which {', '.join(changed)} would replace; pass "
            "--output_dir DIR for this evaluation, or leave those options out to use the run's"
        )


def _same_training_splits(config: dict, values: dict) -> bool:
    """Whether the data named now holds the forget and retain splits the run trained on (the hashes its
    unlearn_config.yaml records): the same data moved or copied elsewhere, not other data."""
    from ..data.qa import DataError, load_split
    from ..pipeline.unlearn import data_digest

    recorded = config.get("data_sha256") or {}
    splits = [config.get("forget_split"), config.get("retain_split")]
    if not all(split in recorded for split in splits):
        return False
    try:
        rows = {
            s: load_split(s, data_dir=values["data_dir"], dataset_name=values["dataset_name"]) for s in splits
        }
    except (DataError, OSError, ValueError):
        return False
    digest = data_digest(rows)
    return all(digest[s] == recorded[s] for s in splits)
