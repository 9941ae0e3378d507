"""Read the TOFU authors' legacy per-sample eval logs (`eval_log_aggregated.json`, `locuslab/tofu`).

A legacy log maps four eval files to per-index dicts. We use `avg_gt_loss`, `avg_paraphrased_loss`
and `average_perturb_loss`, which are already length-normalised mean NLLs l(a|q) (`gt_loss /
num_token_gt`), and `rougeL_recall`. Its forget set is the first 300 rows of `forget10_perturbed`
and its retain set the first 300 of `retain_perturbed` (legacy `ds_size=300`). The same metric code
as for our own models turns these into eval.json-shaped results, which is what the golden tests
check against `shared/docs/tofu-metrics.md` section 9.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .metrics import SplitScores, forget_quality, tofu_metrics

LEGACY_FILES = {
    "forget": "eval_log_forget.json",
    "retain": "eval_log.json",
    "ra": "eval_real_author_wo_options.json",
    "wf": "eval_real_world_wo_options.json",
}
# The splits the legacy logs were computed on (legacy `ds_size=300` cuts forget10 and retain).
LEGACY_SPLITS = {
    "forget": "forget10_perturbed[:300]",
    "retain": "retain_perturbed[:300]",
    "ra": "real_authors_perturbed",
    "wf": "world_facts_perturbed",
}
_FIELDS = ("avg_gt_loss", "avg_paraphrased_loss", "average_perturb_loss", "rougeL_recall")


def is_legacy_log(data: dict) -> bool:
    return set(LEGACY_FILES.values()) <= set(data)


def _by_index(field: dict) -> list:
    return [field[k] for k in sorted(field, key=int)]


def load_legacy_log(path: str | Path) -> dict[str, SplitScores]:
    """Per-role scores (forget, retain, ra, wf) from a legacy `eval_log_aggregated.json`."""
    return legacy_scores(json.loads(Path(path).read_text(encoding="utf-8")), path)


def legacy_scores(data: dict, path: str | Path = "<legacy log>") -> dict[str, SplitScores]:
    """Per-role scores from the parsed content of a legacy log (`path` only names it in errors)."""
    if not is_legacy_log(data):
        raise ValueError(
            f"{path} is not a legacy TOFU log: it needs the keys {', '.join(LEGACY_FILES.values())}"
        )
    scores = {}
    for role, key in LEGACY_FILES.items():
        log = data[key]
        missing = [f for f in _FIELDS if f not in log]
        if missing:
            raise ValueError(f"{path}: {key} lacks field(s) {', '.join(missing)}")
        scores[role] = SplitScores(
            answer_loss=np.array(_by_index(log["avg_gt_loss"]), dtype=np.float64),
            # For ra/wf legacy scores the answer a second time, in the batch of the paraphrase pass;
            # that pass differs from avg_gt_loss by up to 0.04 nats (bf16, other padding), and the
            # legacy truth ratio (and so the golden numbers) use it.
            paraphrased_loss=np.array(_by_index(log["avg_paraphrased_loss"]), dtype=np.float64),
            perturbed_loss=[
                np.asarray(row, dtype=np.float64) for row in _by_index(log["average_perturb_loss"])
            ],
            rouge_l=np.array(_by_index(log["rougeL_recall"]), dtype=np.float64),
        )
    return scores


def legacy_result(path: str | Path, truth_ratio_variant: str = "geometric") -> dict:
    """An eval.json-shaped dict (metrics and meta) recomputed from a legacy log."""
    scores = load_legacy_log(path)
    return {
        "metrics": tofu_metrics(scores, truth_ratio_variant),
        "meta": {
            "source": "legacy_log",
            "source_path": str(path),
            "truth_ratio_variant": truth_ratio_variant,
            "splits": {
                role: {"name": LEGACY_SPLITS[role], "n": len(s.answer_loss)} for role, s in scores.items()
            },
        },
    }


def legacy_forget_quality(
    path: str | Path, reference_path: str | Path, truth_ratio_variant: str = "geometric"
) -> float:
    """Forget quality of one legacy log against another (e.g. full vs retain90)."""
    model = load_legacy_log(path)["forget"].ratios(truth_ratio_variant)
    reference = load_legacy_log(reference_path)["forget"].ratios(truth_ratio_variant)
    return forget_quality(model, reference)
