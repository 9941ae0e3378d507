"""What an evaluation of a run directory may not change: its own eval.json is the run's numbers.

`report` and `push` read `<run>/eval.json` as what the run achieved. An evaluation written there with other
data or settings than the run's (another split, another generation length) would replace those numbers
with ones of something else, so `evaluate_path` and `evaluate_with_reference` refuse it, from the command
line (`llm-unlearn eval`, which fills in the run's recorded settings first: cli/run_eval.py) and from Python
alike. See docs/evaluation.md.
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


def check_replaces_own_eval(model_path: str, out_path, parsed: tuple) -> None:
    """Refuse writing `out_path` when it is the run directory `model_path`'s existing eval.json and `parsed`
    (the ModelArgs, DataArgs and EvalArgs of this evaluation) measure something else than the run's."""
    from ..runs.folder import read_run_config

    if out_path is None or not Path(model_path).is_dir():
        return
    own = Path(model_path) / "eval.json"
    config = (
        read_run_config(model_path) if own.is_file() and Path(out_path).resolve() == own.resolve() else {}
    )
    if config:
        refuse_other_settings(model_path, parsed, config)


def refuse_other_settings(model: str, parsed: tuple, config: dict) -> None:
    """The run's own eval.json is what report and push read as its numbers: it is not replaced by an evaluation
    on other data or settings. The reference may differ (another retain-only model, or its eval.json in place
    of the model): it changes forget quality's yardstick, which eval.json records, not what was measured.
    `config`: the run's unlearn_config.yaml, as read."""
    from ..data.qa import forget_pct, paired_split
    from ..eval.tofu import recorded_path
    from ..runs.folder import RunError

    values = {k: getattr(obj, k) for obj in parsed for k in RUN_EVAL_SETTINGS if hasattr(obj, k)}
    if values.get("retain_split") is None and forget_pct(values.get("forget_split") or "") is not None:
        # None is the forget split's pair, as the run resolved and recorded it (DataArgs' default, in Python)
        values["retain_split"] = paired_split(values["forget_split"], "retain")

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
            "--output_dir DIR for this evaluation (in Python: another out_path), or leave those options out to use "
            "the run's"
        )


def _same_training_splits(config: dict, values: dict) -> bool:
    """Whether the data named now holds the forget and retain splits the run trained on (the hashes its
    unlearn_config.yaml records): the same data moved or copied elsewhere, not other data."""
    from ..data.qa import DataError, load_split
    from .unlearn import data_digest

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
