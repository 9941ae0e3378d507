"""Does NGDiff beat gradient difference? The comparison study on the built-in world.

    python benchmarks/ngdiff_vs_graddiff.py                      # the whole grid (resumable)
    python benchmarks/ngdiff_vs_graddiff.py --plan               # list the runs, run nothing
    python benchmarks/ngdiff_vs_graddiff.py --report_only        # redo table and plot from the JSON

Grid (GRID below): on forget10, three seeds each of graddiff and ngdiff with the same AdamW
learning-rate sweep, ngdiff with plain SGD (its own sweep: the SGD step is eta * d with
||d|| <= 2 over all parameters, so its useful lr is orders of magnitude above Adam's), ngdiff + GeN
(SGD and AdamW), and gradient ascent for reference; on forget01 and forget05 the same settings
with one seed. Every run uses the same number of epochs, batch 16 forget + 16 retain, a constant
schedule and no weight decay; the seed sets the forget order and the retain stream. The weights
are evaluated after every epoch (TOFU metrics against the split's retain-only reference); the
record's headline metrics are the final epoch's, i.e. the final weights. Per-epoch values are
kept in `per_epoch` (a trajectory, not separate runs).

Each finished run is appended to the JSON at once, and a rerun skips runs already there, so the
script can be stopped and restarted. Writes `<out>.json`, `<out>.md` (table) and `<out>.png`.

GeN rows recorded before GeN probed on fresh batches in eval mode (2026-11-27: probes on the step's
own micro-batches, a train-mode L0) carry no `gen_probe` field; they are kept, shown as
"(old probes)" beside the current rows, and left out of the verdict.

The current GeN rows ran on world models rebuilt on 2026-12-01 with one torch thread, which differ
slightly from the 2026-11-27 build (float reduction order). `--controls` reruns a few fixed-lr
settings on the rebuilt models (`models: rebuilt`, shown as "[rebuilt]"), so GeN is compared with
fixed lr on the same starting weights.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

from transformers import AutoTokenizer

from llm_unlearn.core.config import UnlearnConfig
from llm_unlearn.data.args import DataArgs
from llm_unlearn.data.world import WORLD_SIZES, WorldConfig, write_world
from llm_unlearn.eval.args import EvalArgs
from llm_unlearn.models.args import ModelArgs
from llm_unlearn.models.build import build_default_models
from llm_unlearn.pipeline.evaluate import EpochEvaluator, evaluate_path
from llm_unlearn.pipeline.unlearn import unlearn
from llm_unlearn.runs.folder import locked, write_json_atomic

KEYS = ("forget_quality", "model_utility", "forget_rouge_l", "forget_fact_recall", "forget_truth_ratio")
ADAM_LRS = (1e-4, 2e-4, 5e-4, 1e-3)
SGD_LRS = (0.02, 0.05, 0.07, 0.1, 0.2, 0.5)
# (label, method, optimizer, learning rates, gen, gen_gamma). GeN's default smoothing (0.9) moves
# eta by at most 10% per probe; the gamma-0.5 rows show what faster adaptation does in short runs.
GRID = (
    ("graddiff", "graddiff", "adamw_torch", ADAM_LRS, False, 0.9),
    ("ngdiff", "ngdiff", "adamw_torch", ADAM_LRS, False, 0.9),
    ("ngdiff", "ngdiff", "sgd", SGD_LRS, False, 0.9),
    ("ngdiff+gen", "ngdiff", "sgd", (0.02, 0.05, 0.07, 0.1, 0.5), True, 0.9),
    ("ngdiff+gen", "ngdiff", "adamw_torch", (2e-4, 1e-3), True, 0.9),
    ("ngdiff+gen g0.5", "ngdiff", "sgd", (0.02, 0.05, 0.1), True, 0.5),
    ("ga", "ga", "adamw_torch", (2e-5, 5e-5, 1e-4), False, 0.9),
)


# Fixed-lr settings rerun on the rebuilt models (forget10, every seed): (label, method, optimizer, lrs).
CONTROLS = (
    ("ngdiff", "ngdiff", "sgd", (0.07, 0.1)),
    ("graddiff", "graddiff", "adamw_torch", (2e-4,)),
)


def control_plan(seeds: tuple[int, ...]) -> list[dict]:
    return [
        dict(label=label, method=method, split="forget10", seed=seed, optimizer=optimizer, learning_rate=lr,
             gen=False, gen_gamma=0.9, models="rebuilt")
        for seed in seeds for label, method, optimizer, lrs in CONTROLS for lr in lrs
    ]  # fmt: skip


def gen_probe(r: dict) -> str | None:
    """How a run's GeN probed: "fresh" (current) or "own_batch" (records from before the fix)."""
    return r.get("gen_probe", "own_batch") if r["gen"] else None


def display_label(r: dict) -> str:
    return (
        r["label"]
        + (" (old probes)" if gen_probe(r) == "own_batch" else "")
        + (" [rebuilt]" if r.get("models") == "rebuilt" else "")
    )


def plan(
    seeds: tuple[int, ...], splits: tuple[str, ...] = ("forget10", "forget05", "forget01")
) -> list[dict]:
    """forget10 with every seed, the other splits with the first seed only."""
    runs = []
    for split in splits:
        split_seeds = seeds if split == "forget10" else seeds[:1]
        for seed in split_seeds:
            for label, method, optimizer, lrs, gen, gamma in GRID:
                for lr in lrs:
                    runs.append(
                        dict(label=label, method=method, split=split, seed=seed, optimizer=optimizer,
                             learning_rate=lr, gen=gen, gen_gamma=gamma, **({"gen_probe": "fresh"} if gen else {}))
                    )  # fmt: skip
    return runs


def run_key(r: dict) -> tuple:
    return (
        r["method"],
        r["split"],
        r["seed"],
        r["optimizer"],
        r["learning_rate"],
        r["gen"],
        r.get("gen_gamma", 0.9),
        gen_probe(r),
        r.get("models"),
    )


def gen_summary(log_file: Path) -> dict:
    """GeN's acceptance rate, why fits were rejected, and its lr trajectory, from train_log.jsonl.

    The reason is re-derived from the logged losses: curvature ~ L+ - 2 L0 + L-, slope ~ L+ - L-.
    Each probe has its own record, with the lr it probed at (`gen_lr`).
    """
    rows = [json.loads(line) for line in log_file.read_text().splitlines()]
    probes = [r for r in rows if "gen_accepted" in r]
    lrs = [r["learning_rate"] for r in rows if "learning_rate" in r]
    curvature = [r["gen_l_plus"] - 2 * r["gen_l0"] + r["gen_l_minus"] for r in probes]
    slope = [r["gen_l_plus"] - r["gen_l_minus"] for r in probes]
    return {
        "gen_probes": len(probes),
        "gen_acceptance_rate": sum(r["gen_accepted"] for r in probes) / max(1, len(probes)),
        "gen_rejected_negative_curvature": sum(c < 0 for c in curvature),
        "gen_rejected_ascent": sum(c >= 0 and b <= 0 for c, b in zip(curvature, slope)),
        "gen_eta_star_over_eta": [r["gen_eta_star"] / r["gen_lr"] for r in probes if r["gen_accepted"]],
        "lr_final": lrs[-1] if lrs else None,
        "lr_min": min(lrs) if lrs else None,
        "lr_max": max(lrs) if lrs else None,
    }


def refresh_gen(state: dict, run_dirs: list[Path]) -> int:
    """Recompute the GeN fields of recorded runs from their run folders' logs (matched by config)."""
    import yaml

    by_key = {run_key(r): r for r in state["runs"] if r["gen"]}
    n = 0
    for d in run_dirs:
        if not (d / "train_log.jsonl").exists():
            continue
        c = yaml.safe_load((d / "unlearn_config.yaml").read_text())
        key = (
            c["method"],
            c["forget_split"],
            c["seed"],
            c["optim"],
            c["learning_rate"],
            c["gen"],
            c["gen_gamma"],
        )
        if key in by_key:
            by_key[key] |= gen_summary(d / "train_log.jsonl")
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="default")
    parser.add_argument("--out", default="benchmarks/ngdiff_vs_graddiff.json")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--only", help="run only records whose label equals this")
    parser.add_argument("--splits", default="forget10,forget05,forget01")
    parser.add_argument("--eval_epochs", default="2,4", help="epochs evaluated besides the last")
    parser.add_argument("--controls", action="store_true", help="run the fixed-lr controls on rebuilt models")
    parser.add_argument("--plan", action="store_true")
    parser.add_argument("--report_only", action="store_true")
    parser.add_argument("--refresh_gen", nargs="*", default=[], help="run folders whose GeN logs to re-read")
    args = parser.parse_args()
    out = Path(args.out)
    runs = plan(tuple(int(s) for s in args.seeds.split(",")), tuple(args.splits.split(",")))
    if args.only:
        runs = [r for r in runs if r["label"] == args.only]
    if args.controls:
        runs = control_plan(tuple(int(s) for s in args.seeds.split(",")))
    state = json.loads(out.read_text()) if out.exists() else {"baseline": {}, "runs": []}
    done = {run_key(r) for r in state["runs"]}
    todo = [r for r in runs if run_key(r) not in done]
    print(f"{len(runs)} runs planned, {len(runs) - len(todo)} already recorded, {len(todo)} to run")
    if args.refresh_gen:
        with locked(out):
            state = json.loads(out.read_text())
            print(f"refreshed GeN fields of {refresh_gen(state, [Path(d) for d in args.refresh_gen])} runs")
            write_json_atomic(out, state)
        return
    if args.plan:
        for r in todo:
            print(r)
        return
    if todo and not args.report_only:
        execute(todo, state, out, args)
    with locked(out):
        write_outputs(json.loads(out.read_text()), out, args.size)


def execute(todo: list[dict], state: dict, out: Path, args) -> None:
    work = Path(tempfile.mkdtemp(prefix="ngdiff-study-"))
    world = write_world(work / "world", WorldConfig(**WORLD_SIZES[args.size]))
    splits = sorted({r["split"] for r in todo})
    models = build_default_models(world, forget_splits=tuple(splits), size=args.size)
    tokenizer = AutoTokenizer.from_pretrained(models["target"])
    references: dict[str, dict] = {}
    for split in splits:
        data = DataArgs(data_dir=str(world), forget_split=split)
        reference = evaluate_path(str(models["retain"][split]), data, EvalArgs())
        target = evaluate_path(str(models["target"]), data, EvalArgs(), reference=reference)
        references[split] = reference
        state["baseline"][split] = {
            "target": {k: target["metrics"][k]["value"] for k in KEYS},
            "retain": {k: reference["metrics"][k]["value"] for k in KEYS if k != "forget_quality"},
        }
    epochs = {int(e) for e in args.eval_epochs.split(",") if e} | {args.epochs}
    for i, r in enumerate(todo):
        data = DataArgs(data_dir=str(world), forget_split=r["split"])
        per_epoch: list[dict] = []
        run_dir = work / f"run-{i}"
        start = time.perf_counter()
        unlearn(
            ModelArgs(model_name_or_path=str(models["target"])),
            data,
            UnlearnConfig(
                output_dir=str(run_dir),
                method=r["method"],
                optim=r["optimizer"],
                learning_rate=r["learning_rate"],
                gen=r["gen"],
                gen_gamma=r.get("gen_gamma", 0.9),
                num_train_epochs=args.epochs,
                per_device_train_batch_size=16,
                lr_scheduler_type="constant",
                weight_decay=0.0,
                save_strategy="no",
                disable_tqdm=True,
                seed=r["seed"],
                retain_seed=r["seed"],
            ),
            EvalArgs(do_final_eval=False),
            callbacks=[EpochEvaluator(tokenizer, data, references[r["split"]], per_epoch, KEYS, epochs)],
        )
        final = per_epoch[-1]
        record = {
            **r,
            "epochs": args.epochs,
            **{k: final[k] for k in KEYS},
            "target_model_utility": state["baseline"][r["split"]]["target"]["model_utility"],
            "seconds": round(time.perf_counter() - start, 1),
            "per_epoch": per_epoch,
        }
        if r["gen"]:
            record |= gen_summary(run_dir / "train_log.jsonl")
        with locked(out):  # several workers (disjoint --seeds/--splits) may share one file
            on_disk = json.loads(out.read_text()) if out.exists() else {"baseline": {}, "runs": []}
            on_disk["baseline"] |= state["baseline"]
            on_disk["runs"].append(record)
            write_json_atomic(out, on_disk)
            state["runs"] = on_disk["runs"]
        print(
            f"[{i + 1}/{len(todo)}] {r['label']:<10} {r['split']} seed {r['seed']} {r['optimizer']:<11} "
            f"lr {r['learning_rate']:<7g} FQ {final['forget_quality']:.3g} MU {final['model_utility']:.3f} "
            f"({record['seconds']} s)",
            flush=True,
        )


def by_setting(runs: list[dict], split: str) -> dict[tuple, list[dict]]:
    """The runs on `split` grouped by setting (label, optimizer, learning rate): one list of seeds each."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if r["split"] == split:
            groups.setdefault((display_label(r), r["optimizer"], r["learning_rate"]), []).append(r)
    return groups


def seed_means(runs: list[dict], split: str) -> list[dict]:
    """One row per setting on `split`: mean and spread over seeds of each headline metric."""
    rows = []
    for (label, optimizer, lr), rs in by_setting(runs, split).items():
        row = {"label": label, "optimizer": optimizer, "learning_rate": lr, "n_seeds": len(rs)}
        for k in KEYS:
            values = [x[k] for x in rs]
            row[k] = statistics.fmean(values)
            row[k + "_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        # Forget quality spans decades: its geometric mean is reported alongside.
        row["forget_quality_gmean"] = math.exp(
            statistics.fmean(math.log(max(x["forget_quality"], 1e-300)) for x in rs)
        )
        if "gen_acceptance_rate" in rs[0]:
            row["gen_acceptance_rate"] = statistics.fmean(x["gen_acceptance_rate"] for x in rs)
            row["lr_final"] = statistics.fmean(x["lr_final"] for x in rs)
        rows.append(row)
    return rows


def pareto(rows: list[dict]) -> list[dict]:
    """Settings not dominated in (model utility, forget quality), both higher-is-better."""
    return [
        r for r in rows
        if not any(
            o is not r and o["model_utility"] >= r["model_utility"] and o["forget_quality"] >= r["forget_quality"]
            and (o["model_utility"] > r["model_utility"] or o["forget_quality"] > r["forget_quality"])
            for o in rows
        )
    ]  # fmt: skip


def verdict(rows: list[dict], target_mu: float) -> dict:
    """The issue's two goals on forget10 seed means, answered from the measurements."""
    gen = [r for r in rows if r["label"].startswith("ngdiff+gen") and "old probes" not in r["label"]]
    good = [r for r in gen if r["forget_quality"] >= 0.1 and r["model_utility"] >= 0.95 * target_mu]
    undominated = [
        g for g in rows if g["label"].startswith("graddiff")
        and not any(n["forget_quality"] >= g["forget_quality"] and n["model_utility"] >= g["model_utility"] for n in gen)
    ]  # fmt: skip
    return {
        "ngdiff_gen_reaches_fq_0.1_and_mu_0.95_target": bool(good),
        "ngdiff_gen_settings_meeting_it": [f"{_setting(r)} lr {r['learning_rate']:g}" for r in good],
        "every_graddiff_setting_matched_by_ngdiff_gen": not undominated,
        "graddiff_settings_not_matched": [f"{r['label']} lr {r['learning_rate']:g}" for r in undominated],
    }


def _setting(r: dict) -> str:
    """A seed-mean row's label, or a recorded run's (which says whether its GeN probes were the old ones)."""
    label = display_label(r) if "gen" in r else r["label"]
    return f"{label} ({'sgd' if r['optimizer'] == 'sgd' else 'adamw'})"


def write_outputs(state: dict, out: Path, size: str) -> None:
    runs = state["runs"]
    lines = [
        f"# NGDiff vs gradient difference on the built-in world ({size})",
        "",
        "Command: `python benchmarks/ngdiff_vs_graddiff.py` (resumable; see its docstring for the grid).",
        "Measured on the 2-core x86-64 CPU of our workplace (torch 2.13 CPU, fp32), one torch thread per",
        'run: the non-GeN and "(old probes)" rows on 2026-11-27 (two workers at a time), the current',
        "GeN rows (fresh probe batches, eval mode) on 2026-12-01 (`--only ngdiff+gen`, forget10).",
        "Final weights after the same number of epochs for every run; FQ = forget quality (KS p-value",
        "against the retain-only reference), MU = model utility. Mean +- sd over seeds.",
    ]
    summary = {}
    for split in ("forget10", "forget05", "forget01"):
        rows = seed_means(runs, split)
        if not rows:
            continue
        base = state["baseline"][split]
        target_mu = base["target"]["model_utility"]
        lines += [
            "",
            f"## {split}",
            "",
            f"Target: FQ {base['target']['forget_quality']:.3g}, MU {target_mu:.3f}, fact recall "
            f"{base['target']['forget_fact_recall']:.2f}. Retain-only reference: MU {base['retain']['model_utility']:.3f}, "
            f"fact recall {base['retain']['forget_fact_recall']:.2f}.",
            "",
            "| setting | lr | seeds | FQ | MU | MU/target | ROUGE-L | fact recall | GeN accept | final lr |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        front = {id(r) for r in pareto(rows)}
        for r in sorted(rows, key=lambda r: (r["label"], r["optimizer"], r["learning_rate"])):
            gen = f"{r['gen_acceptance_rate']:.2f}" if "gen_acceptance_rate" in r else ""
            lr_final = f"{r['lr_final']:.3g}" if "lr_final" in r else ""
            lines.append(
                f"| {_setting(r)}{' *' if id(r) in front else ''} | {r['learning_rate']:g} | {r['n_seeds']} | "
                f"{r['forget_quality']:.3g} +- {r['forget_quality_sd']:.2g} | {r['model_utility']:.3f} +- "
                f"{r['model_utility_sd']:.3f} | {r['model_utility'] / target_mu:.2f} | {r['forget_rouge_l']:.3f} | "
                f"{r['forget_fact_recall']:.2f} | {gen} | {lr_final} |"
            )
        v = verdict(rows, target_mu)
        summary[split] = v
        lines += ["", "`*` = on the Pareto front of all settings (MU and FQ both higher-is-better).", ""]
        lines += [f"- {k}: {v[k]}" for k in v]
        if split == "forget10":
            plot(rows, base, out.with_suffix(".png"), split)
            lines += ["", f"![FQ vs MU]({out.with_suffix('.png').name})", ""]
            lines += trajectory_table(runs, split)
            lines += gen_table(runs, split)
            lines += gen_before_after(runs, split)
    state["verdict"] = summary
    write_json_atomic(out, state)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}, {out.with_suffix('.md')}")


def trajectory_table(runs: list[dict], split: str) -> list[str]:
    """Seed means of FQ / MU after each evaluated epoch: one run's trajectory, not separate runs."""
    epochs = sorted(set.intersection(*({e["epoch"] for e in r["per_epoch"]} for r in runs)))
    lines = [
        "Trajectory (the same runs evaluated after earlier epochs; seed means, FQ / MU):",
        "",
        "| setting | lr | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
        "|---|---|" + "---|" * len(epochs),
    ]
    for (*_, lr), rs in sorted(by_setting(runs, split).items()):
        cells = []
        for e in epochs:
            points = [p for r in rs for p in r["per_epoch"] if p["epoch"] == e]
            fq = statistics.fmean(p["forget_quality"] for p in points) if points else math.nan
            mu = statistics.fmean(p["model_utility"] for p in points) if points else math.nan
            cells.append(f"{fq:.2g} / {mu:.3f}")
        lines.append(f"| {_setting(rs[0])} | {lr:g} | " + " | ".join(cells) + " |")
    return lines


def gen_table(runs: list[dict], split: str) -> list[str]:
    """GeN's probes pooled over seeds: how often a fit was accepted, why not, and what it asked for."""
    gen_runs = [r for r in runs if r["gen"] and "gen_rejected_ascent" in r]
    lines = [
        "",
        "GeN probes (pooled over seeds): acceptance, rejections by cause, and eta*/eta of accepted fits",
        "(before GeN's clip to [eta/2, 2 eta] and smoothing):",
        "",
        "| setting | lr | probes | accepted | negative curvature | ascent | median eta*/eta | final lr |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (*_, lr), rs in sorted(by_setting(gen_runs, split).items()):
        probes = sum(r["gen_probes"] for r in rs)
        accepted = sum(round(r["gen_acceptance_rate"] * r["gen_probes"]) for r in rs)
        ratios = [x for r in rs for x in r["gen_eta_star_over_eta"]]
        median = f"{statistics.median(ratios):.3g}" if ratios else "-"
        lines.append(
            f"| {_setting(rs[0])} | {lr:g} | {probes} | {accepted / probes:.2f} | "
            f"{sum(r['gen_rejected_negative_curvature'] for r in rs) / probes:.2f} | "
            f"{sum(r['gen_rejected_ascent'] for r in rs) / probes:.2f} | {median} | "
            f"{statistics.fmean(r['lr_final'] for r in rs):.3g} |"
        )
    return lines


def gen_before_after(runs: list[dict], split: str) -> list[str]:
    """Old (own-batch, train-mode L0) vs current (fresh, eval-mode) GeN probes, setting by setting."""
    groups = by_setting([r for r in runs if r["gen"]], split)
    lines = [
        "",
        "GeN before and after the probe fix (seed means; `old` = probes on the step's own batches with a",
        "train-mode L0, `new` = fresh probe batches, all three losses in eval mode):",
        "",
        "| setting | lr | accepted old / new | median eta*/eta old / new | final lr old / new | "
        "FQ old / new | MU old / new |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(rs, fn, fmt):
        return format(fn(rs), fmt) if rs else "-"

    def median_ratio(rs):
        ratios = [x for r in rs for x in r["gen_eta_star_over_eta"]]
        return statistics.median(ratios) if ratios else math.nan

    for (label, optimizer, lr), new in sorted(groups.items()):
        if "old probes" in label:
            continue
        old = groups.get((label + " (old probes)", optimizer, lr), [])
        parts = []
        for fn, fmt in (
            (lambda rs: statistics.fmean(r["gen_acceptance_rate"] for r in rs), ".2f"),
            (median_ratio, ".3g"),
            (lambda rs: statistics.fmean(r["lr_final"] for r in rs), ".3g"),
            (lambda rs: statistics.fmean(r["forget_quality"] for r in rs), ".3g"),
            (lambda rs: statistics.fmean(r["model_utility"] for r in rs), ".3f"),
        ):
            parts.append(f"{cell(old, fn, fmt)} / {cell(new, fn, fmt)}")
        lines.append(f"| {_setting(new[0])} | {lr:g} | " + " | ".join(parts) + " |")
    return lines


def plot(rows: list[dict], base: dict, path: Path, split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    settings = sorted({_setting(r) for r in rows})
    colors = plt.get_cmap("tab20")
    for i, setting in enumerate(settings):
        pts = [r for r in rows if _setting(r) == setting]
        front = sorted(pareto(pts), key=lambda r: r["model_utility"])
        # 20 distinct colours and a marker per setting, so no two settings look alike.
        style = dict(color=colors(i % 20), marker="osD^v<>"[i % 7])
        ax.scatter([r["model_utility"] for r in pts], [r["forget_quality"] for r in pts], label=setting,
                   alpha=0.85, **style)  # fmt: skip
        ax.plot(
            [r["model_utility"] for r in front], [r["forget_quality"] for r in front], color=style["color"]
        )
    target_mu = base["target"]["model_utility"]
    ax.scatter([target_mu], [base["target"]["forget_quality"]], marker="*", s=150, color="k", label="target")
    ax.axhline(0.1, ls=":", color="gray")
    ax.axvline(0.95 * target_mu, ls=":", color="gray")
    ax.set_yscale("log")
    ax.set_xlabel("model utility (seed mean)")
    ax.set_ylabel("forget quality (seed mean, log)")
    ax.set_title(f"{split}: final weights; lines = each setting's front; dotted = goal")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
