"""`llm-unlearn demo`: the whole story offline, on the built-in world, in minutes on a laptop CPU.

world -> tiny model pretrained on the "known" analogs -> target (all authors) and retain-only
reference (cached) -> graddiff and ngdiff on forget10 -> eval of all four -> `runs/demo/report.md`,
`summary.json`, plots. Three checks per unlearned model decide the exit code (at the default size; the
micro models answer nothing, so `--size micro` shows its checks without applying them):
  forget quality(unlearned) >= 100 x forget quality(target)
  forget fact recall(unlearned) <= 0.5 x forget fact recall(target)
  model utility(unlearned) >= 0.8 x model utility(target)
The unlearning settings below were chosen by the sweeps recorded in `benchmarks/`.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path

from ..core.config import UnlearnConfig
from ..data.args import DataArgs
from ..eval.args import EvalArgs
from ..models.args import ModelArgs
from ..runs.folder import write_json_atomic
from ..runs.options import CommandParser, require_one_process

logger = logging.getLogger("llm_unlearn")

FORGET_SPLIT = "forget10"
# Unlearning settings per world size, one entry per method shown. `default`: graddiff's were chosen
# by the sweep in benchmarks/demo_sweep.md (KL retain term, lr 2e-4: epoch 6 is the first with
# forget quality above 0.05); ngdiff's are the best measured setting of the study in
# benchmarks/ngdiff_vs_graddiff.md (plain SGD on the normalized direction, lr 0.1).
_COMMON = dict(lr_scheduler_type="constant", weight_decay=0.0, seed=0)
DEMO_UNLEARN: dict[str, dict[str, dict]] = {
    "default": {
        "graddiff": dict(_COMMON, method="graddiff", retain_loss="kl", learning_rate=2e-4, num_train_epochs=6,
                         per_device_train_batch_size=16),
        "ngdiff": dict(_COMMON, method="ngdiff", retain_loss="nll", optim="sgd", learning_rate=0.1,
                       num_train_epochs=6, per_device_train_batch_size=16),
    },
    # Micro models know nothing worth forgetting; this only exercises the pipeline quickly.
    "micro": {
        "graddiff": dict(_COMMON, method="graddiff", retain_loss="nll", learning_rate=1e-3, num_train_epochs=1,
                         per_device_train_batch_size=8),
        "ngdiff": dict(_COMMON, method="ngdiff", retain_loss="nll", optim="sgd", learning_rate=0.1,
                       num_train_epochs=1, per_device_train_batch_size=8),
    },
}  # fmt: skip
CHECKS = (
    ("forget_quality", ">=", 100.0, "forget quality rises at least 100x"),
    ("forget_fact_recall", "<=", 0.5, "forget fact recall at most halves"),
    ("model_utility", ">=", 0.8, "model utility keeps at least 80%"),
)


def run_checks(target: dict, unlearned: dict) -> list[dict]:
    out = []
    for metric, op, factor, what in CHECKS:
        t, u = target["metrics"][metric]["value"], unlearned["metrics"][metric]["value"]
        passed = u >= factor * t if op == ">=" else u <= factor * t
        out.append(
            dict(
                metric=metric,
                rule=f"unlearned {op} {factor:g} x target",
                what=what,
                target=t,
                unlearned=u,
                passed=bool(passed),
            )
        )
    return out


def demo(
    size: str = "default", output_dir: str = "runs/demo", no_cache: bool = False, threads: int | None = None
) -> dict:
    """Run the demo and return its summary (also written to `<output_dir>/summary.json`).

    The output folder is claimed (`runs/folder.claim_run_dir`) before it is cleared, so two demos started on
    one folder cannot delete each other's files: the second gets one line.
    """
    from ..runs.folder import CLAIM_FILE, claim_run_dir

    if size not in DEMO_UNLEARN:  # before the folder is touched, as the command's own --size choices are
        raise ValueError(f"unknown demo size {size!r}; choose one of {', '.join(sorted(DEMO_UNLEARN))}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a whole number >= 1 (or None: torch's default), got {threads!r}")
    out = Path(output_dir)
    _refuse_foreign(out)
    with claim_run_dir(out):
        _refuse_foreign(out)  # again, now that no other demo can be writing it
        for child in out.iterdir():
            if child.name != CLAIM_FILE:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        import torch

        before = torch.get_num_threads()
        try:
            return _demo(size, out, no_cache, threads)
        finally:  # the caller's process keeps its own thread count
            torch.set_num_threads(before)


def _refuse_foreign(out: Path) -> None:
    if out.is_dir() and not (out / "summary.json").exists() and not (out / "world").exists():
        from ..runs.folder import CLAIM_FILE

        if any(child.name != CLAIM_FILE for child in out.iterdir()):
            raise FileExistsError(f"{out} exists and is not a demo folder; pass another --output_dir")


def _demo(size: str, out: Path, no_cache: bool, threads: int | None) -> dict:
    import torch

    from ..data.world import WORLD_SIZES, WorldConfig, write_world
    from ..eval.report import write_report
    from ..eval.runs import read_train_log
    from ..eval.tofu import add_forget_quality, load_eval, write_eval
    from ..models.build import build_default_models
    from .evaluate import evaluate_path
    from .unlearn import unlearn

    if threads:
        torch.set_num_threads(threads)
    times: dict[str, float] = {}

    def stage(name: str, start: float) -> None:
        times[name] = round(time.perf_counter() - start, 1)
        print(f"[demo] {name:<10} {times[name]:7.1f} s", flush=True)

    t = time.perf_counter()
    world_dir = write_world(out / "world", WorldConfig(**WORLD_SIZES[size]))
    stage("world", t)
    t = time.perf_counter()
    models = build_default_models(world_dir, forget_splits=(FORGET_SPLIT,), size=size, no_cache=no_cache)
    stage("models", t)

    data = DataArgs(data_dir=str(world_dir), forget_split=FORGET_SPLIT)
    eval_args = EvalArgs()
    methods = DEMO_UNLEARN[size]
    t = time.perf_counter()
    run_dirs = {
        name: unlearn(
            ModelArgs(model_name_or_path=str(models["target"])),
            data,
            UnlearnConfig(output_dir=str(out / name), disable_tqdm=True, save_strategy="no", **settings),
            eval_args,
            progress_bar_only=True,
        )
        for name, settings in methods.items()
    }
    stage("unlearn", t)

    t = time.perf_counter()
    # The reference is evaluated once; its forget quality against itself is 1 by definition, and
    # its eval.json is the reference file the other models' forget quality cites.
    reference = evaluate_path(str(models["retain"][FORGET_SPLIT]), data, eval_args)
    reference_file = write_eval(add_forget_quality(reference, reference), out / "retain" / "eval.json")
    results = {
        "target": evaluate_path(str(models["target"]), data, eval_args, reference=str(reference_file)),
        "retain": load_eval(reference_file),
    }
    write_eval(results["target"], out / "target" / "eval.json")
    for name, run_dir in run_dirs.items():
        results[name] = evaluate_path(str(run_dir), data, eval_args, reference=str(reference_file))
        write_eval(results[name], run_dir / "eval.json")
    stage("eval", t)

    checks = {name: run_checks(results["target"], results[name]) for name in methods}
    t = time.perf_counter()
    title = f"llm-unlearn demo: {' and '.join(methods)} on {FORGET_SPLIT} of the built-in world ({size})"
    logs = {
        name: read_train_log(d / "train_log.jsonl")
        for name, d in run_dirs.items()
        if (d / "train_log.jsonl").is_file()
    }
    write_report(results, out, title=title, target="target", train_logs=logs)
    stage("report", t)
    summary = {
        **{name: {k: v["value"] for k, v in r["metrics"].items()} for name, r in results.items()},
        "checks": checks,
        "passed": all(c["passed"] for cs in checks.values() for c in cs),
        # Micro models know nothing worth forgetting (model utility 0): their checks are shown, not applied.
        "checks_apply": size != "micro",
        "stage_seconds": times,
        "settings": {"size": size, "forget_split": FORGET_SPLIT, "methods": methods},
    }
    write_json_atomic(out / "summary.json", summary)
    _print_summary(summary, results)
    return summary


def _print_summary(summary: dict, results: dict) -> None:
    names = list(results)
    print("\n" + f"{'metric':<22}" + "".join(f"{n:>14}" for n in names))
    for metric in (
        "forget_quality",
        "model_utility",
        "forget_truth_ratio",
        "forget_rouge_l",
        "forget_fact_recall",
    ):
        print(f"{metric:<22}" + "".join(f"{results[n]['metrics'][metric]['value']:>14.4g}" for n in names))
    print()
    for name, checks in summary["checks"].items():
        for c in checks:
            print(
                f"{'PASS' if c['passed'] else 'FAIL'}  {name}: {c['what']}: target {c['target']:.3g}, "
                f"unlearned {c['unlearned']:.3g} ({c['rule']})"
            )
    if not summary["checks_apply"]:
        print("(checks not applied at --size micro: its models answer nothing, so there is nothing to forget; "
              "the micro demo exercises the pipeline only)")  # fmt: skip
    print(f"stage seconds: {summary['stage_seconds']}")


def demo_cli(argv: list[str]) -> None:
    parser = CommandParser(prog="llm-unlearn demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", default="default", choices=sorted(DEMO_UNLEARN),
        help="default: minutes, three checks decide the exit code; micro: seconds, the pipeline only (its "
        "models answer nothing, so the checks are shown, not applied)",
    )  # fmt: skip
    parser.add_argument("--output_dir", default="runs/demo", help="where the report, runs and models go")
    parser.add_argument("--no_cache", action="store_true", help="rebuild the models even if cached")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    require_one_process("demo")  # every rank would do it all, into the same files
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads} must be at least 1 (or left out for torch's choice)")
    summary = demo(args.size, args.output_dir, args.no_cache, args.threads)
    print(f"report: {Path(args.output_dir) / 'report.md'}")
    if summary["checks_apply"] and not summary["passed"]:
        sys.exit(1)
