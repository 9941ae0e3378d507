"""Does bf16 NGDiff take the steps fp32 NGDiff takes? (issue 23's GPU protocol, `smollm2_tofu.py --preset gpu`)

From the same target, the same seed and the same batches, NGDiff runs `steps` optimizer steps twice,
once with `--bf16` (autocast; fp32 master weights, so both runs save fp32 weights) and once in fp32.
Compared: the update each run made, Delta = theta_after - theta_target, as

    rel = ||Delta_bf16 - Delta_fp32|| / ||Delta_fp32||      cos = <Delta_bf16, Delta_fp32> / (||.|| ||.||)

over every parameter, and the per-step forget and retain losses of the two runs. NGDiff normalizes each
gradient before summing, so a bf16 rounding of a small gradient is not scaled up by its size; the
check passes at rel <= REL_TOL and cos >= COS_MIN (bf16 keeps 8 bits of mantissa: relative errors of a
few percent per step are expected, a wrong sign or a lost term is not).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

REL_TOL, COS_MIN = 0.1, 0.99


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        if f.name.startswith("stop_rule"):
            continue
        out |= {k: v.float() for k, v in load_file(str(f)).items()}
    return out


def _losses(run_dir: Path) -> list[list[float]]:
    """Per step, the forget and the retain term (their sum can be near 0, so each is compared apart)."""
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return [[r["loss_forget"], r["loss_retain"]] for r in log if "loss_forget" in r]


def compare(target: Path, fp32: Path, bf16: Path) -> dict:
    """rel, cos and the largest per-step loss difference (relative to the fp32 loss) of two runs from one target."""
    import torch

    base, a, b = _weights(target), _weights(fp32), _weights(bf16)
    shared = sorted(set(base) & set(a) & set(b))
    if not shared:
        raise ValueError(f"no parameter names shared by {target}, {fp32} and {bf16}")
    dot = na = nb = nd = 0.0
    for name in shared:
        da, db = a[name] - base[name], b[name] - base[name]
        dot += float((da * db).sum())
        na += float(da.pow(2).sum())
        nb += float(db.pow(2).sum())
        nd += float((db - da).pow(2).sum())
    la, lb = _losses(fp32), _losses(bf16)
    loss_diff = max(
        (abs(x - y) / max(abs(x), 1e-12) for pa, pb in zip(la, lb, strict=True) for x, y in zip(pa, pb)),
        default=math.nan,
    )
    rel = math.sqrt(nd) / max(math.sqrt(na), 1e-30)
    cos = dot / max(math.sqrt(na * nb), 1e-30)
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"update_rel_diff": rel, "update_cosine": cos, "max_step_loss_rel_diff": loss_diff,
            "fp32_losses": la, "bf16_losses": lb, "parameters_compared": len(shared),
            "passed": bool(rel <= REL_TOL and cos >= COS_MIN), "tolerance": {"rel": REL_TOL, "cos": COS_MIN}}  # fmt: skip


def precision_check(
    target: Path, data_dir: Path, split: str, work: Path, sizes, seed: int, unlearn_stage
) -> dict:
    """Run both arms with `unlearn_stage` (cached in `work`) and compare them; the result is kept in work too."""
    out = work / "bf16_vs_fp32.json"
    if out.is_file():
        return json.loads(out.read_text())
    settings = dict(method="ngdiff", max_steps=sizes.precision_check_steps)
    dirs = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        dirs[name] = work / f"ngdiff-{name}"
        unlearn_stage(
            target, data_dir, split, dirs[name], dataclasses.replace(sizes, bf16=bf16), settings, seed
        )
    result = {"steps": sizes.precision_check_steps, **compare(target, dirs["fp32"], dirs["bf16"])}
    work.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result
