"""Study (not a method yet): forget by distilling what the target says about a stranger (issue 22).

    python benchmarks/stranger_study.py --world seed1-50authors --split forget05   # one cell, ~2 min on one thread
    python benchmarks/stranger_study.py --report_only                               # table from the JSON

Ascent pushes the forget answers' tokens down in every context, so the retain answers that share them
(places, professions) go down too, and on forget05/10 of the two development worlds the retain-recall
guard stops every ascent run long before forgetting is complete (benchmarks/auto.md, `attainable`).
Here the forget term is instead a KL towards a fixed teacher that knows nothing of the forget author:
the frozen target itself, reading the same row with the author's name replaced by a holdout author's
name of the same token length (an author it never saw, so its next-token distributions are what it
says about a stranger). For each answer position whose next token is not a name token,

    forget = mean over those positions of KL(p_target(. | stranger row prefix) || p_theta(. | forget row prefix))

and the retain term is the NLL of a retain batch (weight `--retain_weight`), AdamW at a fixed lr, batch
8 + 8. Rows whose question does not name the author (the name is the answer) keep their name tokens
masked. The idea is that of anchored term replacement in Eldan & Russinovich (arXiv 2310.02238); the
teacher-on-a-stranger construction and this loss are ours. World-only for now: it reads each author's
name from the world's rows (`author`, and the `fact` of the author's first question); TOFU rows carry
neither. Evaluated with the toolkit's evaluator against the split's retain-only reference at a few
steps (the benchmark's reference; a user would not have it).

Variants: `--alternatives K` distils K constructed wrong answers per forget row too (other retain
authors' answers to the most similar question, data/constructed.py); `--start noguard` starts from
`--auto` without its retain-recall guard (an over-unlearned model, built once per split and seed);
`--forget_weight 0` drops the forget term, leaving retain-only fine-tuning (with `--start noguard`: the
repair that `--stop_repair` automates, core/repair.py); `--marks 0,5,10` sets the evaluated steps.
`--teacher_check` trains nothing: it compares the target's truth ratios on the holdout with the
reference's on the forget set (is the target's view of an unseen author a fair teacher?).

Records: one per (world, split, lr, step) in `stranger_study.json`; `stranger_study.md` is the table.
Needs the worlds and models that `benchmarks/auto.py` builds (its --work folder and the model cache).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import ks_2samp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from auto import worlds  # noqa: E402  (benchmarks/auto.py: the world names and where it writes them)

from llm_unlearn.cli.parse import parse_config  # noqa: E402
from llm_unlearn.data.constructed import construct_perturbed  # noqa: E402
from llm_unlearn.data.qa import IGNORE_INDEX, QACollator, QADataset, load_split, pad_id  # noqa: E402
from llm_unlearn.eval.args import EvalArgs  # noqa: E402
from llm_unlearn.eval.metrics import truth_ratio  # noqa: E402
from llm_unlearn.eval.scoring import answer_losses, candidate_pairs, split_candidates  # noqa: E402
from llm_unlearn.models.build import build_default_models  # noqa: E402
from llm_unlearn.models.loading import load_model, load_tokenizer  # noqa: E402
from llm_unlearn.pipeline.evaluate import evaluate_path  # noqa: E402
from llm_unlearn.runs.folder import locked, write_json_atomic  # noqa: E402

RETAIN = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
ENCODE = dict(prompt_format="chat_template", max_length=256)
# What `llm-unlearn eval` scores losses with (evaluate()'s defaults).
EVAL_SCORING = dict(prompt_format="chat_template", system_prompt=None, max_length=1024, batch_size=32)
KEYS = ("forget_quality", "model_utility", "retain_fact_recall", "forget_fact_recall")


def author_names(rows: list[dict]) -> dict[int, str]:
    """author id -> name: the fact of each author's first row ("Who is the ... writer born ...?")."""
    names: dict[int, str] = {}
    for r in rows:
        names.setdefault(r["author"], r["fact"])
    return names


def stranger_pairs(
    forget: list[dict], holdout: list[dict], tokenizer, seed: int
) -> list[tuple[dict, dict, list[int]]]:
    """(forget features, the same row about a stranger of the same token length, labels to distil)."""
    names, strangers, rng = author_names(forget), list(author_names(holdout).values()), random.Random(seed)
    pairs = []
    for row, feature in zip(forget, QADataset(forget, tokenizer, **ENCODE).features):
        name = names[row["author"]]
        for other in rng.sample(strangers, len(strangers)):
            swapped = dict(
                row, question=row["question"].replace(name, other), answer=row["answer"].replace(name, other)
            )
            twin = QADataset([swapped], tokenizer, **ENCODE).features[0]
            if len(twin["input_ids"]) == len(feature["input_ids"]):
                break
        else:
            continue  # no stranger of the same token length: the row is left out (counted in the record)
        differs = [a != b for a, b in zip(feature["input_ids"], twin["input_ids"])]
        labels = [
            t if t != IGNORE_INDEX and not differs[i] else IGNORE_INDEX
            for i, t in enumerate(feature["labels"])
        ]
        pairs.append((feature, twin, labels))
    return pairs


def start_model(args, world: Path, target: Path) -> Path:
    """The weights training starts from: the target, or (`noguard`) `--auto` without its retain-recall
    guard (`--stop_retain_recall_tolerance 0`): an over-unlearned model, built once per (split, seed)."""
    if args.start == "target":
        return target
    folder = world.parent / f"noguard-{args.split}-{args.seed}"
    with locked(folder):  # two runs of one cell must not build it twice
        if not (folder / "model.safetensors").is_file():
            building = folder.with_name(f"{folder.name}.building-{os.getpid()}")
            shutil.rmtree(building, ignore_errors=True)
            command = [sys.executable, "-m", "llm_unlearn.cli", "unlearn", "--auto", "--model_name_or_path", str(target),
                       "--data_dir", str(world), "--forget_split", args.split, "--seed", str(args.seed),
                       "--retain_seed", str(args.seed), "--stop_retain_recall_tolerance", "0",
                       "--output_dir", str(building), "--save_strategy", "no", "--do_final_eval", "false",
                       "--report_to", "none", "--disable_tqdm", "true"]  # fmt: skip
            subprocess.run(command, check=True)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(building, folder)
    return folder


def forget_ratios(model, tokenizer, rows: list[dict]) -> np.ndarray:
    """Per-question truth ratios of `rows` (paraphrase vs perturbed), scored as the evaluation scores them."""
    questions, texts = candidate_pairs(rows, True)
    flat = answer_losses(model, tokenizer, questions, texts, progress=False, **EVAL_SCORING)
    _, paraphrased, perturbed = split_candidates(flat, rows, True)
    return truth_ratio(paraphrased, perturbed, "geometric")


def teacher_check(args, out: Path) -> None:
    """Is the target's view of unseen authors a fair teacher? KS p-values of the target's truth ratios on
    the holdout against the reference's on the forget set (what forget quality compares a model with)."""
    world = Path(args.work) / "default" / args.world / "world"
    models = build_default_models(world, forget_splits=(args.split,), size="default")
    forget, holdout = (
        load_split(f"{name}_perturbed", data_dir=world)
        for name in (args.split, args.split.replace("forget", "holdout"))
    )
    reference_eval = json.loads((world.parent / f"reference-{args.split}.json").read_text())
    ratios = {}
    for who, path in (("target", models["target"]), ("reference", models["retain"][args.split])):
        model, tokenizer = load_model(str(path)).eval(), load_tokenizer(str(path))
        with torch.no_grad():
            ratios[f"{who}_forget"] = forget_ratios(model, tokenizer, forget)
            ratios[f"{who}_holdout"] = forget_ratios(model, tokenizer, holdout)
    # The scoring above must be the evaluation's: the reference's forget ratios are in its eval.json.
    stored = np.asarray(reference_eval["metrics"]["forget_truth_ratio"]["per_sample_ratio"])
    if not np.allclose(ratios["reference_forget"], stored, rtol=1e-4, atol=1e-6):
        raise SystemExit("teacher check: the reference's forget truth ratios differ from its eval.json's")
    p = {
        f"{a} vs reference_forget": float(ks_2samp(ratios[a], ratios["reference_forget"]).pvalue)
        for a in ("reference_holdout", "target_holdout", "target_forget")
    }
    record = {"kind": "teacher_check", "world": args.world, "split": args.split, "n": len(forget), "ks_p": p,
              "median": {k: float(np.median(v)) for k, v in ratios.items()}, "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    with locked(out):
        records = json.loads(out.read_text()) if out.is_file() else []
        write_json_atomic(out, [*records, record])
    print(json.dumps(record), flush=True)


def run(args, out: Path) -> None:
    world = Path(args.work) / "default" / args.world / "world"
    models = build_default_models(world, forget_splits=(args.split,), size="default")
    forget, holdout, retain = (
        load_split(name, data_dir=world)
        for name in (args.split, args.split.replace("forget", "holdout"), RETAIN[args.split])
    )
    tokenizer = load_tokenizer(str(models["target"]))
    torch.manual_seed(args.seed)
    # The world's rows carry the other phrasings the target was trained on (`train_answers`): distilled too,
    # so that the student matches the stranger teacher on every phrasing it learned, not only the first.
    trained = (
        [dict(r, answer=a) for r in forget for a in r.get("train_answers", [])] if args.train_answers else []
    )
    # Wrong answers of the right kind (other retain authors' answers to the most similar question, the
    # name rewritten: data/constructed.py): distilled too, so that what the student thinks of *wrong*
    # answers about the forget author also becomes what the target thinks of them about a stranger.
    wrong = (
        [dict(r, answer=a) for r, ws in zip(forget, construct_perturbed(forget, retain, k=args.alternatives, seed=args.seed))
         for a in ws] if args.alternatives else []
    )  # fmt: skip
    pairs = stranger_pairs(forget + trained + wrong, holdout, tokenizer, args.seed)
    collate = QACollator(pad_id(tokenizer))
    teacher = load_model(str(models["target"])).eval()
    with torch.no_grad():
        targets = []
        for _, twin, _ in pairs:
            b = collate([twin])
            logits = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[0, :-1]
            targets.append(F.log_softmax(logits.float(), -1))
    del teacher
    model = load_model(str(start_model(args, world, models["target"]))).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    retain_features = QADataset(retain, tokenizer, **ENCODE).features
    data = parse_config(["--data_dir", str(world), "--forget_split", args.split])[1]
    reference = json.loads(
        (Path(args.work) / "default" / args.world / f"reference-{args.split}.json").read_text()
    )
    rng, seconds = random.Random(args.seed), 0.0
    eval_steps = (
        sorted({int(m) for m in args.marks.split(",")})
        if args.marks
        else sorted({args.steps // 4, args.steps // 2, args.steps})
    )
    # A folder of this run's own: two runs of one cell at once must not save over each other's weights.
    run_dir = Path(
        tempfile.mkdtemp(prefix=f"stranger-{args.split}-", dir=Path(args.work) / "default" / args.world)
    )

    def record_at(step: int) -> None:
        model.save_pretrained(run_dir)
        tokenizer.save_pretrained(run_dir)
        metrics = evaluate_path(str(run_dir), data, EvalArgs(), reference=reference)["metrics"]
        ratios = metrics["forget_truth_ratio"]["per_sample_ratio"]
        record = {"world": args.world, "split": args.split, "lr": args.lr, "retain_weight": args.retain_weight,
                  "forget_weight": args.forget_weight, "start": args.start,
                  "train_answers": args.train_answers, "alternatives": args.alternatives,
                  "seed": args.seed, "step": step, "train_seconds": round(seconds, 1), "rows_paired": len(pairs),
                  "forget_rows": len(forget) + len(trained) + len(wrong), "date": time.strftime("%Y-%m-%d"),
                  **{k: metrics[k]["value"] for k in KEYS}, "forget_truth_ratio_median": float(np.median(ratios))}  # fmt: skip
        with locked(out):  # several runs may share one records file
            records = json.loads(out.read_text()) if out.is_file() else []
            write_json_atomic(out, [*records, record])
        print(json.dumps(record), flush=True)

    if 0 in eval_steps:
        record_at(0)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        loss = 0.0
        if args.forget_weight:
            idx = rng.sample(range(len(pairs)), min(8, len(pairs)))
            batch = collate([dict(pairs[i][0], labels=pairs[i][2]) for i in idx])
            logp = F.log_softmax(
                model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                .logits[:, :-1]
                .float(),
                -1,
            )
            mask = batch["labels"][:, 1:] != IGNORE_INDEX
            total, count = 0.0, 0
            for j, i in enumerate(idx):
                n, t = targets[i].size(0), targets[i]
                total = total + ((t.exp() * (t - logp[j, :n])).sum(-1) * mask[j, :n]).sum()
                count += int(mask[j, :n].sum())
            loss = args.forget_weight * total / max(count, 1)
        retain_batch = collate([retain_features[k] for k in rng.sample(range(len(retain_features)), 8)])
        loss = loss + args.retain_weight * model(**retain_batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step in eval_steps:
            seconds += time.perf_counter() - start
            record_at(step)
            start = time.perf_counter()
    shutil.rmtree(run_dir, ignore_errors=True)


def report(out: Path, baseline: Path) -> None:
    records = json.loads(out.read_text())
    checks = [r for r in records if r.get("kind") == "teacher_check"]
    records = [r for r in records if r.get("kind") != "teacher_check"]
    bench = json.loads(baseline.read_text())
    autos = {(r["world"], r["split"], r["seed"]): r for r in bench["runs"] if r["arm"] == "auto"}
    lines = [
        "# Forgetting by distilling the target on a stranger (study, issue 22)",
        "",
        "Command: `python benchmarks/stranger_study.py --world W --split S [--train_answers] [--alternatives K]",
        "[--start noguard] [--forget_weight 0] [--steps N] [--marks M] [--lr LR] [--retain_weight W] [--seed K]`",
        "(its docstring gives the loss and the variants). 2-core x86-64 CPU (AMD EPYC), torch 2.13",
        "CPU, fp32, one torch thread, two runs at a time. `/ target`: over the target's value (the baseline of",
        "`benchmarks/auto.json`); FQ against the split's retain-only reference. The `--auto` rows are that",
        "benchmark's records for the same cell and seed (its seconds include its checks); the stranger rows'",
        "seconds are training alone, without the evaluations. `+phrasings`: `--train_answers`; `+K wrong`:",
        "`--alternatives K`; `from noguard`: `--start noguard`; `retain-only`: `--forget_weight 0` (step 0: the",
        "start itself).",
        "",
        "| world | split | arm | seed | step | FQ | MU / target | retain fact recall / target | forget fact recall | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in sorted({(r["world"], r["split"]) for r in records}):
        target = bench["baseline"][f"{cell[0]}/{cell[1]}"]["target"]

        seeds = sorted({r["seed"] for r in records if (r["world"], r["split"]) == cell})
        lines += [
            _row(cell, target, "`--auto`", a, a["best_step"], a["seconds"])
            for k in seeds
            if (a := autos.get((*cell, k)))
        ]
        ours = [r for r in records if (r["world"], r["split"]) == cell]
        for r in sorted(
            ours,
            key=lambda r: (
                r.get("start", "target"),
                r.get("forget_weight", 1),
                r.get("train_answers", False),
                r.get("alternatives", 0),
                r["lr"],
                r["retain_weight"],
                r["seed"],
                r["step"],
            ),
        ):
            arm = f"stranger lr {r['lr']:g}" + (
                f" rw {r['retain_weight']:g}" if r["retain_weight"] != 1 else ""
            )
            arm += " +phrasings" if r.get("train_answers") else ""
            arm += f" +{r['alternatives']} wrong" if r.get("alternatives") else ""
            if r.get("forget_weight", 1) == 0:
                arm = f"retain-only lr {r['lr']:g}"
            arm += " from noguard" if r.get("start", "target") == "noguard" else ""
            lines.append(_row(cell, target, arm, r, r["step"], r["train_seconds"]))
    if checks:
        lines += [
            "",
            "## Is the target's view of unseen authors a fair teacher? (`--teacher_check`)",
            "",
            "KS p-values of per-question truth ratios (paraphrase vs perturbed, the evaluation's scoring) against",
            "the retain-only reference's on the forget set, which is what forget quality compares a model with;",
            "medians in brackets. `reference on holdout`: exchangeability of the two unseen sets;",
            "`target on holdout`: the stranger teacher's view; `target on forget`: the target's forget quality.",
            "",
            "| world | split | n | reference on forget | reference on holdout | target on holdout | target on forget |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in sorted(checks, key=lambda c: (c["world"], c["split"])):
            p, m = c["ks_p"], c["median"]
            lines.append(
                f"| {c['world']} | {c['split']} | {c['n']} | ({m['reference_forget']:.2f}) | "
                + " | ".join(
                    f"{p[k + ' vs reference_forget']:.3g} ({m[k]:.2f})"
                    for k in ("reference_holdout", "target_holdout", "target_forget")
                )
                + " |"
            )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _row(cell: tuple, target: dict, arm: str, r: dict, step, seconds) -> str:
    return (
        f"| {cell[0]} | {cell[1]} | {arm} | {r['seed']} | {step} | {r['forget_quality']:.3g} | "
        f"{r['model_utility'] / target['model_utility']:.2f} | "
        f"{r['retain_fact_recall'] / target['retain_fact_recall']:.2f} | {r['forget_fact_recall']:.2f} | {seconds} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=sorted(worlds("default")), default="seed1-50authors")
    parser.add_argument("--split", choices=sorted(RETAIN), default="forget05")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--retain_weight", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--train_answers", action="store_true", help="also distil the rows' other trained phrasings"
    )
    parser.add_argument(
        "--alternatives", type=int, default=0, help="also distil K constructed wrong answers per forget row"
    )
    parser.add_argument(
        "--work", default="/tmp/llm-unlearn-auto-bench", help="benchmarks/auto.py's --work folder"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "stranger_study.json"))
    parser.add_argument("--report_only", action="store_true")
    parser.add_argument(
        "--start", choices=("target", "noguard"), default="target",
        help="start from the target, or from --auto without its retain-recall guard (over-unlearned)",
    )  # fmt: skip
    parser.add_argument("--forget_weight", type=float, default=1.0, help="0: retain-only fine-tuning")
    parser.add_argument("--marks", default=None, help="steps to evaluate at, e.g. 0,10,20 (0: the start)")
    parser.add_argument(
        "--teacher_check", action="store_true",
        help="only compare the target's truth ratios on the holdout with the reference's on the forget set",
    )  # fmt: skip
    args = parser.parse_args()
    out = Path(args.out)
    if not args.report_only:
        world = Path(args.work) / "default" / args.world / "world"
        if not world.is_dir():
            raise SystemExit(
                f"no world at {world}: run benchmarks/auto.py --worlds {args.world} first (it writes it)"
            )
        teacher_check(args, out) if args.teacher_check else run(args, out)
    report(out, ROOT / "benchmarks" / "auto.json")


if __name__ == "__main__":
    main()
