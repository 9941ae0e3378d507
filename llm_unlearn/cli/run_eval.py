"""What `llm-unlearn eval` of a run directory takes from the run, and what it may not change.

A run's `eval.json` is its numbers for `report` and `push`. So evaluating a run directory uses the settings
its `unlearn_config.yaml` records (data, split, formatting, generation length, reference) wherever the command
line does not name them, and an evaluation with other data or settings does not replace that eval.json
(`--output_dir` writes it elsewhere; pipeline/run_eval.py refuses it, for the Python API too). See
docs/evaluation.md.
"""

from __future__ import annotations

from pathlib import Path

from ..pipeline.run_eval import PATH_SETTINGS, RUN_EVAL_SETTINGS


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
