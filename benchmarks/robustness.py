"""How cheaply does forgotten knowledge come back? Relearning, Piggyback and quantization probes on the
built-in world, for graddiff, ngdiff, npo and gc (issue 12, section 2).

    python benchmarks/robustness.py                    # default world: writes benchmarks/robustness.{json,md}
    python benchmarks/robustness.py --report_only      # redo the table from the JSON
    python benchmarks/robustness.py --size micro --quick --out /tmp/robustness-smoke.json   # smoke run (~1 min)
    python benchmarks/robustness.py --remedies         # plain vs SAM vs UNDO, 3 seeds (benchmarks/_remedies.py)
    python benchmarks/robustness.py --remedies --plan  # what is recorded and what is left (it resumes)

Each method runs its world recipe (`recipes/world/<method>.yaml`, as `llm-unlearn unlearn --config`
would, from the world's target model on forget10; methods without a recipe are listed as skipped),
then `llm_unlearn.probes.run_probes` probes the result against the target (original) and the
retain-only reference, whose own probe results are computed once and shared by every method:
LoRA relearning and Piggyback masking on the attack half A of the forget set, scored on the held-out
half E after each step budget, and RTN quantization (8 and 4 bits, group size 128) scored on the whole
forget set with membership inference against holdout10. Recovery = (m(unlearned + probe) - m(retain +
probe)) / (m(original) - m(retain)): 0 = no more than the probe teaches a model that never saw the
forget set, 1 = back to the original.

`<out>.json`: {size, command, settings, skipped, seconds, rows}, one row per (method, probe, budget or
bits, metric): value, recovery (null with a note where the original and the reference agree), and
for the yardsticks method "target" (quantization only) and "retain" (recovery null). `<out>.md`: tables.
`--quick` (smoke runs only): unlearning capped at 2 steps, budgets 0,2, short generations.
`--remedies` writes the `remedies` section of the same JSON (run by run, resumable), its table in
`<out>.md` and the relearning curves in `<out>.png`; the single-seed rows above are kept.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import _remedies  # noqa: E402  (benchmarks/: this script's folder is on sys.path)
import _study  # noqa: E402

from llm_unlearn.cli.parse import parse_config
from llm_unlearn.data.world import WORLD_SIZES, WorldConfig, write_world
from llm_unlearn.methods import METHODS
from llm_unlearn.models.build import build_default_models
from llm_unlearn.pipeline.unlearn import unlearn
from llm_unlearn.probes import EvalSettings, ProbeSettings, run_probes
from llm_unlearn.runs.folder import locked, write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "world"
METHOD_NAMES = ("graddiff", "ngdiff", "npo", "gc")
FORGET_SPLIT = "forget10"
TABLE_METRICS = ("forget_prob", "forget_rouge_l", "forget_fact_recall", "forget_truth_ratio")
QUANT_METRICS = (*TABLE_METRICS, "mia_auc_loss", "mia_auc_min_k", "privleak")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="default", choices=sorted(WORLD_SIZES))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "robustness.json"))
    parser.add_argument("--methods", default=",".join(METHOD_NAMES), help="comma-separated methods")
    parser.add_argument("--budgets", default="0,10,25,50,100")
    parser.add_argument("--relearn_lr", type=float, default=ProbeSettings.relearn_lr)
    parser.add_argument("--piggyback_lr", type=float, default=ProbeSettings.piggyback_lr)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 unlearning steps, budgets 0,2")
    parser.add_argument(
        "--remedies", action="store_true", help="plain vs SAM vs UNDO over seeds (see _remedies.py)"
    )
    parser.add_argument("--seeds", default=",".join(map(str, _remedies.SEEDS)), help="--remedies: seeds")
    parser.add_argument("--arms", default=",".join(_remedies.ARMS), help="--remedies: arms")
    parser.add_argument("--work", default="/tmp/llm-unlearn-remedies", help="--remedies: run folders")
    parser.add_argument(
        "--plan", action="store_true", help="--remedies: list the runs still to do, run nothing"
    )
    parser.add_argument("--report_only", action="store_true", help="rewrite the table from the JSON")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    out = Path(args.out)
    if args.remedies:
        remedies(args, out)
    elif not args.report_only:
        result = run(args)
        with locked(out):  # keep the remedies section another process may be writing
            kept = {k: v for k, v in _read(out).items() if k == _remedies.SECTION}
            write_json_atomic(out, result | kept)
    write_report(out)
    return out


def _read(out: Path) -> dict:
    return json.loads(out.read_text()) if out.exists() else {}


def remedies(args, out: Path) -> None:
    methods = (
        [m for m in args.methods.split(",") if m]
        if args.methods != ",".join(METHOD_NAMES)
        else list(_remedies.METHODS)
    )
    missing = [m for m in methods if not (RECIPES / f"{m}.yaml").is_file()]
    if missing:
        raise SystemExit(f"no world recipe for {', '.join(missing)}: write recipes/world/<method>.yaml first")
    unknown_arms = sorted(set(args.arms.split(",")) - set(_remedies.ARMS))
    if unknown_arms:
        raise SystemExit(f"unknown arm(s) {', '.join(unknown_arms)}; choose from {', '.join(_remedies.ARMS)}")
    seeds = tuple(int(s) for s in args.seeds.split(","))[: 1 if args.quick else None]
    budgets = (0, 2) if args.quick else tuple(int(b) for b in args.budgets.split(","))
    planned = _remedies.plan(methods, seeds, tuple(args.arms.split(",")))

    def execute(todo: list[dict]) -> None:
        work = Path(args.work) / args.size
        world = work / "world"
        if not world.is_dir():
            write_world(world, WorldConfig(**WORLD_SIZES[args.size]))
        models = build_default_models(world, forget_splits=(FORGET_SPLIT,), size=args.size)
        _remedies.execute(todo, out, args, world, models, RECIPES, budgets)

    _study.run_study(
        planned, out, _remedies.key, args, execute, lambda state: None, section=_remedies.SECTION
    )


def run(args) -> dict:
    start = time.perf_counter()
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; see `llm-unlearn ls`")
    runnable = [m for m in methods if (RECIPES / f"{m}.yaml").is_file()]
    skipped = {m: f"no recipes/world/{m}.yaml" for m in methods if m not in runnable}
    budgets = (0, 2) if args.quick else tuple(int(b) for b in args.budgets.split(","))
    with tempfile.TemporaryDirectory(prefix="robustness-") as tmp:
        return _run_in(Path(tmp), args, runnable, skipped, budgets, start)


def _run_in(work: Path, args, runnable: list[str], skipped: dict, budgets: tuple, start: float) -> dict:
    world = write_world(work / "world", WorldConfig(**WORLD_SIZES[args.size]))
    models = build_default_models(world, forget_splits=(FORGET_SPLIT,), size=args.size)
    target, retain = str(models["target"]), str(models["retain"][FORGET_SPLIT])
    settings = ProbeSettings(relearn_lr=args.relearn_lr, piggyback_lr=args.piggyback_lr)
    reuse: dict = {}
    rows: list[dict] = []
    for i, method in enumerate(runnable):
        argv = ["--config", str(RECIPES / f"{method}.yaml"), "--model_name_or_path", target, "--data_dir", str(world),
                "--forget_split", FORGET_SPLIT, "--output_dir", str(work / method), "--reference_model", retain,
                "--save_strategy", "no", "--disable_tqdm", "true", "--do_final_eval", "false", "--report_to", "none"]  # fmt: skip
        if args.quick:
            argv += ["--max_steps", "2"]
        model_args, data, config, eval_args = parse_config(argv)
        t = time.perf_counter()
        run_dir = unlearn(model_args, data, config, eval_args)
        unlearn_seconds = time.perf_counter() - t
        eval_settings = EvalSettings(prompt_format=data.prompt_format, system_prompt=data.system_prompt,
                                     max_length=data.max_length, max_new_tokens=16 if args.quick else 64)  # fmt: skip
        t = time.perf_counter()
        result = run_probes(run_dir, original_model=target, reference_model=retain, data_dir=str(world),
                            forget_split=FORGET_SPLIT, budgets=budgets, settings=settings,
                            eval_settings=eval_settings, out=run_dir / "probe.json", reuse=reuse)  # fmt: skip
        rows += [{"method": method, **row} for row in result["rows"]]
        if i == 0:
            rows += yardstick_rows(result)
        print(f"[{i + 1}/{len(runnable)}] {method}: unlearned in {unlearn_seconds:.0f} s, "
              f"probed in {time.perf_counter() - t:.0f} s", flush=True)  # fmt: skip
    return {
        "size": args.size,
        "command": shlex.join(["python", "benchmarks/robustness.py", *args.argv]),
        "quick": args.quick,
        "forget_split": FORGET_SPLIT,
        "budgets": list(budgets),
        "settings": {
            "probe": vars(settings) | {"piggyback_modules": list(settings.piggyback_modules)},
            "heldout_fraction": 0.5,
            "split_by": "question",
            "quant_bits": [8, 4],
            "group_size": 128,
        },  # fmt: skip
        "skipped": skipped,
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }


def yardstick_rows(result: dict) -> list[dict]:
    """The retain-only reference under each probe, and the target and reference under quantization."""
    rows = []
    for probe in ("relearn", "piggyback"):
        for point in result[probe]["reference"]:
            for name, metric in point["metrics"].items():
                rows.append(_plain("retain", probe, point["budget"], None, name, metric))
    for model, role in (("target", "original"), ("retain", "reference")):
        for bits, variant in result["quant"][role].items():
            for name, metric in variant["metrics"].items():
                rows.append(_plain(model, "quant", None, bits, name, metric))
    return rows


def _plain(method: str, probe: str, budget, bits, name: str, metric: dict) -> dict:
    return {"method": method, "probe": probe, "budget": budget, "bits": bits, "metric": name,
            "direction": metric["direction"], "value": metric["value"], "recovery": None,
            "recovery_note": "yardstick"}  # fmt: skip


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    value = f"{row['value']:.3g}"
    return value if row["recovery"] is None else f"{value} ({row['recovery']:+.2f})"


def write_report(out: Path) -> Path:
    state = _read(out)
    if "rows" not in state:  # only the remedies study has run
        state = {"rows": [], "size": state.get(_remedies.SECTION, {}).get("size", "?"), "forget_split": FORGET_SPLIT,
                 "command": "", "seconds": 0, "quick": False, "skipped": {}, "budgets": [],
                 "settings": {"probe": vars(ProbeSettings()), "group_size": 128}}  # fmt: skip
    rows = state["rows"]
    index = {(r["method"], r["probe"], r["budget"], r["bits"], r["metric"]): r for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] not in ("target", "retain")))
    lines = [
        f"# Residual knowledge on the built-in world ({state['size']}, {state['forget_split']})",
        "",
        f"Command: `{state['command']}` ({state['seconds']:.0f} s). Each method at its world recipe; probes from",
        "`llm-unlearn probe` (`llm_unlearn/probes/`). Cells: value (recovery), recovery = (m(unlearned + probe) -",
        "m(retain + probe)) / (m(original) - m(retain)); 0 = what the probe also gives the retain-only model, 1 = the",
        "original; blank recovery where original and retain differ by < 1e-3.",
    ]
    if state["quick"]:
        lines += ["", "**Smoke run (`--quick`): these numbers test the machinery, not the methods.**"]
    if state.get("note"):
        lines += ["", f"**{state['note']}**"]
    if state["skipped"]:
        lines += ["", "Skipped: " + ", ".join(f"{m} ({why})" for m, why in state["skipped"].items()) + "."]
    settings = state["settings"]["probe"]
    for probe, what in (
        ("relearn", f"LoRA relearning on A (r {settings['lora_r']}, AdamW lr {settings['relearn_lr']:g}, "
                    f"batch {settings['batch_size']}), scored on E"),
        ("piggyback", f"Piggyback mask on the MLP weights (Adam lr {settings['piggyback_lr']:g}, scores 1e-2, "
                      f"threshold 5e-3), scored on E"),
    ):  # fmt: skip
        budgets = state["budgets"]
        lines += ["", f"## {probe}: {what}", "", "| method | metric | " + " | ".join(f"{b} steps" for b in budgets) + " |",
                  "|---|---|" + "---|" * len(budgets)]  # fmt: skip
        for method in (*methods, "retain"):
            for metric in TABLE_METRICS:
                cells = [_cell(index.get((method, probe, b, None, metric))) for b in budgets]
                if any(cells):
                    lines.append(f"| {method} | {metric} | " + " | ".join(cells) + " |")
    bits = list(dict.fromkeys(r["bits"] for r in rows if r["probe"] == "quant"))
    lines += ["", f"## quant: RTN weight quantization (group {state['settings']['group_size']}), whole forget set, "
              "MIA against holdout10", "", "| model | metric | " + " | ".join(f"{b}-bit" for b in bits) + " |",
              "|---|---|" + "---|" * len(bits)]  # fmt: skip
    for method in ("target", *methods, "retain"):
        for metric in QUANT_METRICS:
            cells = [_cell(index.get((method, "quant", None, b, metric))) for b in bits]
            if any(cells):
                lines.append(f"| {method} | {metric} | " + " | ".join(cells) + " |")
    remedy_state = _study.read(out, _remedies.SECTION)
    if remedy_state["runs"]:
        lines += _remedies.report_lines(remedy_state)
        print(f"wrote {_remedies.plot(remedy_state, out.with_suffix('.png'))}")
    path = write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
