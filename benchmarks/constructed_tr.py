"""Does the constructed truth ratio decide as the real one does? (issue 22, item 4)

    python benchmarks/constructed_tr.py                      # default world seed 0, forget01/05/10, seeds 0,1
    python benchmarks/constructed_tr.py --worlds seed0-34authors,seed1-50authors --seeds 0,1,2
    python benchmarks/constructed_tr.py --report_only        # redo the table from the JSON

`--stop_statistic truth_ratio_constructed` (data/constructed.py) replaces the written perturbed
answers by other retain authors' answers to the most similar question, and the paraphrase by the
answer itself where the holdout has no paraphrase (TOFU). The built-in world has the real ones, so
both can be computed at the same checks of the same runs, and only the statistic differs.

Every run is `--auto --stop_statistic truth_ratio --stop_screen false` on a default-size world
(`benchmarks/auto.py`'s: seed0-34authors, the default, and seed1-50authors), its decisions ignored (as in `benchmarks/stop_study.py`: it never stops, so the run is
the whole 20-epoch trajectory). At every check the trace records the rule's own record (the real
truth-ratio KS gap `stop_gap`, the retain rise) and, on the same weights, the constructed gaps:

- `gap_constructed`: what the rule computes on a holdout without perturbed answers: correct side the
  answer, wrong side 5 constructed answers, on both the forget and the holdout side,
- `gap_constructed_para`: the same wrong answers against the written paraphrase (diagnostic: which
  of the two substitutions moves the gap).

The guarded rule (`stop_study.replay`: crossing, retain alarm at half the lead, patience 3; a check
beyond the tolerance is never kept) is replayed on each gap; the report counts runs where the
constructed gap stops and keeps the same check as the real one, and the correlation of the gaps
over all checks. Output: `<out>.json` (traces) and `<out>.md`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from auto import BENCH_FLAGS, worlds  # noqa: E402
from stop_study import replay  # noqa: E402

from llm_unlearn.cli.parse import parse_config  # noqa: E402
from llm_unlearn.core import stop  # noqa: E402
from llm_unlearn.data.constructed import with_constructed  # noqa: E402
from llm_unlearn.data.qa import load_split, paired_split  # noqa: E402
from llm_unlearn.data.world import WorldConfig, write_world  # noqa: E402
from llm_unlearn.eval.metrics import log_truth_ratio  # noqa: E402
from llm_unlearn.eval.scoring import answer_losses, candidate_pairs, split_candidates  # noqa: E402
from llm_unlearn.methods.common import eval_mode  # noqa: E402
from llm_unlearn.models.build import build_default_models  # noqa: E402
from llm_unlearn.pipeline.unlearn import unlearn  # noqa: E402
from llm_unlearn.runs.folder import write_json_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("forget01", "forget05", "forget10")
original = stop.IndistinguishableStop.check


def _rows(world: Path, split: str, retain: list[dict], seed: int) -> list[dict]:
    """Constructed wrong answers (as the rule builds them: from the base split, answer side) with the
    written paraphrase alongside, so one scoring pass gives both variants."""
    base = load_split(split, data_dir=world)
    para = {r["question"]: r["paraphrased_answer"] for r in load_split(f"{split}_perturbed", data_dir=world)}
    built = with_constructed(base, retain, paraphrase=False, seed=seed)
    return [dict(r, paraphrased_answer=para[r["question"]]) for r in built]


class Tracer:
    """Wraps `IndistinguishableStop.check`: the rule's record plus the constructed gaps; always `continue`."""

    def __init__(self, world: Path, split: str, seed: int, tokenizer):
        retain = load_split(paired_split(split, "retain"), data_dir=world)  # the pool the rule uses
        self.forget = _rows(world, split, retain, seed)
        self.holdout = _rows(world, split.replace("forget", "holdout"), retain, seed)
        self.tokenizer, self.trace = tokenizer, []

    def _log_r(self, model, rows, settings):
        questions, texts = candidate_pairs(rows)
        answer, para, pert = split_candidates(
            answer_losses(model, self.tokenizer, questions, texts, **settings), rows
        )
        return log_truth_ratio(answer, pert), log_truth_ratio(para, pert)

    def __call__(self, rule, model, step):
        original(rule, model, step)
        rec = dict(rule.history[-1])
        with eval_mode(model), torch.no_grad():
            f_a, f_p = self._log_r(model, self.forget, rule.settings)
            h_a, h_p = self._log_r(model, self.holdout, rule.settings)
        rec |= {
            "gap_constructed": stop.signed_gap(f_a, h_a, "truth_ratio_constructed"),
            "gap_constructed_para": stop.signed_gap(f_p, h_p, "truth_ratio_constructed"),
        }
        self.trace.append(rec)
        return "continue"


def trace_run(world: Path, target: Path, tokenizer, split: str, seed: int, run_dir: Path) -> list[dict]:
    argv = ["--auto", "--model_name_or_path", str(target), "--data_dir", str(world), "--forget_split", split,
            "--seed", str(seed), "--retain_seed", str(seed), "--output_dir", str(run_dir),
            "--stop_statistic", "truth_ratio", "--stop_screen", "false", *BENCH_FLAGS]  # fmt: skip
    model_args, data, config, eval_args = parse_config(argv)
    tracer = Tracer(world, split, seed, tokenizer)
    stop.IndistinguishableStop.check = lambda rule, model, step: tracer(rule, model, step)
    try:
        unlearn(model_args, data, config, eval_args)
    finally:
        stop.IndistinguishableStop.check = original
    return tracer.trace


def _hardware() -> str:
    from llm_unlearn.bench.hardware import device_name

    return f"{device_name()}, torch {torch.__version__}, one torch thread"


def report(state: dict, path: Path) -> dict:
    """Per run: the stop and kept steps under each gap; overall: agreement counts and gap correlations."""
    rows, summary = [], {}
    real_all, keys = [], ("gap_constructed", "gap_constructed_para")
    pooled = {k: [] for k in keys}
    agree = {k: {"stop": 0, "keep": 0, "both": 0, "stop_within_1": 0, "keep_within_1": 0} for k in keys}
    for run in state["runs"]:
        t = run["trace"]
        real = replay(t, "stop_gap", 1.0, guarded=True)
        line = {"world": run["world"], "split": run["split"], "seed": run["seed"], "checks": len(t),
                "real": [t[real[0]]["step"], t[real[1]]["step"]], "real_gap_at_keep": t[real[1]]["stop_gap"]}  # fmt: skip
        real_all += [c["stop_gap"] for c in t]
        for k in keys:
            got = replay(t, k, 1.0, guarded=True)
            line[k] = [t[got[0]]["step"], t[got[1]]["step"]]
            # How far the constructed pick is from indistinguishable by the real statistic.
            line[f"real_gap_at_keep_{k}"] = t[got[1]]["stop_gap"]
            agree[k]["stop"] += got[0] == real[0]
            agree[k]["keep"] += got[1] == real[1]
            agree[k]["both"] += got == real
            agree[k]["stop_within_1"] += abs(got[0] - real[0]) <= 1  # checks apart (one per epoch)
            agree[k]["keep_within_1"] += abs(got[1] - real[1]) <= 1
            pooled[k] += [c[k] for c in t]
            r = pearsonr([c["stop_gap"] for c in t], [c[k] for c in t])
            line[f"pearson_{k}"] = float(r.statistic) if np.isfinite(r.statistic) else None
        rows.append(line)
    for k in keys:
        summary[k] = dict(
            agree[k], runs=len(rows),
            pearson=float(pearsonr(real_all, pooled[k]).statistic) if len(real_all) > 2 else None,
            spearman=float(spearmanr(real_all, pooled[k]).statistic) if len(real_all) > 2 else None,
            mean_abs_diff=float(np.mean(np.abs(np.subtract(real_all, pooled[k])))) if real_all else None,
            mean_abs_real_gap_kept=float(np.mean([abs(r[f"real_gap_at_keep_{k}"]) for r in rows])) if rows else None,
            mean_abs_real_gap_kept_by_real=float(np.mean([abs(r["real_gap_at_keep"]) for r in rows])) if rows else None,
        )  # fmt: skip
    state["summary"] = summary
    state["per_run"] = rows
    lines = [
        "# Constructed vs real truth ratio: same decisions?",
        "",
        f"Command: `{state['command']}`. Date: {state['date']}. Hardware: {state['hardware']}, sharing the",
        "machine with another benchmark. Script docstring: the method.",
        "",
        "Each run is one never-stopping `--auto --stop_statistic truth_ratio --stop_screen false` trajectory",
        "(20 epochs, a check per epoch) on the default-size worlds of benchmarks/auto.py; at every check both the real",
        "truth-ratio KS gap (written paraphrase and perturbed answers) and the constructed one",
        "(`truth_ratio_constructed`, what `--stop_statistic auto` uses where the holdout has no perturbed",
        "answers: the answer against 5 other retain authors' answers to the most similar question, on both",
        "sides) are computed on the same weights. The guarded rule is replayed on each gap.",
        "",
        "Columns: the step each gap's replayed rule stops at and keeps; the real gap at the kept check (0:",
        "indistinguishable by the real statistic); r: Pearson correlation of the two gaps over the run's checks.",
        "",
        "| world | split | seed | checks | real: stop / keep step | real gap kept | constructed: stop / keep "
        "| real gap at its keep | r | paraphrase vs constructed: stop / keep | real gap at its keep | r |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, p = r["gap_constructed"], r["gap_constructed_para"]
        pc, pp = r["pearson_gap_constructed"], r["pearson_gap_constructed_para"]
        gc, gp = r["real_gap_at_keep_gap_constructed"], r["real_gap_at_keep_gap_constructed_para"]
        lines.append(
            f"| {r['world']} | {r['split']} | {r['seed']} | {r['checks']} | {r['real'][0]} / {r['real'][1]} | "
            f"{r['real_gap_at_keep']:+.3f} | {c[0]} / {c[1]} | {gc:+.3f} | {'n/a' if pc is None else f'{pc:.3f}'} | "
            f"{p[0]} / {p[1]} | {gp:+.3f} | {'n/a' if pp is None else f'{pp:.3f}'} |"
        )
    lines.append("")
    for k, name in (("gap_constructed", "constructed (answer vs constructed)"),
                    ("gap_constructed_para", "diagnostic (written paraphrase vs constructed)")):  # fmt: skip
        s = summary[k]
        if not s["runs"]:
            continue
        lines.append(
            f"- {name}: same stop check in {s['stop']} of {s['runs']} runs, same kept check in {s['keep']}, "
            f"both in {s['both']}; within one check (epoch): stop {s['stop_within_1']}, keep {s['keep_within_1']}; gaps over all checks: Pearson {s['pearson']:.3f}, Spearman {s['spearman']:.3f}, "
            f"mean |difference| {s['mean_abs_diff']:.3f}; mean |real gap| at the kept check {s['mean_abs_real_gap_kept']:.3f} "
            f"(the real statistic's own pick: {s['mean_abs_real_gap_kept_by_real']:.3f})."
        )

    def first_at_or_below_0(trace, key):
        return next((i for i, c in enumerate(trace) if c[key] <= 0), len(trace))

    screen_ok = sum(
        first_at_or_below_0(run["trace"], "stop_gap_loss_auc")
        <= first_at_or_below_0(run["trace"], "gap_constructed")
        for run in state["runs"]
    )
    summary["screening_valid_runs"] = screen_ok
    differ = [
        (r["gap_constructed"][1], r["real"][1]) for r in rows if r["gap_constructed"][1] != r["real"][1]
    ]
    summary["keeps_differ"] = len(differ)
    summary["constructed_keeps_earlier"] = sum(c < k for c, k in differ)
    first = {k: np.mean([run["trace"][0][k] for run in state["runs"]]) for k in ("stop_gap", *keys)}
    lines += [
        "",
        f"- Before training (first check) the mean gap is {first['stop_gap']:+.2f} with the real truth ratio and "
        f"{first['gap_constructed']:+.2f} with the constructed one ({first['gap_constructed_para']:+.2f} against the "
        "written paraphrase): the constructed wrong answers separate the trained forget set from the holdout more "
        "sharply, as the correct side is then the trained answer itself.",
        f"- Screening (`--stop_screen`: answers only until the answer-loss gap first reaches 0) stays sound for the "
        f"constructed statistic if that gap reaches 0 first: it did, at or before the constructed gap, in {screen_ok} "
        f"of {len(state['runs'])} runs.",
        f"- Where the kept checks differ ({len(differ)} runs), the constructed statistic keeps the earlier check in "
        f"{summary['constructed_keeps_earlier']}: it errs towards stopping early (less unlearned by the real "
        "statistic; see the real gap at its keep), not towards over-unlearning.",
        "- Both replays see the same retain rise, so the decisions differ only through the gaps: where each first "
        "reaches 0, and which check is closest to 0.",
    ]
    path.write_text("\n".join(lines) + "\n")
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "constructed_tr.json"))
    parser.add_argument(
        "--worlds", default="seed0-34authors", help="comma-separated, of benchmarks/auto.py's"
    )
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--splits", default=",".join(SPLITS))
    parser.add_argument("--work", default="/tmp/llm-unlearn-constructed-tr")
    parser.add_argument("--report_only", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    state = json.loads(out.read_text()) if out.exists() else {"runs": []}
    state |= {"command": "python benchmarks/constructed_tr.py " + " ".join(sys.argv[1:]),
              "date": time.strftime("%Y-%m-%d"), "hardware": _hardware()} if not args.report_only else {}  # fmt: skip
    if not args.report_only:
        for name in args.worlds.split(","):
            cfg = worlds("default")[name]
            world = Path(args.work) / name / "world"
            if not world.is_dir():
                write_world(world, WorldConfig(**cfg))
            target = build_default_models(world, forget_splits=("forget10",), size="default")["target"]
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(target)
            done = {(r["world"], r["split"], r["seed"]) for r in state["runs"]}
            for seed in (int(s) for s in args.seeds.split(",")):
                for split in args.splits.split(","):
                    if (name, split, seed) in done:
                        continue
                    t0 = time.perf_counter()
                    trace = trace_run(
                        world,
                        target,
                        tokenizer,
                        split,
                        seed,
                        world.parent / f"run-{split}-{seed}-{time.strftime('%H%M%S')}",
                    )
                    state["runs"].append({"world": name, "split": split, "seed": seed, "trace": trace,
                                          "seconds": time.perf_counter() - t0})  # fmt: skip
                    write_json_atomic(out, state)
                    print(f"{name} {split} seed {seed}: {len(trace)} checks, {time.perf_counter() - t0:.0f} s",
                          flush=True)  # fmt: skip
    state = report(state, out.with_suffix(".md"))
    write_json_atomic(out, state)


if __name__ == "__main__":
    main()
