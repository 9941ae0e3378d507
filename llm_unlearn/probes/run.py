"""`llm-unlearn probe RUN_DIR`: run the residual-knowledge probes on a finished run and write probe.json.

Three models take part: the run's unlearned model, the original model it started from, and the
retain-only reference. The relearning and Piggyback probes (`attacks.py`) train on the attack part A
of the forget set and are scored on the held-out part E (`split.py`) at each step budget, for the
unlearned and the reference models; the original is scored on E as is. The quantization probe
(`quantization.py`) scores all three on the whole forget set at full precision and after RTN
quantization. Recovery (`measure.py`) puts every probed number between the reference (0) and the
original (1).

probe.json:
    schema_version, meta (models, data, split sizes, settings, timing), directions {metric: direction},
    split {by, seed, heldout_fraction, attack: [row indices], heldout: [row indices]},
    relearn / piggyback: {unlearned: [points], reference: [points], original: metrics on E,
                          recovery: [{budget, <metric>: {value, note}}]}
                         point = {budget, metrics {name: {value, direction, per_sample}}, train_loss,
                                  masked_fraction (piggyback)}
    quant: {unlearned / original / reference: {bits: {metrics, quantization}}, recovery: [...],
            bnb_nf4_skipped?: reason}
    rows: [{probe, budget, bits, metric, direction, value, retain_value, recovery, recovery_note}]
          the unlearned model's numbers, flat (budget for relearn / piggyback, bits for quant)
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from ..core.inputs import QA_FIELDS, SplitSource, check_same_vocabulary, check_splits
from ..data.heldout import attack_heldout_split
from ..data.qa import DataError, paired_split
from ..eval.cache import model_digest
from ..eval.tofu import recorded_path
from ..models.loading import load_model_and_tokenizer
from ..runs.folder import write_json_atomic
from ..runs.options import suggest
from .attacks import PROBES, ProbeSettings, probe_curve
from .measure import DIRECTIONS, EvalSettings, forget_metrics, recovery
from .quantization import MIA_RECOVERY_METRICS, quant_variants

logger = logging.getLogger("llm_unlearn")

SCHEMA_VERSION = 1
ALL_PROBES = (*PROBES, "quant")
DEFAULT_BUDGETS = (0, 10, 25, 50, 100)
ROLES = ("reference", "original", "unlearned")  # the order models are loaded in, one at a time


def load_probe_rows(
    data_dir: str | None, dataset_name: str | None, forget_split: str
) -> tuple[list[dict], str, list[dict] | None, str | None]:
    """(forget rows, their split, holdout rows or None, their split or None).

    The forget rows come from `forgetNN_perturbed` (paraphrased and perturbed answers: the truth ratio)
    where it exists, else from `forget_split` itself; the holdout (MIA non-members) from `holdoutNN`.
    """
    source = SplitSource(data_dir, dataset_name)

    def available(split: str) -> bool:
        return data_dir is None or source.has(split)

    try:
        perturbed, holdout = paired_split(forget_split, "perturbed"), paired_split(forget_split, "holdout")
    except DataError:  # not a forgetNN name: no paired splits
        perturbed = holdout = None
    split = perturbed if perturbed and available(perturbed) else forget_split
    read = {split: QA_FIELDS} | ({holdout: QA_FIELDS} if holdout and available(holdout) else {})
    check_splits(source, read, forget_split)  # companions, repeated questions, holdout overlap
    holdout_rows = source.rows.get(holdout) if holdout else None
    return source.rows[split], split, holdout_rows, holdout if holdout_rows is not None else None


def parse_budgets(text: str) -> tuple[int, ...]:
    """'0,10,25' -> (0, 10, 25): sorted, without repeats; anything but non-negative integers is refused."""
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise ValueError(
            f"--budgets {text!r} must be comma-separated non-negative integers (step budgets, e.g. 0,10,25,50,100)"
        )
    return tuple(sorted({int(p) for p in parts}))


def parse_probes(text: str) -> tuple[str, ...]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    for name in names:
        if name not in ALL_PROBES:
            raise ValueError(
                f"unknown probe {name!r}{suggest(name, ALL_PROBES)}; choose from {', '.join(ALL_PROBES)}"
            )
    if not names:
        raise ValueError(f"--probes is empty; choose from {', '.join(ALL_PROBES)}")
    return tuple(dict.fromkeys(names))


def _recovery_series(
    unlearned: list[dict], reference: list[dict], original: dict, retain: dict
) -> list[dict]:
    out = []
    for u, r in zip(unlearned, reference, strict=True):
        entry: dict = {"budget": u["budget"]}
        for name in u["metrics"]:
            value, note = recovery(
                u["metrics"][name]["value"],
                r["metrics"][name]["value"],
                original[name]["value"],
                retain[name]["value"],
            )
            entry[name] = {"value": value, "note": note}
        out.append(entry)
    return out


def _quant_recovery(quant: dict, full: str) -> list[dict]:
    out = []
    for label, variant in quant["unlearned"].items():
        entry: dict = {"bits": label}
        for name, metric in variant["metrics"].items():
            if name not in DIRECTIONS and name not in MIA_RECOVERY_METRICS:
                continue
            value, note = recovery(
                metric["value"], quant["reference"][label]["metrics"][name]["value"],
                quant["original"][full]["metrics"][name]["value"], quant["reference"][full]["metrics"][name]["value"],
            )  # fmt: skip
            entry[name] = {"value": value, "note": note}
        out.append(entry)
    return out


def _row(
    probe: str, budget, bits, name: str, metric: dict, retain_value: float | None, rec: dict | None
) -> dict:
    return {
        "probe": probe,
        "budget": budget,
        "bits": bits,
        "metric": name,
        "direction": metric["direction"],
        "value": metric["value"],
        "retain_value": retain_value,
        "recovery": rec["value"] if rec else None,
        "recovery_note": rec["note"] if rec else "already relative to the retain-only model",
    }


def _rows(result: dict) -> list[dict]:
    rows = []
    for probe in (p for p in PROBES if p in result):
        section = result[probe]
        for point, ref, rec in zip(
            section["unlearned"], section["reference"], section["recovery"], strict=True
        ):
            for name, metric in point["metrics"].items():
                retain_value = ref["metrics"][name]["value"]
                rows.append(_row(probe, point["budget"], None, name, metric, retain_value, rec[name]))
    if "quant" in result:
        quant = result["quant"]
        for rec in quant["recovery"]:
            label = rec["bits"]
            for name, metric in quant["unlearned"][label]["metrics"].items():
                retain = quant["reference"][label]["metrics"].get(name)  # none for reference-relative ones
                retain_value = retain["value"] if retain else None
                rows.append(_row("quant", None, label, name, metric, retain_value, rec.get(name)))
    return rows


def run_probes(
    run_dir: str | Path,
    *,
    original_model: str,
    reference_model: str,
    data_dir: str | None = None,
    dataset_name: str | None = None,
    forget_split: str = "forget10",
    probes: Sequence[str] = ALL_PROBES,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    settings: ProbeSettings | None = None,
    eval_settings: EvalSettings | None = None,
    heldout_fraction: float = 0.5,
    split_by: str = "question",
    quant_bits: Sequence[int] = (8, 4),
    group_size: int = 128,
    load: dict | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    reuse: dict | None = None,
) -> dict:
    """Probe the model in `run_dir` and return probe.json's content (module docstring); write it to `out`.

    `load` holds `models/loading.load_model_and_tokenizer` options (trust_remote_code, allow_pickle, torch_dtype).
    `reuse`, a dict kept by the caller across calls, holds the original's and the reference's results
    keyed by model path and every setting, so probing several runs probes those two only once.
    """
    from ..eval.quant import bnb_unavailable

    settings, eval_settings = settings or ProbeSettings(), eval_settings or EvalSettings()
    start = time.perf_counter()
    rows, eval_split, holdout_rows, holdout_split = load_probe_rows(data_dir, dataset_name, forget_split)
    check_same_vocabulary(
        {
            "unlearned model": str(run_dir),
            "original model": str(original_model),
            "reference model": str(reference_model),
        },
        trust_remote_code=(load or {}).get("trust_remote_code", False),
    )
    attack_idx, heldout_idx = attack_heldout_split(
        rows, seed=settings.seed, heldout_fraction=heldout_fraction, by=split_by
    )
    attack, heldout = [rows[i] for i in attack_idx], [rows[i] for i in heldout_idx]
    budgets = tuple(sorted(set(budgets) | {0}))  # budget 0, the unprobed model, is recovery's denominator
    bnb_reason = bnb_unavailable() if "quant" in probes else None
    paths = {role: recorded_path(path) for role, path in
             (("unlearned", run_dir), ("original", original_model), ("reference", reference_model))}  # fmt: skip
    everything = [data_dir, dataset_name, eval_split, holdout_split, list(probes), list(budgets), heldout_idx,
                  dataclasses.asdict(settings), dataclasses.asdict(eval_settings), list(quant_bits), group_size,
                  load, bnb_reason]  # fmt: skip
    signature = json.dumps(everything, sort_keys=True, default=str)
    reuse = {} if reuse is None else reuse
    found: dict[str, dict] = {}
    for role in ROLES:
        key = f"{role}|{paths[role]}|{signature}"
        if key in reuse:
            found[role] = reuse[key]
            continue
        model, tokenizer = load_model_and_tokenizer(paths[role], **(load or {}))
        own: dict = {}
        for probe in (p for p in PROBES if p in probes):
            if role == "original":  # not probed: only its plain metrics on E enter recovery
                own[probe] = forget_metrics(model, tokenizer, heldout, eval_settings, "original")
                continue
            own[probe], _ = probe_curve(
                probe, model, tokenizer, attack, heldout, budgets, settings, eval_settings,
                progress=progress, desc=role,
            )  # fmt: skip
        if "quant" in probes:
            with_reference = role != "reference" and holdout_rows is not None
            own["quant"], own["mia_scores"] = quant_variants(
                model, tokenizer, rows, holdout_rows, quant_bits, group_size, eval_settings,
                reference_scores=found["reference"]["mia_scores"] if with_reference else None,
                bnb_path=paths[role] if bnb_reason is None else None, progress=progress, desc=role,
            )  # fmt: skip
        found[role] = own
        if role != "unlearned":
            reuse[key] = own
        del model
        gc.collect()

    result: dict = {"schema_version": SCHEMA_VERSION}
    for probe in (p for p in PROBES if p in probes):
        unlearned, reference = found["unlearned"][probe], found["reference"][probe]
        original = found["original"][probe]
        retain = reference[0]["metrics"]  # budget 0: the retain-only model without a probe
        result[probe] = {
            "unlearned": unlearned,
            "reference": reference,
            "original": original,
            "recovery": _recovery_series(unlearned, reference, original, retain),
        }
    if "quant" in probes:
        quant = {role: found[role]["quant"] for role in ROLES}
        full = next(iter(quant["unlearned"]))
        quant["recovery"] = _quant_recovery(quant, full)
        if bnb_reason is not None:
            quant["bnb_nf4_skipped"] = bnb_reason
        result["quant"] = quant
    result["rows"] = _rows(result)
    mia = {name: "closer_to_0.5" for name in (*MIA_RECOVERY_METRICS, "mia_auc_reference")}
    result["directions"] = {**DIRECTIONS, **mia, "privleak": "closer_to_0"}
    result["split"] = {
        "by": split_by,
        "seed": settings.seed,
        "heldout_fraction": heldout_fraction,
        "attack": attack_idx,
        "heldout": heldout_idx,
    }
    result["meta"] = {
        "models": paths, "data": {"data_dir": data_dir, "dataset_name": dataset_name},
        # What the probed weights are, wherever the run is copied or moved (eval/runs.run_probe checks it).
        "unlearned_files_sha256": model_digest(run_dir),
        "forget_split": forget_split, "eval_split": eval_split, "holdout_split": holdout_split,
        "n_attack": len(attack), "n_heldout": len(heldout), "n_forget": len(rows),
        "n_holdout": len(holdout_rows) if holdout_rows is not None else None,
        "probes": list(probes), "budgets": list(budgets), "probe_settings": dataclasses.asdict(settings),
        "eval_settings": dataclasses.asdict(eval_settings), "quant": {"bits": list(quant_bits), "group_size": group_size},
        "seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    if out is not None:
        write_json_atomic(out, result)
    return result
