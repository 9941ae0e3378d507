"""Does forgetting last? graddiff, npo and ngdiff, each plain, with sharpness-aware unlearning (SAM,
arXiv 2502.05374) and with unlearn-noise-distill (UNDO, arXiv 2506.06278) at two alphas, probed by
relearning, Piggyback and 4-bit quantization; three seeds (issue 21). Run through
`python benchmarks/robustness.py --remedies`; records go into robustness.json's `remedies` section.

A (method, seed) group runs the plain method from its world recipe first; the SAM arm reruns the
recipe with `--sam_rho`; each UNDO arm distills the plain run (`llm_unlearn.pipeline.distill`), so
its seconds are the plain run's plus the distillation's. Every arm is then evaluated against the
retain-only reference (FQ, MU, retain fact recall) and probed exactly as the single-seed tables are
(`llm_unlearn.probes.run_probes`, attack half A / held-out half E of forget10). `seconds_ratio` is an
arm's seconds over the plain run's, measured in the same group, one after the other.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import _study  # benchmarks/_study.py: this script's folder is on sys.path
import torch

from llm_unlearn.bench.hardware import device_name
from llm_unlearn.cli.parse import parse_config
from llm_unlearn.eval.args import EvalArgs
from llm_unlearn.pipeline.distill import DistillSettings, distill
from llm_unlearn.pipeline.evaluate import evaluate_path
from llm_unlearn.pipeline.unlearn import unlearn
from llm_unlearn.probes import EvalSettings, ProbeSettings, run_probes

SECTION = "remedies"
METHODS = ("graddiff", "npo", "ngdiff")
SEEDS = (0, 1, 2)
# Chosen on graddiff, seed 0-2, before this study (the SAM and UNDO branches' own measurements): SAM at
# rho 0.25 needs ~2.5x the recipe's epochs to forget (at 6 epochs it barely does); UNDO needs 6 distillation
# epochs to move relearning at all (3 did not). Every method gets the same settings: none is tuned per method.
SAM_RHO, SAM_EPOCHS = 0.25, 16
UNDO_ALPHAS, UNDO_EPOCHS = (0.6, 0.8), 6.0
ARMS = ("plain", "sam", *(f"undo-{a:g}" for a in UNDO_ALPHAS))
KEYS = ("forget_quality", "model_utility", "retain_fact_recall", "forget_fact_recall", "forget_rouge_l")
CURVE_METRIC = "forget_fact_recall"
GOAL_RECOVERY, GOAL_MU_SHARE = 0.3, 0.9


def key(r: dict) -> tuple:
    return (r["method"], r["seed"], r["arm"])


def plan(methods, seeds, arms) -> list[dict]:
    return [{"method": m, "seed": s, "arm": a} for m in methods for s in seeds for a in arms]


def execute(todo: list[dict], out: Path, args, world: Path, models: dict, recipes: Path, budgets) -> None:
    """Group by (method, seed); the plain run is (re)made first whenever a group has anything left."""
    split = "forget10"
    target, retain = str(models["target"]), str(models["retain"][split])
    data = parse_config(["--data_dir", str(world), "--forget_split", split])[1]
    reference = evaluate_path(retain, data, EvalArgs())
    target_eval = evaluate_path(target, data, EvalArgs(), reference=reference)
    baseline = {
        "target": {k: target_eval["metrics"][k]["value"] for k in KEYS},
        "retain": {k: reference["metrics"][k]["value"] for k in KEYS if k != "forget_quality"},
        "sam_rho": SAM_RHO,
        "sam_epochs": SAM_EPOCHS,
        "undo_alphas": list(UNDO_ALPHAS),
        "undo_epochs": UNDO_EPOCHS,
    }
    settings = ProbeSettings()
    eval_settings = EvalSettings(prompt_format=data.prompt_format, system_prompt=data.system_prompt,
                                 max_length=data.max_length, max_new_tokens=16 if args.quick else 64)  # fmt: skip
    reuse: dict = {}
    work = Path(args.work)
    groups = list(dict.fromkeys((r["method"], r["seed"]) for r in todo))
    for g, (method, seed) in enumerate(groups):
        arms = [r["arm"] for r in todo if (r["method"], r["seed"]) == (method, seed)]
        base = ["--config", str(recipes / f"{method}.yaml"), "--model_name_or_path", target, "--data_dir", str(world),
                "--forget_split", split, "--reference_model", retain, "--seed", str(seed), "--retain_seed", str(seed),
                "--save_strategy", "no", "--disable_tqdm", "true", "--do_final_eval", "false", "--report_to", "none"]  # fmt: skip
        if args.quick:
            base += ["--max_steps", "2"]
        stamp = time.strftime("%H%M%S")

        prefix = work / f"{method}-{seed}"
        plain_dir, plain_seconds = _unlearn(base, prefix, "plain", stamp, [])
        for arm in arms:
            if arm == "plain":
                run_dir, seconds = plain_dir, plain_seconds
            elif arm == "sam":
                run_dir, seconds = _unlearn(
                    base,
                    prefix,
                    "sam",
                    stamp,
                    [
                        "--sam_rho",
                        str(SAM_RHO),
                        *([] if args.quick else ["--num_train_epochs", str(SAM_EPOCHS)]),
                    ],
                )
            else:
                alpha = float(arm.removeprefix("undo-"))
                start = time.perf_counter()
                run_dir = distill(plain_dir, work / f"{method}-{seed}-{arm}-{stamp}",
                                  DistillSettings(alpha=alpha, seed=seed, disable_tqdm=True, num_train_epochs=UNDO_EPOCHS,
                                                  max_steps=4 if args.quick else -1))  # fmt: skip
                seconds = plain_seconds + time.perf_counter() - start
            result = evaluate_path(str(run_dir), data, EvalArgs(), reference=reference)
            probes = run_probes(run_dir, original_model=target, reference_model=retain, data_dir=str(world),
                                forget_split=split, budgets=budgets, settings=settings, eval_settings=eval_settings,
                                out=run_dir / "probe.json", reuse=reuse, progress=False)  # fmt: skip
            record = {
                "method": method, "seed": seed, "arm": arm,
                **{k: result["metrics"][k]["value"] for k in KEYS},
                "seconds": round(seconds, 1), "seconds_ratio": round(seconds / plain_seconds, 3),
                "curves": _curves(probes["rows"]), "date": time.strftime("%Y-%m-%d"),
            }  # fmt: skip
            _study.append(
                out,
                [record],
                section=SECTION,
                baseline=baseline,
                size=args.size,
                quick=args.quick,
                hardware=f"{device_name()}, {torch.get_num_threads()} torch threads",
            )
            relearn = record["curves"]["relearn"]
            print(f"[{g + 1}/{len(groups)}] {method:<8} seed {seed} {arm:<9} FQ {record['forget_quality']:.3g} "
                  f"MU {record['model_utility']:.3f} retain recall {record['retain_fact_recall']:.2f} relearn@"
                  f"{budgets[-1]} recovery {_fmt(relearn[str(budgets[-1])]['recovery'])} ({record['seconds']} s, "
                  f"x{record['seconds_ratio']})", flush=True)  # fmt: skip


def _unlearn(base: list[str], prefix: Path, name: str, stamp: str, extra: list[str]) -> tuple[Path, float]:
    model_args, data, config, eval_args = parse_config(
        [*base, "--output_dir", f"{prefix}-{name}-{stamp}", *extra]
    )
    start = time.perf_counter()
    run_dir = unlearn(model_args, data, config, eval_args)
    return run_dir, time.perf_counter() - start


def _curves(rows: list[dict]) -> dict:
    """{relearn|piggyback: {budget: {value, recovery}}, quant: {bits: {value, recovery}}} for CURVE_METRIC."""
    curves: dict = {"relearn": {}, "piggyback": {}, "quant": {}}
    for r in rows:
        if r["metric"] == CURVE_METRIC and r["probe"] in curves:
            point = str(r["budget"] if r["probe"] != "quant" else r["bits"])
            curves[r["probe"]][point] = {"value": r["value"], "recovery": r["recovery"]}
    return curves


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _sd(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.stdev(values) if len(values) > 1 else None


def summarize(state: dict) -> list[dict]:
    """Seed means (and spreads) per (method, arm), with the goal check against the plain arm."""
    runs, base = state["runs"], state["baseline"]
    budgets = sorted({int(b) for r in runs for b in r["curves"]["relearn"]})
    rows = []
    for method in dict.fromkeys(r["method"] for r in runs):
        plain_fq = _mean(r["forget_quality"] for r in runs if (r["method"], r["arm"]) == (method, "plain"))
        for arm in dict.fromkeys(r["arm"] for r in runs if r["method"] == method):
            rs = [r for r in runs if (r["method"], r["arm"]) == (method, arm)]
            row = {"method": method, "arm": arm, "seeds": sorted(r["seed"] for r in rs)}
            for k in (*KEYS, "seconds", "seconds_ratio"):
                row[k], row[f"{k}_sd"] = _mean(r[k] for r in rs), _sd(r[k] for r in rs)
            for probe in ("relearn", "piggyback"):
                for b in budgets:
                    vals = [r["curves"][probe].get(str(b), {}).get("recovery") for r in rs]
                    row[f"{probe}_{b}"], row[f"{probe}_{b}_sd"] = _mean(vals), _sd(vals)
            row["quant_4"] = _mean(r["curves"]["quant"].get("4", {}).get("recovery") for r in rs)
            last = row.get(f"relearn_{budgets[-1]}")
            row["goal"] = {
                "relearn_recovery_at_max": last is not None and last <= GOAL_RECOVERY,
                "mu_share": row["model_utility"] / max(base["target"]["model_utility"], 1e-12),
                "mu_kept": row["model_utility"] >= GOAL_MU_SHARE * base["target"]["model_utility"],
                "fq_not_below_plain": plain_fq is not None and row["forget_quality"] >= plain_fq,
            }
            row["goal"]["met"] = all(v for k, v in row["goal"].items() if k != "mu_share")
            rows.append(row)
    return rows


def report_lines(state: dict) -> list[str]:
    """The markdown section for robustness.md."""
    rows, base = summarize(state), state["baseline"]
    budgets = sorted({int(b) for r in state["runs"] for b in r["curves"]["relearn"]})
    dates = sorted({r["date"] for r in state["runs"]})
    seeds = sorted({r["seed"] for r in state["runs"]})
    lines = [
        "", "## Remedies: sharpness-aware unlearning (SAM) and unlearn-noise-distill (UNDO), seed means",
        "",
        f"Command: `python benchmarks/robustness.py --remedies` ({', '.join(dates)}; seeds {seeds}; "
        f"{state.get('hardware', 'CPU')}). Plain: the world recipe (6 epochs). SAM: rho {base['sam_rho']}, "
        f"{base['sam_epochs']} epochs. UNDO: alphas {', '.join(f'{a:g}' for a in base['undo_alphas'])}, "
        f"{base['undo_epochs']:g} distillation epochs on retain + pretrain text, from the plain run (its seconds "
        f"include the plain run's). Recovery of held-out forget fact recall (0 = retain-only model under the same attack, "
        f"1 = original). Goal (issue 21): relearning recovery at {budgets[-1]} steps <= {GOAL_RECOVERY}, MU >= "
        f"{GOAL_MU_SHARE:.0%} of the target's ({base['target']['model_utility']:.3f}), FQ not below the plain "
        f"method's. Target retain fact recall {base['target']['retain_fact_recall']:.2f}.",
    ]  # fmt: skip
    if state.get("quick"):
        lines += ["", "**Smoke run (`--quick`): these numbers test the machinery, not the methods.**"]
    head = ["method", "arm", "FQ", "MU (share)", "retain recall", "forget recall",
            *(f"relearn {b}" for b in budgets), f"piggyback {budgets[-1]}", "4-bit", "seconds (x plain)", "goal"]  # fmt: skip
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        sd = r[f"relearn_{budgets[-1]}_sd"]
        cells = [r["method"], r["arm"], f"{r['forget_quality']:.3g}",
                 f"{r['model_utility']:.3f} ({r['goal']['mu_share']:.0%})", f"{r['retain_fact_recall']:.2f}",
                 f"{r['forget_fact_recall']:.2f}",
                 *(_fmt(r[f"relearn_{b}"]) for b in budgets[:-1]),
                 _fmt(r[f"relearn_{budgets[-1]}"]) + (f" ± {sd:.2f}" if sd is not None else ""),
                 _fmt(r[f"piggyback_{budgets[-1]}"]), _fmt(r["quant_4"]),
                 f"{r['seconds']:.0f} (x{r['seconds_ratio']:.2f})", "met" if r["goal"]["met"] else "not met"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


STYLE = {
    "plain": ("black", "o"),
    "sam": ("tab:blue", "s"),
    "undo-0.6": ("tab:orange", "^"),
    "undo-0.8": ("tab:red", "v"),
}


def plot(state: dict, path: Path) -> Path:
    """Relearning and Piggyback recovery curves, one panel per method and probe, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summarize(state)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    budgets = sorted({int(b) for r in state["runs"] for b in r["curves"]["relearn"]})
    fig, axes = plt.subplots(2, len(methods), figsize=(4.2 * len(methods), 6.4), sharey=True, squeeze=False)
    for col, method in enumerate(methods):
        for row_i, probe in enumerate(("relearn", "piggyback")):
            ax = axes[row_i][col]
            for r in (r for r in rows if r["method"] == method):
                color, marker = STYLE.get(r["arm"], ("gray", "x"))
                ys = [r[f"{probe}_{b}"] for b in budgets]
                errs = [r[f"{probe}_{b}_sd"] or 0.0 for b in budgets]
                ax.errorbar(budgets, [y if y is not None else float("nan") for y in ys], yerr=errs, color=color,
                            marker=marker, capsize=3, label=r["arm"])  # fmt: skip
            ax.axhline(0, color="gray", lw=0.8, ls=":")
            ax.axhline(GOAL_RECOVERY, color="green", lw=0.8, ls="--")
            ax.set_title(f"{method}: {probe}")
            ax.set_xlabel("attack steps")
            if col == 0:
                ax.set_ylabel("recovery of held-out fact recall")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Does forgetting last? Seed means ± sd (green: goal <= 0.3)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
