"""A run resumes with the settings it started with, or not at all.

`llm-unlearn unlearn` resumes an unfinished run directory from its last complete checkpoint when the
same command runs again. A command with other training settings would load that checkpoint (weights,
optimizer and scheduler state, the stop rule's history) into a run configured otherwise, and its
`unlearn_config.yaml` would then describe settings the first steps never had. So before anything is
loaded or written, the settings the run saved are compared with the new ones, and a difference is
refused with one line that names it. What may differ: how the run logs, reports, saves checkpoints,
loads data and evaluates at the end, and whether it runs on the CPU (`FREE`, `FREE_PREFIXES`, except
`BOUND`), none of which changes the steps trained.

This module imports only runs/folder.py from llm_unlearn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .folder import CONFIG_FILE, RunError, checkpoints, read_run_config, read_status

FREE_PREFIXES = ("logging_", "log_", "hub_", "save_", "dataloader_", "trackio_", "eval_", "ddp_")
FREE = frozenset({
    "output_dir", "disable_tqdm", "report_to", "run_name", "project", "push_to_hub", "local_rank",
    "resume_from_checkpoint", "do_final_eval", "reference_model", "reference_eval", "eval_cache", "mia",
    "truth_ratio_variant", "per_device_eval_batch_size", "prediction_loss_only", "include_for_metrics",
    "batch_eval_metrics", "include_num_input_tokens_seen", "skip_memory_metrics", "debug", "do_train", "do_eval",
    "do_predict", "torch_empty_cache_steps", "enable_jit_checkpoint", "bf16_full_eval", "fp16_full_eval",
    "use_cpu",  # resuming on another machine is fine; its precision settings are still compared
})  # fmt: skip


# Named like free settings but part of the steps: the stop rule scores its checks in batches of
# `eval_batch_size`, and another batching can move a greedy answer of its recall and utility samples;
# `dataloader_drop_last` changes which examples the remaining epochs train on; with `save_only_model`
# the next checkpoints hold no optimizer or scheduler state, so a later resume would restart them.
BOUND = frozenset({"eval_batch_size", "dataloader_drop_last", "save_only_model"})


def free(key: str) -> bool:
    return key not in BOUND and (key in FREE or key.startswith(FREE_PREFIXES))


def differences(
    saved: dict[str, Any], new: dict[str, Any], prefix: str = "", trained: bool = False
) -> list[str]:
    """`key: saved there, new now` for every training setting both name and set differently (a nested
    section, such as `distill`'s `undo`, key by key). `trained`: the training is over (its final evaluation is
    what is left), so the settings that are part of the steps only while training (BOUND) are free too."""
    new = yaml.safe_load(yaml.safe_dump(new, sort_keys=False))  # compared as the YAML would hold it
    found = []
    for key in saved:
        if (
            key not in new
            or free(key)
            or (trained and key in BOUND)
            or saved[key] == new[key]
            or _same_local_path(key, saved[key], new[key])
            or _as_repr_then(saved[key], new[key])
            or _resolved_then(key, saved[key], new[key])
        ):
            continue
        if isinstance(saved[key], dict) and isinstance(new[key], dict):
            found += differences(saved[key], new[key], f"{prefix}{key}.", trained)
        else:
            found.append(f"{prefix}{key}: {saved[key]!r} there, {new[key]!r} now")
    return found


def _as_repr_then(saved: Any, new: Any) -> bool:
    """Runs saved before 2026-12-08 wrote a nested dataclass (Trainer's `accelerator_config`) as its Python
    repr, now a mapping: the same settings if the mapping, written as that repr, is the saved text."""
    if not (isinstance(saved, str) and isinstance(new, dict)) or "(" not in saved:
        return False
    name = saved.split("(", 1)[0]
    return saved == f"{name}({', '.join(f'{k}={v!r}' for k, v in new.items())})"


def _resolved_then(key: str, saved: Any, new: Any) -> bool:
    """`--forget_token_nll_cap holdout` is saved as the nats it resolved to (pipeline/forget_tokens.py): the
    same command resolves it again, to the same number (it is measured on the model as loaded)."""
    if key != "forget_token_nll_cap" or new != "holdout":
        return False
    try:
        float(saved)
    except (TypeError, ValueError):
        return False
    return True


# Saved absolute since 2026-12-07 (earlier runs saved them as typed): one folder, however spelled.
PATH_KEYS = frozenset({"model_name_or_path", "data_dir"})


def _same_local_path(key: str, saved: Any, new: Any) -> bool:
    if key not in PATH_KEYS or not (isinstance(saved, str) and isinstance(new, str)):
        return False
    a, b = Path(saved), Path(new)
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def check_resume_settings(
    output_dir: str | Path, new: dict[str, Any], *also: dict[str, Any], progress: bool = False
) -> None:
    """Refuse to go on with an unfinished run whose saved settings differ from `new` (and from each of
    `also`, settings that resume it as well: `--auto`'s first regime, whose run may have saved them before
    it fell back). A run that saved none (killed before its first write) has nothing to disagree with, and
    neither has one that stopped before its first step was logged (an optimizer that does not import, a
    NaN at the first step, a bad parameter name): no step, checkpoint or model to keep, and the command that
    started it fails the same way again, so the folder starts afresh with the new settings. `progress`: the
    caller knows of something else a rerun goes on from (`--auto`'s fallback mark)."""
    path = Path(output_dir) / CONFIG_FILE
    saved = read_run_config(output_dir)
    if not saved:
        return
    out = Path(output_dir)
    trained = (read_status(out) or {}).get("state") == "complete"
    if not (progress or trained or checkpoints(out)[0] or (out / "train_log.jsonl").is_file()):
        return
    found = [differences(saved, settings, trained=trained) for settings in (new, *also)]
    if not all(found):
        return
    diff = found[0]
    more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
    raise RunError(
        f"output dir {output_dir} holds an unfinished run with other settings ({'; '.join(diff[:3])}{more}): "
        f"rerun the command that started it (its settings are in {path}) to resume it, or choose a new --output_dir"
    )
