"""Our metrics as HF `evaluate` modules, shipped as package data: `evaluate.load(TOFU_METRIC)`.

`tofu/tofu.py` computes TOFU forget quality and model utility from per-sample values (see its
docstring); `inputs_from_eval` turns an eval.json of `llm-unlearn eval` (and its reference's) into
those inputs. `evaluate` is an optional dependency (`pip install llm-unlearn[dev]` or `evaluate`).
"""

from __future__ import annotations

from pathlib import Path

TOFU_METRIC = str(Path(__file__).resolve().parent / "tofu")
ROLES = ("forget", "retain", "ra", "wf")


def inputs_from_eval(result: dict, reference: dict | None = None) -> dict[str, list]:
    """The TOFU metric's inputs, one example per question, from an eval.json dict.

    `reference`: the retain-only model's eval.json on the same forget split (for forget quality).
    """
    ref = None
    if reference is not None:
        ref = reference["metrics"]["forget_truth_ratio"]["per_sample_ratio"]
        if len(ref) != len(result["losses"]["forget"]["answer"]):
            raise ValueError(
                f"reference has {len(ref)} forget samples but the model {len(result['losses']['forget']['answer'])}; "
                "forget quality needs the same forget split"
            )
    columns: dict[str, list] = {k: [] for k in ("split", "answer_loss", "paraphrased_loss", "perturbed_losses",
                                                "rouge_l", "reference_truth_ratio")}  # fmt: skip
    for role in ROLES:
        losses = result["losses"][role]
        n = len(losses["answer"])
        columns["split"] += [role] * n
        columns["answer_loss"] += losses["answer"]
        columns["paraphrased_loss"] += losses.get("paraphrased", [None] * n)
        columns["perturbed_losses"] += losses["perturbed"]
        columns["rouge_l"] += result["metrics"][f"{role}_rouge_l"]["per_sample"]
        columns["reference_truth_ratio"] += list(ref) if role == "forget" and ref is not None else [None] * n
    return columns
