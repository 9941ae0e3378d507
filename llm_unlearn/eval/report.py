"""`llm-unlearn report`: a markdown report with plots for one run or many, from their eval.json files.

    llm-unlearn report runs/demo --out runs/demo/report             # a folder of runs
    llm-unlearn report runs/graddiff runs/ngdiff --target_eval runs/target/eval.json --out report/

`report.md` holds the metric table (every metric with its direction), the collateral-damage lines,
the figures of `plots.py` (forget quality vs model utility, per-split bars, membership ROC curves,
relearning / Piggyback / quantization probes from probe.json, training curves from
train_log.jsonl) and example generations.

Collateral damage: model utility is the harmonic mean of nine numbers, six of them on real authors
and world facts, which unlearning barely touches; so it can stay near the target's while the retain
authors' facts are lost. The report therefore sets the retain set's own numbers (fact recall,
probability, ROUGE-L) beside the original model's, as a share of what it had.

Paths in `report.md` are relative to the report folder when they lie beside it (in its parent
folder), else named without the machine's folders (`push.local_name`), so a report can be moved,
shared or published as it is. The forget-quality reference is named by its model and eval file.

A report is written whole or not at all, one at a time per folder (`write_report`): rerunning it into
the same `--out` replaces the previous one and the figures only that one showed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from ..runs.options import CommandParser, require_one_process
from ..runs.redact import LOCAL_PATH, local_name
from . import plots
from .metrics import MODEL_UTILITY_INPUTS

logger = logging.getLogger("llm_unlearn")

HEADLINE = ("forget_quality", "model_utility")
FORGET = ("forget_prob", "forget_rouge_l", "forget_truth_ratio", "forget_fact_recall")
MIA = (*plots.ATTACKS, "privleak")
COLLATERAL = {"retain_fact_recall": "fact recall", "retain_prob": "probability", "retain_rouge_l": "ROUGE-L"}
N_EXAMPLES = {"forget": 3, "retain": 2}
CONFIG_KEYS = ("method", "learning_rate", "num_train_epochs", "max_steps", "optim", "retain_loss", "gen")
REPORT_FILE = "report.md"
# `![alt](name.png)`: a figure report.md shows from its own folder.
FIGURE_LINK = re.compile(r"!\[[^\]]*\]\(([\w.-]+\.png)\)")


def _metric_order(results: dict[str, dict]) -> list[str]:
    present = {name for r in results.values() for name in r["metrics"]}
    preferred = [*HEADLINE, *FORGET, *MIA, *MODEL_UTILITY_INPUTS, "retain_fact_recall"]
    return [m for m in preferred if m in present] + sorted(present - set(preferred))


def _fmt(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name == "forget_quality":
        return f"{value:.3g}"
    return f"{value:.2f}" if name == "privleak" else f"{value:.4f}"


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _value(result: dict, name: str) -> float | None:
    entry = result["metrics"].get(name)
    return None if entry is None else entry["value"]


def collateral_damage(result: dict, target: dict) -> str | None:
    """'retain fact recall 0.67 vs 0.96 (70% of the target's), ...; model utility 94% of the target's'."""
    parts = []
    for name, text in COLLATERAL.items():
        mine, theirs = _value(result, name), _value(target, name)
        if mine is None or theirs is None:
            continue
        share = f"{mine / theirs:.0%} of the target's" if theirs > 0 else "the target has 0"
        parts.append(f"retain {text} {mine:.3f} vs {theirs:.3f} ({share})")
    if not parts:
        return None
    mu, mu_target = _value(result, "model_utility"), _value(target, "model_utility")
    if mu is not None and mu_target:
        parts[-1] += f"; model utility {mu / mu_target:.0%} of the target's"
    return ", ".join(parts)


def shown_path(path: str | Path, out: Path) -> str:
    """`path` as report.md writes it: relative to the report folder `out` when it lies in the folder's
    parent, else its `local_name` (no machine folders)."""
    path = Path(path).expanduser().absolute()
    relative = Path(os.path.relpath(path, out.absolute()))
    if relative.parts[:2] != ("..", ".."):
        return relative.as_posix()
    return local_name(str(path))


def shown_paths(text: str, out: Path) -> str:
    """`text` with each absolute or `~/` path in it written as `shown_path` writes it."""
    return LOCAL_PATH.sub(lambda match: shown_path(match.group(), out), text)


def _shown_model(name: str, out: Path) -> str:
    """A model folder as `shown_path` writes it; a Hub id (no such folder here) as it is."""
    path = Path(name).expanduser()
    return shown_path(path, out) if path.is_absolute() or path.exists() else name


def _reference(meta: dict, out: Path) -> str:
    """The forget-quality reference by its model's name, and by its eval file where it was read from one."""
    ref = meta.get("forget_quality_reference")
    if ref is None:
        return "none"
    names = [f"`{_shown_model(ref['model'], out)}`"] if ref.get("model") else []
    if Path(ref["path"]).is_file():
        names.append(
            f"(eval `{shown_path(ref['path'], out)}`)" if names else f"`{shown_path(ref['path'], out)}`"
        )
    return " ".join(names) or "not recorded"


def _model_line(label: str, result: dict, config: dict | None, out: Path) -> str:
    meta = result["meta"]
    split = meta.get("forget_split", meta.get("splits", {}).get("forget", {}).get("name"))
    line = (
        f"- **{label}**: forget split `{split}`, truth ratio `{meta.get('truth_ratio_variant')}`, "
        f"prompt `{meta.get('prompt_format')}`, forget-quality reference {_reference(meta, out)}"
    )
    if config:
        keys = [k for k in CONFIG_KEYS if config.get(k) not in (None, False, -1)]
        if "max_steps" in keys:  # then the epoch count is not what stopped the run
            keys = [k for k in keys if k != "num_train_epochs"]
        settings = ", ".join(
            f"{k} {'on' if config[k] is True else config[k]}" for k in keys
        )  # False: left out
        undo = config.get("undo")
        if isinstance(undo, dict):  # a `distill` run: its own training is UNDO's, after the source run's
            steps = f"max_steps {undo.get('max_steps')}" if undo.get("max_steps", -1) != -1 else (
                f"num_train_epochs {undo.get('num_train_epochs')}")  # fmt: skip
            line += (
                f"; UNDO distillation: alpha {undo.get('alpha')}, {steps}, learning_rate {undo.get('learning_rate')}, "
                f"seed {undo.get('seed')}, from the run `{Path(str(undo.get('source_run'))).name}` (unlearning: {settings})"
            )
        else:
            line += f"; unlearning: {settings}"
    floor = result["metrics"].get("forget_quality", {}).get("smallest_possible")
    if floor is not None:  # eval/tofu.add_forget_quality: too few forget questions for the 0.05 bar to fail
        line += f"; **forget quality cannot fall below {floor:.3g} on so few forget questions**"
    return line


def write_report(
    results: dict[str, dict],
    out_dir: str | Path,
    title: str = "Unlearning report",
    *,
    target: str | None = None,
    train_logs: dict[str, list[dict]] | None = None,
    probes: dict[str, dict] | None = None,
    configs: dict[str, dict] | None = None,
    notes: list[str] | None = None,
    target_source: str | None = None,
) -> Path:
    """Write `report.md` and its PNG figures into `out_dir` for the models in `results`; return its path.

    `results` maps a model label (e.g. target, retain, graddiff) to its eval.json dict; columns keep
    this order. `target` names the original model among them (for the collateral-damage lines);
    `train_logs`, `probes` and `configs` map labels to a run's train_log.jsonl rows, probe.json and
    unlearn_config.yaml; `notes` are printed under the table (e.g. runs left out), `target_source`
    says where the target's eval came from (without a target: why none could be used). A model without forget quality is listed with "-" and left
    out of the scatter plot.

    Written whole or not at all: the figures and report.md are made in a hidden folder inside `out_dir`
    and moved in, report.md last, while the folder is locked. So a report that fails or is killed while
    plotting leaves the previous one as it was, two reports into one folder never mix their files, and
    figures the previous report.md showed that this one does not are removed with it.
    """
    if not results:
        raise ValueError("write_report needs at least one result")
    if target is not None and target not in results:
        raise ValueError(f"target {target!r} is not one of the models: {', '.join(results)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _locked_dir(out):
        # Under the lock, a staging folder already there is a killed report's: no process is writing it.
        for left in out.glob(".report-*"):
            shutil.rmtree(left, ignore_errors=True)
        stage = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
        try:
            text = _compose(
                results, out, stage, title, target, train_logs, probes, configs, notes, target_source
            )
            (stage / REPORT_FILE).write_text(text, encoding="utf-8")
            shown_before = _figures(out / REPORT_FILE)
            for figure in sorted(stage.glob("*.png")):
                os.replace(figure, out / figure.name)
            os.replace(stage / REPORT_FILE, out / REPORT_FILE)
            for stale in shown_before - _figures(out / REPORT_FILE):
                (out / stale).unlink(missing_ok=True)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return out / REPORT_FILE


@contextlib.contextmanager
def _locked_dir(folder: Path):
    """An exclusive lock on the folder itself (no lock file left in it), released however the process ends."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _figures(report: Path) -> set[str]:
    """The figure files a report.md shows (names in its folder)."""
    if not report.is_file():
        return set()
    return set(FIGURE_LINK.findall(report.read_text(encoding="utf-8", errors="replace")))


def _compose(
    results, out: Path, files: Path, title, target, train_logs, probes, configs, notes, target_source
):
    """report.md's text, its figures written into `files`; paths shown relative to `out`, where it will lie."""
    train_logs, probes, configs = train_logs or {}, probes or {}, configs or {}
    models = list(results)
    directions = {}
    for r in results.values():
        for name, entry in r["metrics"].items():
            directions.setdefault(name, entry["direction"])

    lines = [f"# {title}", "", "## Metrics", ""]
    lines.append("| metric | better | " + " | ".join(models) + " |")
    lines.append("|---|---|" + "---|" * len(models))
    for name in _metric_order(results):
        row = [_fmt(name, _value(results[m], name)) for m in models]
        better = directions[name].replace("_", " ")
        lines.append(f"| {name} | {better} | " + " | ".join(row) + " |")
    lines.append("")
    lines += [_model_line(m, results[m], configs.get(m), out) for m in models]
    lines += [f"- {shown_paths(note, out)}" for note in notes or []]

    lines += ["", "## Collateral damage: what the retain set lost", ""]
    if target is None and target_source:
        lines.append(f"No single original model to compare with: {shown_paths(target_source, out)}.")
    elif target is None:
        lines.append(
            "No eval of the original (target) model was found, so there is nothing to compare with: evaluate it "
            "into its own folder (`llm-unlearn eval --model_name_or_path TARGET --data_dir DATA --reference_model "
            "REF --output_dir TARGET`), then report again (it is found from the runs' config) or pass "
            "`--target_eval TARGET/eval.json`."
        )
    else:
        source = f" ({shown_paths(target_source, out)})" if target_source else ""
        lines.append(
            f"Against **{target}**, the model before unlearning{source}. "
            "Model utility also averages real authors and "
            "world facts, which unlearning barely touches, so the retain set's own numbers tell the damage:"
        )
        lines.append("")
        # A run's retain-only reference was never unlearned: its retain numbers are not damage done.
        references = {
            str(ref["model"]) for r in results.values()
            if isinstance(ref := r["meta"].get("forget_quality_reference"), dict) and ref.get("model")
        }  # fmt: skip
        for m in models:
            if m == target or str(results[m]["meta"].get("model")) in references:
                continue
            text = collateral_damage(results[m], results[target])
            if text:
                lines.append(f"- **{m}**: {text}")

    lines += ["", "## Forget quality vs model utility", ""]
    if any(_value(r, "forget_quality") is not None for r in results.values()):
        missing = plots.fq_vs_mu(results, files / "fq_vs_mu.png")
        lines.append("![forget quality vs model utility](fq_vs_mu.png)")
        if missing:
            lines += ["", f"Not plotted (no forget quality: no reference given): {', '.join(missing)}."]
    else:
        lines.append("No model has forget quality (no retain-only reference was given), so there is no plot.")

    lines += ["", "## Metrics by eval set", "", "![metrics by eval set](split_metrics.png)"]
    plots.split_bars(results, files / "split_metrics.png")

    lines += ["", "## Membership inference", ""]
    if plots.mia_roc(results, files / "mia_roc.png"):
        lines += [
            "Forget set (members) against the holdout split (never trained on); a curve on the diagonal means the "
            "forget set looks unseen. The AUCs are the `mia_auc_*` rows above.",
            "",
            "![membership inference ROC curves](mia_roc.png)",
        ]
    else:
        lines.append("No eval.json holds per-sample membership scores (no holdout split was evaluated).")

    lines += _run_figures(files, probes, train_logs)
    lines += _examples(results)
    return "\n".join(lines).rstrip() + "\n"


def _run_figures(out: Path, probes: dict[str, dict], train_logs: dict[str, list[dict]]) -> list[str]:
    from .runs import file_label

    lines: list[str] = []
    if probes:
        lines += ["", "## Residual knowledge: relearning, Piggyback and quantization probes", ""]
        if plots.probe_comparison(probes, out / "probe_comparison.png"):
            lines += ["Every probed run on one axis (for instance a method with and without SAM or UNDO):", "",
                      "![probes side by side](probe_comparison.png)", ""]  # fmt: skip
        for label, probe in probes.items():
            name = file_label(label)
            drawn = []
            if plots.probe_curves(probe, out / f"probe_{name}.png", label):
                drawn.append(f"![probes of {label}](probe_{name}.png)")
            if plots.quant_curves(probe, out / f"quant_{name}.png", label):
                drawn.append(f"![quantization probe of {label}](quant_{name}.png)")
            lines += [f"### {label}", "", *(d + "\n" for d in drawn)]
    drawn_logs = []
    for label, log in train_logs.items():
        name = file_label(label)
        if plots.training_curves(log, out / f"train_{name}.png", label):
            ended = training_end(log)
            drawn_logs += [f"### {label}", "", *([ended, ""] if ended else []),
                           f"![training curves of {label}](train_{name}.png)", ""]  # fmt: skip
    if drawn_logs:
        lines += ["", "## Training curves", "", *drawn_logs]
    return lines


def training_end(log: list[dict]) -> str | None:
    """One sentence on why training ended and which weights the run returned, from its train_log.jsonl rows:
    the stop rule's summary (`stop_reason`, core/stop.py), a `--vanish_stop` end (core/trainer_combine.py), or None."""
    end = next((r for r in reversed(log) if "stop_reason" in r), None)
    fell = next((r["auto_fallback"] for r in log if "auto_fallback" in r), None)
    if end is not None and fell is not None:  # --auto's second regime (core/auto.py)
        drop = fell.get("utility_drop")
        before = (
            f"`--auto` started again from the original weights in its second regime (AdamW) after the utility "
            f"estimate fell {100 * drop:.0f}% at step {fell.get('at_step')} of the first. "
            if drop is not None
            else "`--auto` started again from the original weights in its second regime (AdamW). "
        )
        return before + training_end([r for r in log if "auto_fallback" not in r])
    if end is not None:
        gap = end.get("stop_best_gap")
        kept = "not scored (screened)" if gap is None else f"{gap:+.3f}"
        repair = f", then {end['stop_repair_steps']} repair steps" if end.get("stop_repair_steps") else ""
        return (
            f"Training ended at step {end['step'] - (end.get('stop_repair_steps') or 0)}: `{end['stop_reason']}` "
            f"(the stop rule's record); it returned the weights of step {end.get('stop_best_step')} (gap {kept}){repair}."
        )
    vanished = next((r for r in reversed(log) if "training_stopped" in r), None)
    if vanished is not None:
        return (
            f"Training ended at step {vanished['step']}: the forget terms had been left out as vanished in "
            f"{vanished.get('forget_vanished_steps')} steps (`--vanish_stop`)."
        )
    return None


def _examples(results: dict[str, dict]) -> list[str]:
    lines = ["", "## Example generations", ""]
    for m, result in results.items():
        gens = result.get("generations", {})
        if not gens:
            continue
        lines += [f"### {m}", "", "| set | question | gold answer | generated |", "|---|---|---|---|"]
        for role, k in N_EXAMPLES.items():
            for g in gens.get(role, [])[:k]:
                lines.append(
                    f"| {role} | {_cell(g['question'])} | {_cell(g['answer'])} | {_cell(g['generated'])} |"
                )
        lines.append("")
    return lines


def report_runs(
    paths: list[str], out_dir: str | Path, target_eval: str | None = None, title: str | None = None
) -> Path:
    """`llm-unlearn report`: collect the runs (`runs.py`), find the target's eval, write the report."""
    from .runs import collect_runs, find_target

    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise FileExistsError(f"--out {out_dir} is a file; pass a folder for report.md and its figures")
    runs, skipped = collect_runs(paths)
    target, how = find_target(runs, target_eval)
    if target is not None and target not in runs:
        runs.insert(0, target)
    notes = [f"left out (not complete or not evaluated): {s}" for s in skipped]
    return write_report(
        {r.label: r.eval for r in runs},
        out_dir,
        title or f"Unlearning report: {', '.join(r.label for r in runs)}",
        target=target.label if target else None,
        train_logs={r.label: r.train_log for r in runs if r.train_log},
        probes={r.label: r.probe for r in runs if r.probe},
        configs={r.label: r.config for r in runs if r.config},
        notes=notes,
        target_source=how if target or how != "not found" else None,  # without a target: why none is used
    )


def report_cli(argv: list[str]) -> Path:
    parser = CommandParser(prog="llm-unlearn report", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "run_dirs", nargs="+", help="run directories (each with an eval.json) or folders of them"
    )
    parser.add_argument("--out", required=True, help="folder for report.md and the PNG figures")
    parser.add_argument(
        "--target_eval", help="eval.json of the original model (default: found from the runs' configs)"
    )
    parser.add_argument("--title", help="report title (default: lists the runs)")
    args = parser.parse_args(argv)
    require_one_process("report")  # every rank would do it all, into the same files
    path = report_runs(args.run_dirs, args.out, args.target_eval, args.title)
    print(f"wrote {path}")
    return path
