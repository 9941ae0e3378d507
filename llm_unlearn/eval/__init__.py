"""Evaluation: TOFU metrics (`tofu.evaluate`), forget quality against a reference, and reports.

`EVALUATORS` maps a benchmark name to its evaluate function, as the method registry does for methods.

May import: `runs`, `data`, `models`.
"""

from __future__ import annotations

from .legacy import legacy_forget_quality, legacy_result, load_legacy_log
from .report import write_report
from .tofu import add_forget_quality, evaluate, load_eval, write_eval

EVALUATORS = {"tofu": evaluate}

__all__ = [
    "EVALUATORS",
    "add_forget_quality",
    "evaluate",
    "legacy_forget_quality",
    "legacy_result",
    "load_eval",
    "load_legacy_log",
    "write_eval",
    "write_report",
]
