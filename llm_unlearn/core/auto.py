"""`--auto`'s two regimes: fast SGD steps first, the gentle AdamW regime where they cost model utility.

No single optimizer setting worked on both kinds of model we measured (docs/results.md, 2026-12-07):

- the from-scratch world models forget only with large steps: NPO's forget loss on the answer tokens no
  retain answer has, NGDiff's normalized combination, SGD from lr 0.1 with GeN, the stop rule, then the
  retain-only repair (`--stop_repair`). It met forget quality >= 0.05 and the retain-recall goal in 34
  of 36 runs over four worlds; the `npo` recipe's AdamW at lr 1e-4 forgot nothing there (0 of 18).
- the pretrained SmolLM2 lost half of its model utility under those steps (its real-author and
  world-fact answers, which no retain guard samples), and met every goal with the `npo` recipe's
  AdamW at lr 1e-4, decaying linearly over 5 epochs, under the same rule and repair (3 of 3 seeds).

So `--auto` (`AUTO_SETTINGS`) starts with the first regime and estimates model utility as it goes
(`--stop_utility_tolerance 0.2`; at the checks 0, 1, 2, 4, ... and on the kept weights, stop.py). If that
estimate falls by more than the tolerance (`utility_alarm`), those steps are damaging knowledge the
forget request never named: the run starts again from the original weights with the second regime
(`FALLBACK_SETTINGS`). On SmolLM2 forget01 the alarm came at the
first or second check after training started (steps 5, 10, 5 in seeds 0 to 2), and the second regime then
met every goal; on the four worlds of benchmarks/auto*.md it never came (36 runs).

The first attempt's records are kept in `<output_dir>/auto_first_attempt/` and `auto_fallback.json`
says why the run fell back; its check before training stands for the second attempt's (the same weights
and data: `IndistinguishableStop.replay`); a resumed run reads that file and resumes the second attempt.
The fallback applies only while the regime is `--auto`'s own: set any of `REGIME_KEYS` yourself, or pass
`--auto_fallback false`, and the run keeps your settings.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from ..runs.folder import append_jsonl
from .repair import ANCHOR_FILE
from .stop_state import BEST_FILE, HISTORY_FILE

# What `--auto` sets, below anything given in a recipe or on the command line (cli/parse.py).
AUTO_SETTINGS = {
    "method": "npo", "combine": "normalized", "forget_token_max_df": 0.0,
    "gen": True, "optim": "sgd", "learning_rate": 0.1, "lr_scheduler_type": "constant", "weight_decay": 0.0,
    "num_train_epochs": 20, "stop_rule": "indistinguishable",
    # Every forget question is trained on (issue 22: a deletion request means the whole set), and the
    # retain set itself is guarded, not only its loss (docs/auto.md, "The retain-recall guard"); the
    # guard's baseline is then met again by the retain-only repair after unlearning past it.
    "stop_heldout_fraction": 0.0, "stop_retain_recall_tolerance": 0.15, "stop_repair": True,
    # The estimate whose alarm switches to FALLBACK_SETTINGS.
    "stop_utility_tolerance": 0.2,
}  # fmt: skip
# The second regime: the `npo` recipe's loss, optimizer and schedule under the same rule and repair.
FALLBACK_SETTINGS = {
    "method": "npo", "combine": None, "forget_token_max_df": None,
    "gen": False, "optim": "adamw_torch", "learning_rate": 1e-4, "lr_scheduler_type": "linear",
    "weight_decay": 0.01, "num_train_epochs": 5, "stop_utility_tolerance": 0.0,
}  # fmt: skip
# The settings that make a regime: a run that changed any of them from AUTO_SETTINGS chose its own.
REGIME_KEYS = tuple(k for k in FALLBACK_SETTINGS if k != "stop_utility_tolerance")

MARK_FILE = "auto_fallback.json"
FIRST_ATTEMPT_DIR = "auto_first_attempt"
# What the first attempt leaves in the run directory (stop.py, trainer.py, repair.py).
_MOVED = ("train_log.jsonl", HISTORY_FILE)
_DROPPED = (BEST_FILE, ANCHOR_FILE)


def own_regime(config) -> list[str]:
    """The regime settings `config` sets to another value than `--auto`'s (any: the fallback is off)."""
    return [k for k in REGIME_KEYS if k in AUTO_SETTINGS and getattr(config, k) != AUTO_SETTINGS[k]]


def fallback_applies(config) -> bool:
    """`--auto` with its own regime, the fallback on, and the utility estimate that triggers it."""
    wanted = getattr(config, "auto", False) and getattr(config, "auto_fallback", False)
    if not (wanted and getattr(config, "stop_utility_tolerance", 0) > 0):
        return False
    return not own_regime(config)


def fallback_config(config):
    """The same run in the second regime (the fallback itself off: there is no third).

    Gradient clipping goes back to its default for the second regime's combination (1.0) unless it was
    set to something other than NGDiff's own default (none).
    """
    clip = None if config.max_grad_norm == 0.0 else config.max_grad_norm
    return dataclasses.replace(config, **FALLBACK_SETTINGS, max_grad_norm=clip, auto_fallback=False)


def archive_first_attempt(output_dir: str | Path, stop_callback) -> None:
    """Move the first attempt's records aside, drop its state, and write `auto_fallback.json` last.

    The mark is written last, so a kill in between leaves a run that resumes the first attempt's
    decision (its stop_rule.json says utility_alarm) and falls back again.
    """
    from ..runs.folder import write_json_atomic

    out = Path(output_dir)
    aside = out / FIRST_ATTEMPT_DIR
    aside.mkdir(exist_ok=True)
    for name in _MOVED:
        if (out / name).is_file():
            (out / name).replace(aside / name)
    for name in _DROPPED:
        (out / name).unlink(missing_ok=True)
    for checkpoint in out.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    alarm = stop_callback.history[-1] if stop_callback.history else {}
    mark = {
        "reason": "utility_alarm",
        "at_step": alarm.get("step"),
        "utility_drop": alarm.get("stop_utility_drop"),
        "tolerance": stop_callback.utility_tolerance,
        "second_regime": dict(FALLBACK_SETTINGS),
        "first_attempt_records": FIRST_ATTEMPT_DIR,
    }
    log_fallback(out, mark)
    write_json_atomic(out / MARK_FILE, mark)


def log_fallback(output_dir: str | Path, mark: dict) -> None:
    """The second attempt's `train_log.jsonl` starts with one record saying why (the report reads it)."""
    log = Path(output_dir) / "train_log.jsonl"
    if not log.is_file():
        append_jsonl(log, {"step": 0, "auto_fallback": mark})


def describe(output_dir: str | Path) -> dict | None:
    """`auto_fallback.json` of a run directory, or None if the run did not fall back (a resumed run that
    did goes on in the second regime)."""
    path = Path(output_dir) / MARK_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def first_attempt_checks(output_dir: str | Path) -> list[dict]:
    """The stop rule's check records of a run's first attempt (none if it did not fall back)."""
    log = Path(output_dir) / FIRST_ATTEMPT_DIR / "train_log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return [r for r in records if "stop_decision" in r]
