"""Residual-knowledge probes: after unlearning, how cheaply does the forgotten knowledge come back?

    measure.py       forget metrics on a set of rows, and recovery relative to the retain-only model
    attacks.py       step-budget probes on A, scored on E: LoRA relearning and Piggyback masking
    quantization.py  the forget metrics and MIA after round-to-nearest quantization (eval/quant.py)
    run.py           all of them on a run, against the original and retain-only models: probe.json
    cli.py           `llm-unlearn probe RUN_DIR`

The attack / held-out split is `data/heldout.py` (the stop rule uses it too).
The question and the probes follow `shared/docs/ngdiff-gen.md` section 4 and issue 12.

May import: `runs`, `data`, `models`, `eval`, `core`.
"""

from ..data.heldout import attack_heldout_split
from .attacks import ProbeSettings, probe_curve
from .measure import EvalSettings, forget_metrics, recovery
from .run import run_probes

__all__ = [
    "EvalSettings",
    "ProbeSettings",
    "attack_heldout_split",
    "forget_metrics",
    "probe_curve",
    "recovery",
    "run_probes",
]
