"""Every unlearning method side by side on the built-in world, at its default settings (issue 11).

    python benchmarks/methods.py                      # the whole plan (resumable)
    python benchmarks/methods.py --plan               # list the runs, run nothing
    python benchmarks/methods.py --report_only        # redo table and plot from the JSON
    python benchmarks/methods.py --size micro --splits forget10 --seeds 0 --methods ga,npo \\
        --max_steps 2 --out /tmp/methods-smoke.json  # a smoke run of the machinery (minutes)

A method's default settings are its world recipe, `recipes/world/<method>.yaml`, run as
`llm-unlearn unlearn --config <recipe>` would run it, with the world, models, split and seed of the
plan given on top (and `--seed`/`--retain_seed` set to the plan's seed). Plan (`plan` below): every
registered method that has a world recipe, on forget10 with every seed and on forget05/forget01 with
the first; LoRA (`--use_lora true`, at `LORA_LEARNING_RATE` where given) for graddiff, npo and ngdiff; and graddiff and npo under each of
the three combinations (sum, normalized, pcgrad), so that combinations can be compared on one axis.

One record per run in `<out>.json`: method, split, seed, lora, combine, forget_quality,
model_utility, forget_rouge_l, retain_fact_recall, target_model_utility, plus forget_fact_recall,
the recipe and the seconds the run took. Each finished run is appended at once (several workers
with disjoint --seeds/--splits may share one file), and a rerun skips the runs already there.
Writes `<out>.md` (seed-mean table with the issue's two checks on forget10: model utility >= 80%
of the target's, forget quality >= 10x the target's) and `<out>.png` (forget quality vs model
utility, every setting).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import _study  # benchmarks/_study.py: this script's folder is on sys.path

from llm_unlearn.cli.parse import parse_config
from llm_unlearn.data.world import WORLD_SIZES, WorldConfig, write_world
from llm_unlearn.eval.args import EvalArgs
from llm_unlearn.methods import METHODS
from llm_unlearn.models.build import build_default_models
from llm_unlearn.pipeline.evaluate import evaluate_path
from llm_unlearn.pipeline.unlearn import unlearn

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "world"
KEYS = ("forget_quality", "model_utility", "forget_rouge_l", "retain_fact_recall", "forget_fact_recall")
LORA_METHODS = ("graddiff", "npo", "ngdiff")
# LoRA moves fewer weights and needs a larger AdamW step than the recipe's full fine-tuning one.
# Chosen on forget10 seed 0 like the recipes: graddiff 2e-4 (no forgetting), 5e-4, 1e-3, 2e-3 (MU 0.28);
# npo 2e-4 (no forgetting), 5e-4, 1e-3 (MU 0.56). ngdiff keeps its recipe's SGD step (it forgets).
LORA_LEARNING_RATE = {"graddiff": 1e-3, "npo": 5e-4}
COMBINE_METHODS = ("graddiff", "npo")
COMBINES = ("sum", "normalized", "pcgrad")
MU_FLOOR, FQ_FACTOR = 0.8, 10.0  # the checks: MU >= 0.8 x target's, FQ >= 10 x target's


def plan(methods: list[str], seeds: tuple[int, ...], splits: tuple[str, ...]) -> list[dict]:
    """Runs as dicts (method, split, seed, lora, combine); combine None = the method's own."""
    runs = []
    for split in splits:
        for seed in seeds if split == "forget10" else seeds[:1]:
            for method in methods:
                runs.append(dict(method=method, split=split, seed=seed, lora=False, combine=None))
                if method in LORA_METHODS:
                    runs.append(dict(method=method, split=split, seed=seed, lora=True, combine=None))
                if method in COMBINE_METHODS:
                    own = METHODS[method].combine
                    runs += [dict(method=method, split=split, seed=seed, lora=False, combine=c)
                             for c in COMBINES if c != own]  # fmt: skip
    return runs


def run_key(r: dict) -> tuple:
    return (r["method"], r["split"], r["seed"], r["lora"], r["combine"] or METHODS[r["method"]].combine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="default", choices=sorted(WORLD_SIZES))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "methods.json"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--splits", default="forget10,forget05,forget01")
    parser.add_argument(
        "--methods", help="comma-separated subset (default: every method with a world recipe)"
    )
    parser.add_argument("--max_steps", type=int, help="cap every run at this many steps (smoke runs only)")
    _study.add_flags(parser)
    args = parser.parse_args()
    out = Path(args.out)
    with_recipe = sorted(m for m in METHODS if (RECIPES / f"{m}.yaml").is_file())
    methods = args.methods.split(",") if args.methods else with_recipe
    missing = sorted(set(methods) - set(with_recipe))
    if missing:
        raise SystemExit(f"no world recipe for {', '.join(missing)}: write recipes/world/<method>.yaml first")
    if not args.methods and set(METHODS) - set(with_recipe):
        print(f"left out (no world recipe): {', '.join(sorted(set(METHODS) - set(with_recipe)))}")
    runs = plan(methods, tuple(int(s) for s in args.seeds.split(",")), tuple(args.splits.split(",")))
    _study.run_study(
        runs,
        out,
        run_key,
        args,
        lambda todo: execute(todo, out, args),
        lambda state: write_outputs(state, out, args),
    )


def execute(todo: list[dict], out: Path, args) -> None:
    """Build (or reuse) the world's models, evaluate target and references once per split, run `todo`."""
    work = Path(tempfile.mkdtemp(prefix="methods-bench-"))
    world = write_world(work / "world", WorldConfig(**WORLD_SIZES[args.size]))
    splits = sorted({r["split"] for r in todo})
    models = build_default_models(world, forget_splits=tuple(splits), size=args.size)
    references, baseline = {}, {}
    for split in splits:
        data = parse_config(["--data_dir", str(world), "--forget_split", split])[1]
        references[split] = evaluate_path(str(models["retain"][split]), data, EvalArgs())
        target = evaluate_path(str(models["target"]), data, EvalArgs(), reference=references[split])
        baseline[split] = {
            "target": {k: target["metrics"][k]["value"] for k in KEYS},
            "retain": {k: references[split]["metrics"][k]["value"] for k in KEYS if k != "forget_quality"},
        }
    for i, r in enumerate(todo):
        recipe = RECIPES / f"{r['method']}.yaml"
        argv = ["--config", str(recipe), "--model_name_or_path", str(models["target"]), "--data_dir", str(world),
                "--forget_split", r["split"], "--output_dir", str(work / f"run-{i}"), "--seed", str(r["seed"]),
                "--retain_seed", str(r["seed"]), "--save_strategy", "no", "--disable_tqdm", "true",
                "--do_final_eval", "false", "--report_to", "none", "--use_lora", str(r["lora"]).lower(),
                "--reference_model", str(models["retain"][r["split"]])]  # fmt: skip
        if r["combine"]:
            argv += ["--combine", r["combine"]]
        if r["lora"] and r["method"] in LORA_LEARNING_RATE:
            argv += ["--learning_rate", str(LORA_LEARNING_RATE[r["method"]])]
        if args.max_steps:
            argv += ["--max_steps", str(args.max_steps)]
        model_args, data, config, eval_args = parse_config(argv)
        start = time.perf_counter()
        run_dir = unlearn(model_args, data, config, eval_args)
        seconds = round(time.perf_counter() - start, 1)
        result = evaluate_path(str(run_dir), data, EvalArgs(), reference=references[r["split"]])
        record = {
            **r,
            "combine": config.combine,
            **{k: result["metrics"][k]["value"] for k in KEYS},
            "target_model_utility": baseline[r["split"]]["target"]["model_utility"],
            "target_forget_quality": baseline[r["split"]]["target"]["forget_quality"],
            "recipe": str(recipe.relative_to(ROOT)),
            "max_steps": args.max_steps,
            "seconds": seconds,
        }
        _study.append(out, [record], baseline, size=args.size)
        print(
            f"[{i + 1}/{len(todo)}] {r['method']:<9} {r['split']} seed {r['seed']} lora {r['lora']!s:<5} "
            f"{config.combine:<10} FQ {record['forget_quality']:.3g} MU {record['model_utility']:.3f} ({seconds} s)",
            flush=True,
        )


def label(r: dict) -> str:
    """A setting's name: the method, then what differs from its recipe (LoRA, another combination)."""
    extra = ["lora"] if r["lora"] else []
    if r["combine"] != METHODS[r["method"]].combine:
        extra.append(r["combine"])
    return r["method"] + (f" ({', '.join(extra)})" if extra else "")


def seed_means(runs: list[dict], split: str) -> list[dict]:
    """One row per setting on `split`: seed means (and sd) of the metrics, FQ's geometric mean too."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        if r["split"] == split:
            groups.setdefault(label(r), []).append(r)
    rows = []
    for name, rs in sorted(groups.items()):
        row = {"setting": name, "n_seeds": len(rs)}
        for k in KEYS:
            values = [x[k] for x in rs]
            row[k] = statistics.fmean(values)
            row[k + "_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        row["forget_quality_gmean"] = math.exp(
            statistics.fmean(math.log(max(x["forget_quality"], 1e-300)) for x in rs)
        )
        rows.append(row)
    return rows


def write_outputs(state: dict, out: Path, args) -> None:
    runs = state["runs"]
    size = state.get("size", args.size)
    smoke = any(r.get("max_steps") for r in runs)
    lines = [
        f"# Unlearning methods side by side on the built-in world ({size})",
        "",
        "Command: `python benchmarks/methods.py` (resumable; its docstring gives the plan). Every method at",
        "its world recipe's settings (`recipes/world/<method>.yaml`); final weights; FQ = forget quality (KS",
        "p-value against the retain-only reference), MU = model utility, mean +- sd over seeds.",
    ]
    if smoke:
        lines += ["", "**Smoke run (`--max_steps`): these numbers test the machinery, not the methods.**"]
    for split in ("forget10", "forget05", "forget01"):
        rows = seed_means(runs, split)
        if not rows:
            continue
        base = state["baseline"][split]
        target_mu, target_fq = base["target"]["model_utility"], base["target"]["forget_quality"]
        lines += [
            "",
            f"## {split}",
            "",
            f"Target: FQ {target_fq:.3g}, MU {target_mu:.3f}, forget ROUGE-L {base['target']['forget_rouge_l']:.3f}, "
            f"retain fact recall {base['target']['retain_fact_recall']:.2f}. Retain-only reference: MU "
            f"{base['retain']['model_utility']:.3f}, retain fact recall {base['retain']['retain_fact_recall']:.2f}.",
            "",
            "| setting | seeds | FQ | FQ/target | MU | MU/target | forget ROUGE-L | retain fact recall | checks |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            keeps = r["model_utility"] >= MU_FLOOR * target_mu
            forgets = r["forget_quality"] >= FQ_FACTOR * target_fq
            checks = (
                "pass"
                if keeps and forgets
                else ", ".join(["collapses (MU)"] * (not keeps) + ["does not forget (FQ)"] * (not forgets))
            )
            lines.append(
                f"| {r['setting']} | {r['n_seeds']} | {r['forget_quality']:.3g} +- {r['forget_quality_sd']:.2g} | "
                f"{_ratio(r['forget_quality'], target_fq)} | {r['model_utility']:.3f} +- "
                f"{r['model_utility_sd']:.3f} | {_ratio(r['model_utility'], target_mu)} | {r['forget_rouge_l']:.3f} | "
                f"{r['retain_fact_recall']:.2f} | {checks if split == 'forget10' else ''} |"
            )
        if split == "forget10":
            png = out.with_suffix(".png")
            plot(rows, base, png, f"{split} ({size})")
            lines += ["", f"Checks (forget10 seed means): MU >= {MU_FLOOR:g} x target's, FQ >= {FQ_FACTOR:g} x target's.",
                      "", f"![forget quality vs model utility]({png.name})"]  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')}")


def _ratio(value: float, target: float) -> str:
    return f"{value / target:.3g}" if target > 0 else "n/a"


def plot(rows: list[dict], base: dict, path: Path, title: str) -> None:
    """Forget quality (log) vs model utility: one marker per setting, the target and the two check lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = "osD^vP*Xh<>p"
    colors = plt.get_cmap("tab20").colors
    for i, r in enumerate(rows):
        ax.errorbar(r["forget_quality"], r["model_utility"], yerr=r["model_utility_sd"], fmt=markers[i % len(markers)],
                    color=colors[i % len(colors)], label=r["setting"], capsize=2)  # fmt: skip
    target = base["target"]
    ax.scatter(
        [target["forget_quality"]],
        [target["model_utility"]],
        marker="*",
        s=200,
        color="black",
        label="target",
    )
    ax.axhline(MU_FLOOR * target["model_utility"], color="grey", ls="--", lw=0.8)
    ax.axvline(FQ_FACTOR * target["forget_quality"], color="grey", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("forget quality (higher is better)")
    ax.set_ylabel("model utility (higher is better)")
    ax.set_title(f"Unlearning methods at their defaults, {title}")
    ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
