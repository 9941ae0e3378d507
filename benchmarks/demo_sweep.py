"""Sweep that chose the demo's unlearning settings: graddiff on forget10 of the built-in world.

    python benchmarks/demo_sweep.py --size default --out benchmarks/demo_sweep.json

For each retain term and learning rate, one run with a constant learning rate is evaluated at the
end of every epoch (so epoch k is the same as a k-epoch run), against the cached target and
retain-only reference. Results are appended per run, and finished runs are skipped on a rerun.
Writes the JSON records and a markdown table next to them (`.md`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from llm_unlearn.core.config import UnlearnConfig
from llm_unlearn.data.args import DataArgs
from llm_unlearn.data.world import WORLD_SIZES, WorldConfig, write_world
from llm_unlearn.eval.args import EvalArgs
from llm_unlearn.models.args import ModelArgs
from llm_unlearn.models.build import build_default_models
from llm_unlearn.pipeline.evaluate import EpochEvaluator, evaluate_path
from llm_unlearn.pipeline.unlearn import unlearn

KEYS = ("forget_quality", "model_utility", "forget_fact_recall", "forget_rouge_l", "forget_truth_ratio")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="default")
    parser.add_argument("--out", default="benchmarks/demo_sweep.json")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--learning_rates", default="1e-4,2e-4,5e-4,1e-3")
    parser.add_argument("--retain_losses", default="nll,kl")
    args = parser.parse_args()
    out = Path(args.out)
    records = json.loads(out.read_text()) if out.exists() else []
    done = {(r["retain_loss"], r["learning_rate"]) for r in records}

    work = Path(tempfile.mkdtemp(prefix="sweep-"))
    world = write_world(work / "world", WorldConfig(**WORLD_SIZES[args.size]))
    models = build_default_models(world, size=args.size)
    data = DataArgs(data_dir=str(world), forget_split="forget10")
    reference = evaluate_path(str(models["retain"]["forget10"]), data, EvalArgs())
    target = evaluate_path(str(models["target"]), data, EvalArgs(), reference=reference)
    baseline = {
        "target": {k: target["metrics"][k]["value"] for k in KEYS},
        "retain": {k: reference["metrics"][k]["value"] for k in KEYS if k != "forget_quality"},
    }
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models["target"])
    for retain_loss in args.retain_losses.split(","):
        for lr in (float(x) for x in args.learning_rates.split(",")):
            if (retain_loss, lr) in done:
                continue
            per_epoch: list[dict] = []
            start = time.perf_counter()
            unlearn(
                ModelArgs(model_name_or_path=str(models["target"])),
                data,
                UnlearnConfig(
                    output_dir=str(work / f"run-{retain_loss}-{lr}"),
                    method="graddiff",
                    retain_loss=retain_loss,
                    learning_rate=lr,
                    num_train_epochs=args.epochs,
                    per_device_train_batch_size=16,
                    lr_scheduler_type="constant",
                    weight_decay=0.0,
                    save_strategy="no",
                    disable_tqdm=True,
                    seed=0,
                ),
                EvalArgs(do_final_eval=False),
                callbacks=[EpochEvaluator(tokenizer, data, reference, per_epoch, KEYS)],
            )
            records.append(
                {
                    "method": "graddiff",
                    "retain_loss": retain_loss,
                    "learning_rate": lr,
                    "seconds": round(time.perf_counter() - start, 1),
                    "per_epoch": per_epoch,
                }
            )
            out.write_text(json.dumps(records, indent=1))
            print(retain_loss, lr, json.dumps(per_epoch[-1]), flush=True)
    (out.with_suffix(".baseline.json")).write_text(json.dumps(baseline, indent=1))
    write_table(records, baseline, out.with_suffix(".md"), args.size)


def write_table(records: list[dict], baseline: dict, path: Path, size: str) -> None:
    t = baseline["target"]
    lines = [
        f"# graddiff sweep on forget10 of the built-in world ({size})",
        "",
        "Command: `python benchmarks/demo_sweep.py --size " + size + "` (2-core CPU, torch 2.13 CPU, fp32).",
        f"Target: FQ {t['forget_quality']:.3g}, MU {t['model_utility']:.3f}, "
        f"forget fact recall {t['forget_fact_recall']:.2f}. Checks: FQ >= 100x target, "
        "fact recall <= 0.5x target, MU >= 0.8x target.",
        "",
        "| retain | lr | epoch | FQ | MU | MU/MU_target | fact recall | ROUGE-L | checks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        for e in r["per_epoch"]:
            ok = (
                e["forget_quality"] >= 100 * t["forget_quality"]
                and e["forget_fact_recall"] <= 0.5 * t["forget_fact_recall"]
                and e["model_utility"] >= 0.8 * t["model_utility"]
            )
            lines.append(
                f"| {r['retain_loss']} | {r['learning_rate']:g} | {e['epoch']} | {e['forget_quality']:.3g} | "
                f"{e['model_utility']:.3f} | {e['model_utility'] / t['model_utility']:.2f} | "
                f"{e['forget_fact_recall']:.2f} | {e['forget_rouge_l']:.3f} | {'PASS' if ok else 'fail'} |"
            )
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
