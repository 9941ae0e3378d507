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

    `reference`: the retain-only model's eval.json on the same forget split (for forget quality), checked
    as `llm-unlearn eval` checks it: the same forget questions, template and truth-ratio variant. The
    variant its ratios were computed with goes along (`reference_truth_ratio_variant`), so a metric loaded
    with another `config_name` refuses them rather than compare ratios of two kinds.
    """
    from ..eval.tofu import reference_ratios

    ref, variant = None, None
    if reference is not None:
        ref = reference_ratios(result, reference, "<reference eval dict>")[0].tolist()
        variant = result["meta"]["truth_ratio_variant"]  # the reference's too: reference_ratios checked it
        if len(ref) != len(result["losses"]["forget"]["answer"]):
            raise ValueError(
                f"reference has {len(ref)} forget samples but the model {len(result['losses']['forget']['answer'])}; "
                "forget quality needs the same forget split"
            )
    columns: dict[str, list] = {k: [] for k in ("split", "answer_loss", "paraphrased_loss", "perturbed_losses",
                                                "rouge_l", "reference_truth_ratio", "reference_truth_ratio_variant")}  # fmt: skip
    for role in ROLES:
        losses = result["losses"][role]
        n = len(losses["answer"])
        columns["split"] += [role] * n
        columns["answer_loss"] += losses["answer"]
        columns["paraphrased_loss"] += losses.get("paraphrased", [None] * n)
        columns["perturbed_losses"] += losses["perturbed"]
        columns["rouge_l"] += result["metrics"][f"{role}_rouge_l"]["per_sample"]
        given = role == "forget" and ref is not None
        columns["reference_truth_ratio"] += list(ref) if given else [None] * n
        columns["reference_truth_ratio_variant"] += [variant if given else ""] * n  # a string column: no None
    return columns
