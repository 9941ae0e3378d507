"""Residual-knowledge probes: after unlearning, how cheaply does the forgotten knowledge come back?

    split.py         the forget set cut into an attack part A and a held-out part E (seeded)
    measure.py       forget metrics on a set of rows, and recovery relative to the retain-only model
    attacks.py       step-budget probes on A, scored on E: LoRA relearning and Piggyback masking
    quantization.py  the forget metrics and MIA after round-to-nearest quantization (eval/quant.py)
    run.py           all of them on a run, against the original and retain-only models: probe.json
    cli.py           `llm-unlearn probe RUN_DIR`

The question and the probes follow `shared/docs/ngdiff-gen.md` section 4 and issue 12.
"""

from .attacks import ProbeSettings, probe_curve
from .measure import EvalSettings, forget_metrics, recovery
from .run import run_probes
from .split import attack_heldout_split

__all__ = [
    "EvalSettings",
    "ProbeSettings",
    "attack_heldout_split",
    "forget_metrics",
    "probe_curve",
    "recovery",
    "run_probes",
]
