"""Which statistic should tell `--auto` when to stop? Traces of `--auto` runs that never stop (issue 13).

    python benchmarks/stop_study.py                   # both worlds of benchmarks/auto.py, 3 seeds (resumable)
    python benchmarks/stop_study.py --report_only     # redo the tables from the JSON

Every run is `--auto --stop_statistic auc` (ngdiff + GeN, 20 epochs, the stop rule checking once
per epoch on the answer-loss AUC, `--auto`'s statistic before this study) with the rule's decisions ignored: it never stops, so each run is the whole 20-epoch trajectory. At every
check the trace records, besides the rule's own record (the loss-AUC gap, the retain loss), what
a rule could use instead, and the quantities the rule is judged by:

- `fq`: forget quality against the retain-only reference (needs the reference; the judge),
- `tr_gap`: the signed truth-ratio gap, AUC(holdout R > forget R) - 1/2, R = P(perturbed) / P(paraphrase)
  per question (needs `holdoutNN_perturbed`, which the built-in world has and TOFU lacks),
- `tr_p`: the KS p-value between the forget and holdout truth ratios (no reference needed),
- `para_gap`: the loss-AUC gap on the paraphrased answers,
- `mu`: model utility, every `--mu_every`-th check (generation makes it the costly part).

A rule replayed on a trace picks the check it would stop at and the check whose weights it would
keep; because the checks are the same as a real run's (same seeds, once per epoch), the replayed
pick equals what the real rule would keep. Rules are chosen on world seed0-34authors and judged
on seed1-50authors, which they were not tuned on. Output: `<out>.json` (traces) and `<out>.md`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import ks_2samp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from auto import BENCH_FLAGS, MU_FLOOR, _cached_eval, _data_args, worlds  # noqa: E402

from llm_unlearn.cli.parse import parse_config  # noqa: E402
from llm_unlearn.core import stop  # noqa: E402
from llm_unlearn.data.qa import load_split  # noqa: E402
from llm_unlearn.data.world import WorldConfig, write_world  # noqa: E402
from llm_unlearn.eval.metrics import forget_quality, log_truth_ratio, truth_ratio  # noqa: E402
from llm_unlearn.eval.scoring import answer_losses, candidate_pairs, split_candidates  # noqa: E402
from llm_unlearn.eval.tofu import add_forget_quality, evaluate  # noqa: E402
from llm_unlearn.methods.common import eval_mode  # noqa: E402
from llm_unlearn.models.build import build_default_models  # noqa: E402
from llm_unlearn.pipeline.unlearn import unlearn  # noqa: E402
from llm_unlearn.runs.folder import write_json_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("forget01", "forget05", "forget10")
TUNE, JUDGE = "seed0-34authors", "seed1-50authors"


def _tr_losses(model, tokenizer, rows, settings):
    """Paraphrase loss and perturbed losses per row, in one scoring pass (the answers too, unused)."""
    questions, texts = candidate_pairs(rows)
    _, para, perturbed = split_candidates(answer_losses(model, tokenizer, questions, texts, **settings), rows)
    return para, perturbed


class Tracer:
    """Wraps `IndistinguishableStop.check`: records the extras, then always answers `continue`."""

    def __init__(self, tokenizer, data, reference, world: Path, split: str, mu_every: int):
        hold = split.replace("forget", "holdout")
        self.forget = load_split(f"{split}_perturbed", data_dir=world)
        self.holdout = load_split(f"{hold}_perturbed", data_dir=world)
        self.tokenizer, self.data, self.reference, self.mu_every = tokenizer, data, reference, mu_every
        self.ref_ratios = np.asarray(reference["metrics"]["forget_truth_ratio"]["per_sample_ratio"])
        self.trace: list[dict] = []
        self.start = time.perf_counter()
        self.extra_seconds = 0.0

    def __call__(self, rule, model, step):
        rule_start = time.perf_counter()
        original(rule, model, step)
        rule_seconds = time.perf_counter() - rule_start
        t0 = time.perf_counter()
        rec = dict(rule.history[-1])
        with eval_mode(model), torch.no_grad():
            f_para, f_pert = _tr_losses(model, self.tokenizer, self.forget, rule.settings)
            h_para, h_pert = _tr_losses(model, self.tokenizer, self.holdout, rule.settings)
        f_tr, h_tr = log_truth_ratio(f_para, f_pert), log_truth_ratio(h_para, h_pert)
        rec |= {
            "fq": forget_quality(truth_ratio(f_para, f_pert), self.ref_ratios),
            "tr_gap": stop.signed_gap(f_tr, h_tr, "auc"),
            "tr_gap_ks": stop.signed_gap(f_tr, h_tr, "ks"),
            "tr_p": float(ks_2samp(f_tr, h_tr).pvalue),
            "para_gap": stop.signed_gap(f_para, h_para, "auc"),
            "forget_tr_median": float(np.exp(np.median(f_tr))),
            "holdout_tr_median": float(np.exp(np.median(h_tr))),
        }
        if self.mu_every and len(self.trace) % self.mu_every == 0:
            result = evaluate(
                model, self.tokenizer, data_dir=self.data.data_dir, forget_split=self.data.forget_split,
                prompt_format=self.data.prompt_format, system_prompt=self.data.system_prompt, progress=False,
            )  # fmt: skip
            result = add_forget_quality(result, self.reference)
            rec |= {"mu": result["metrics"]["model_utility"]["value"],
                    "fq_full": result["metrics"]["forget_quality"]["value"]}  # fmt: skip
            model.train()
        self.extra_seconds += time.perf_counter() - t0
        rec["rule_seconds"] = rule_seconds
        # Wall seconds of the run so far, less the study's own measurements.
        rec["seconds"] = time.perf_counter() - self.start - self.extra_seconds
        self.trace.append(rec)
        return "continue"


original = stop.IndistinguishableStop.check


def trace_run(
    world: Path,
    models: dict,
    tokenizer,
    reference: dict,
    split: str,
    seed: int,
    run_dir: Path,
    mu_every: int,
    interval: int = 0,
):
    argv = ["--auto", "--model_name_or_path", str(models["target"]), "--data_dir", str(world),
            "--forget_split", split, "--seed", str(seed), "--retain_seed", str(seed),
            "--output_dir", str(run_dir), "--stop_statistic", "auc", "--stop_check_interval", str(interval),
            *BENCH_FLAGS]  # fmt: skip
    model_args, data, config, eval_args = parse_config(argv)
    tracer = Tracer(tokenizer, data, reference, world, split, mu_every)
    stop.IndistinguishableStop.check = lambda rule, model, step: tracer(rule, model, step)
    try:
        unlearn(model_args, data, config, eval_args)
    finally:
        stop.IndistinguishableStop.check = original
    return tracer.trace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "stop_study.json"))
    parser.add_argument("--size", default="default", help="world and model size (micro: a smoke run)")
    parser.add_argument("--worlds", help="comma-separated world names (default: both of the size)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--splits", default=",".join(SPLITS))
    parser.add_argument(
        "--check_interval", type=int, default=0, help="optimizer steps between checks (0: once per epoch)"
    )
    parser.add_argument("--mu_every", type=int, default=1, help="model utility every k-th check (0: never)")
    parser.add_argument("--work", default="/tmp/llm-unlearn-auto-bench")
    parser.add_argument("--report_only", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    state = json.loads(out.read_text()) if out.exists() else {"runs": []}
    if not args.report_only:
        done = {(r["world"], r["split"], r["seed"]) for r in state["runs"]}
        all_worlds = worlds(args.size)
        for name in args.worlds.split(",") if args.worlds else list(all_worlds)[:2]:  # the development worlds
            work = Path(args.work) / args.size / name
            world = work / "world"
            if not world.is_dir():
                write_world(world, WorldConfig(**all_worlds[name]))
            models = build_default_models(world, forget_splits=SPLITS, size=args.size)
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(models["target"])
            for seed in (int(s) for s in args.seeds.split(",")):
                for split in args.splits.split(","):
                    if (name, split, seed) in done:
                        continue
                    reference = _cached_eval(
                        work / f"reference-{split}.json",
                        models["retain"][split], _data_args(world, split),
                    )  # fmt: skip
                    run_dir = work / f"trace-{split}-{seed}-{time.strftime('%H%M%S')}"
                    trace = trace_run(
                        world,
                        models,
                        tokenizer,
                        reference,
                        split,
                        seed,
                        run_dir,
                        args.mu_every,
                        args.check_interval,
                    )
                    state["runs"].append({"world": name, "split": split, "seed": seed, "trace": trace,
                                          "check_interval": args.check_interval,
                                          "date": time.strftime("%Y-%m-%d")})  # fmt: skip
                    write_json_atomic(out, state)
                    best = max(trace, key=lambda c: c["fq"])
                    print(f"{name} {split} seed {seed}: {len(trace)} checks, best FQ {best['fq']:.3g} at step "
                          f"{best['step']}", flush=True)  # fmt: skip
    report(state, out.with_suffix(".md"))


# ---------------------------------------------------------------- rules replayed on a trace


def replay(
    trace: list[dict], key: str, saturated: float, tolerance: float = 0.5, patience: int = 3, guarded=False
):
    """(check it stops at, check it keeps): `IndistinguishableStop`'s decisions on the `key` gap, with
    its defaults (retain alarm at half the lead, patience 3); ties keep the earlier check, as it does.
    `guarded`: a check whose retain loss rose beyond the tolerance is never kept."""
    best = 0
    for i, c in enumerate(trace):
        eligible = not guarded or c["stop_retain_rise"] <= tolerance
        if eligible and abs(c[key]) < abs(trace[best][key]):
            best = i
        if i == 0:
            continue
        if c[key] <= 0 or c["stop_retain_rise"] > tolerance:
            return i, best
        if i - best >= patience and abs(trace[best][key]) < saturated:
            return i, best
    return len(trace) - 1, best


def replay_screened(trace: list[dict], tolerance: float = 0.5, patience: int = 3) -> tuple[int, int, int]:
    """(stop, keep, checks with truth ratios scored): the guarded truth-ratio rule with `--stop_screen`
    (stop.py): until the answer-loss gap first reaches 0 a check scores answers only, its truth-ratio
    gap is unknown, and the latest such check within tolerance is kept; if the first scored check has
    already crossed, the kept screened check is scored too and the nearer of the two kept."""
    key, best, best_gap, screening, scored = "tr_gap_ks", 0, trace[0]["tr_gap_ks"], True, 1
    for i, c in enumerate(trace[1:], 1):
        within = c["stop_retain_rise"] <= tolerance
        screening = screening and c["stop_gap"] > 0
        if screening:
            if within:
                best, best_gap = i, None
        else:
            scored += 1
            if within and best_gap is None and c[key] <= 0:
                best_gap, scored = trace[best][key], scored + 1  # the kept screened check, re-scored
            if within and (best_gap is None or abs(c[key]) < abs(best_gap)):
                best, best_gap = i, c[key]
        if not within or (not screening and c[key] <= 0):
            return i, best, scored
        if best_gap is not None and i - best >= patience and abs(best_gap) < 1.0:
            return i, best, scored
    return len(trace) - 1, best, scored


UNSCREENED = "truth-ratio KS, guarded (auto-v3, scored at every check)"
SHIPPED = "truth-ratio KS, guarded, screened (the rule now)"
RULES = {
    "loss AUC (auto-v2, the rule before)": lambda t: replay(t, "stop_gap", 0.5),
    "truth-ratio KS, unguarded": lambda t: replay(t, "tr_gap_ks", 1.0),
    "truth-ratio AUC, unguarded": lambda t: replay(t, "tr_gap", 0.5),
    UNSCREENED: lambda t: replay(t, "tr_gap_ks", 1.0, guarded=True),
    SHIPPED: lambda t: replay_screened(t)[:2],
    "truth-ratio KS, guarded, tolerance 0.4": lambda t: replay(
        t, "tr_gap_ks", 1.0, tolerance=0.4, guarded=True
    ),
    "truth-ratio KS, guarded, tolerance 0.3": lambda t: replay(
        t, "tr_gap_ks", 1.0, tolerance=0.3, guarded=True
    ),
}


def _mu_ok(run: dict, check: dict) -> bool:
    return check.get("mu", -math.inf) >= MU_FLOOR * run["trace"][0]["mu"]


def _replay_vs_real(state: dict) -> list[str]:
    """Does the replay keep what the real rule kept? Compared with benchmarks/auto.json's runs of the
    rule now (`auto`) and of the rule before screening (`auto-v3`, `auto-unscreened`)."""
    real_path = ROOT / "benchmarks" / "auto.json"
    if not real_path.is_file():
        return []
    traces = {
        (r["world"], r["split"], r["seed"]): r["trace"] for r in state["runs"] if not r.get("check_interval")
    }
    lines = [""]
    for arm, name in (("auto", SHIPPED), ("auto-unscreened", UNSCREENED), ("auto-v3", UNSCREENED)):
        real = [r for r in json.loads(real_path.read_text())["runs"] if r["arm"] == arm]
        pairs = [(r, traces[k]) for r in real if (k := (r["world"], r["split"], r["seed"])) in traces]
        same = 0
        for r, trace in pairs:
            kept = trace[RULES[name](trace)[1]]
            same += kept["step"] == r["best_step"] and math.isclose(
                kept["fq"], r["forget_quality"], rel_tol=1e-4, abs_tol=1e-9
            )
        if pairs:
            lines.append(f"- Replay vs real runs, `{arm}` ({name}): of the {len(pairs)} runs in benchmarks/auto.json with a "
                         f"trace here, the replay keeps the same step, with the same FQ (1e-4 relative), in {same}.")  # fmt: skip
    return [*lines, ""]


def _screening_summary(state: dict) -> list[str]:
    """What screening saves and whether it changes the kept check (traces checked once per epoch)."""
    runs = [r for r in state["runs"] if not r.get("check_interval")]
    same = scored = checks = 0
    for r in runs:
        stop_at, keep, n = replay_screened(r["trace"])
        same += keep == RULES[UNSCREENED](r["trace"])[1]
        scored, checks = scored + n, checks + RULES[UNSCREENED](r["trace"])[0] + 1
    return ["", f"Screening: over the {len(runs)} once-per-epoch traces, the screened rule keeps the same check as the",
            f"rule scoring truth ratios at every check in {same}, and scores truth ratios at {scored} of the {checks}",
            "checks that rule scores (the rest score the answers only).", ""]  # fmt: skip


def report(state: dict, path: Path) -> None:
    lines = ["# Stop-rule study: which statistic tracks forget quality", "",
             "Command: `python benchmarks/stop_study.py` (its docstring gives the method). Measured on the 2-core",
             "x86-64 CPU of our workplace (torch 2.13 CPU, fp32), one torch thread per run, two runs at a time,",
             f"{', '.join(sorted({r['date'] for r in state['runs']}))}. Each trace is one never-stopping `--auto` run (20 epochs, a check",
             "per epoch); each rule is replayed on every trace. FQ >= 0.05 and MU >= 0.8 x the target's count runs;",
             "the oracle is the check with the highest FQ among those with MU >= 0.8 x the target's (it needs the",
             "reference model and an evaluation per check). Rules were chosen on world seed0-34authors; seed1-50authors",
             "was not tuned on.", ""]  # fmt: skip
    if state.get("notes"):
        lines += ["## Notes", "", *(f"- {n}" for n in state["notes"]), ""]
    lines += ["| world | rule | runs | FQ >= 0.05 | FQ gm | MU >= 0.8 x target | mean steps to stop | oracle: FQ >= 0.05 |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for world, interval in sorted({(r["world"], r.get("check_interval", 0)) for r in state["runs"]}):
        runs = [r for r in state["runs"] if (r["world"], r.get("check_interval", 0)) == (world, interval)]
        label = (
            world
            if not interval
            else f"{world} ({', '.join(sorted({r['split'] for r in runs}))}, checks every {interval} steps)"
        )
        oracle = sum(max(c["fq"] for c in r["trace"] if _mu_ok(r, c)) >= 0.05 for r in runs)
        for name, rule in RULES.items():
            picks = [rule(r["trace"]) for r in runs]
            kept = [r["trace"][keep] for r, (_, keep) in zip(runs, picks)]
            fqs = [c["fq"] for c in kept]
            steps = [r["trace"][end]["step"] for r, (end, _) in zip(runs, picks)]
            gm = math.exp(statistics.fmean(math.log(max(f, 1e-300)) for f in fqs))
            mu_ok = sum(_mu_ok(r, c) for r, c in zip(runs, kept))
            lines.append(f"| {label} | {name} | {len(runs)} | {sum(f >= 0.05 for f in fqs)} | {gm:.3g} | {mu_ok} | "
                         f"{statistics.fmean(steps):.1f} | {oracle} |")  # fmt: skip
    lines += _screening_summary(state)
    lines += _replay_vs_real(state)
    lines += ["", "## Runs", "", "Per run: the check kept by the loss-AUC rule and by the rule now (step: FQ, MU/target), and the oracle's.", "",
              "| world | split | seed | loss AUC kept | truth-ratio KS guarded kept | oracle |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in state["runs"]:
        cells = []
        for name in ("loss AUC (auto-v2, the rule before)", SHIPPED):
            c = r["trace"][RULES[name](r["trace"])[1]]
            cells.append(f"{c['step']}: {c['fq']:.2g}, {c['mu'] / r['trace'][0]['mu']:.2f}")
        o = max((c for c in r["trace"] if _mu_ok(r, c)), key=lambda c: c["fq"])
        cells.append(f"{o['step']}: {o['fq']:.2g}, {o['mu'] / r['trace'][0]['mu']:.2f}")
        every = f" (every {r['check_interval']} steps)" if r.get("check_interval") else ""
        lines.append(f"| {r['world']}{every} | {r['split']} | {r['seed']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Traces",
        "",
        "Per check, `step: FQ / loss-AUC gap / truth-ratio KS gap / retain rise / MU`.",
        "",
    ]
    for r in state["runs"]:
        every = f", checks every {r['check_interval']} steps" if r.get("check_interval") else ""
        lines.append(f"**{r['world']} {r['split']} seed {r['seed']}{every}**: " + ", ".join(
            f"{c['step']}: {c['fq']:.2g}/{c['stop_gap']:+.2f}/{c['tr_gap_ks']:+.2f}/{c['stop_retain_rise']:.2f}"
            + (f"/{c['mu']:.2f}" if "mu" in c else "") for c in r["trace"]))  # fmt: skip
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
