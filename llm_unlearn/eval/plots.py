"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no display).

Each function writes one PNG and returns what it left out, if anything. A model keeps one colour and
marker in every figure (`styles`), and every figure names its models in a legend rather than in
labels beside points, so two models at the same spot never print on top of each other.

- `fq_vs_mu`: forget quality (log scale) against model utility, the TOFU trade-off plot
  (arXiv 2401.06121, figure 5).
- `split_bars`: probability, ROUGE-L, truth ratio and fact recall on each eval set.
- `mia_roc`: ROC curves of the membership attacks from the per-sample scores in eval.json, holdout
  as the positive class (a score says "looks like a non-member"), so the area is the stored AUC.
- `probe_curves` / `quant_curves`: the relearning and Piggyback curves over step budgets, and the
  quantization probe over bit widths, from probe.json.
- `training_curves`: loss terms, gradient norms and cosines, the learning rate and GeN's fits from
  train_log.jsonl.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
SPLITS = {"forget": "forget set", "retain": "retain set", "ra": "real authors", "wf": "world facts"}
SPLIT_METRICS = {
    "prob": "probability",
    "rouge_l": "ROUGE-L",
    "truth_ratio": "truth ratio",
    "fact_recall": "fact recall",
}
ATTACKS = {
    "mia_auc_loss": "LOSS",
    "mia_auc_zlib": "zlib",
    "mia_auc_min_k": "Min-K%",
    "mia_auc_min_k_plus_plus": "Min-K%++",
    "mia_auc_reference": "reference ratio",
}
PROBE_TITLES = {"relearn": "LoRA relearning", "piggyback": "Piggyback mask"}
PROBE_METRICS = ("forget_prob", "forget_rouge_l", "forget_truth_ratio", "forget_fact_recall")
QUANT_METRICS = (*PROBE_METRICS, "mia_auc_loss", "mia_auc_min_k")
METRIC_NAMES = {
    "forget_prob": "probability",
    "forget_rouge_l": "ROUGE-L recall",
    "forget_truth_ratio": "truth ratio",
    "forget_fact_recall": "fact recall",
    **{name: f"MIA AUC, {attack}" for name, attack in ATTACKS.items()},
}
LINESTYLES = ("-", "--", "-.", ":")
DPI = 120


def styles(labels: Sequence[str]) -> dict[str, dict]:
    """One colour (tab10, then tab20) and marker per model, in the given order."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {
        label: {"color": cmap(i % cmap.N), "marker": MARKERS[i % len(MARKERS)]}
        for i, label in enumerate(labels)
    }


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _value(result: dict, name: str) -> float | None:
    entry = result["metrics"].get(name)
    return None if entry is None else entry["value"]


def _legend_below(fig, handles, labels, n: int) -> None:
    fig.legend(handles, labels, loc="outside lower center", ncols=min(n, 4), fontsize=9, frameon=False)


def fq_vs_mu(results: dict[str, dict], path: Path) -> list[str]:
    """Scatter of the models that have forget quality; returns the names left out."""
    fig = fq_vs_mu_figure(results)
    fig.savefig(path, dpi=DPI)
    return [name for name in results if _value(results[name], "forget_quality") is None]


def fq_vs_mu_figure(results: dict[str, dict]):
    """The scatter's figure: one hollow marker per model, named in a legend beside the axes."""
    have = {name: r for name, r in results.items() if _value(r, "forget_quality") is not None}
    style = styles(list(results))
    fig = _figure(6.4, 4.2)
    ax = fig.subplots()
    for name, r in have.items():
        # A KS p-value can underflow to 0; floor it so it still shows on the log axis.
        x, y = _value(r, "model_utility"), max(_value(r, "forget_quality"), 1e-300)
        # Hollow markers of different shapes stay visible when two models land on the same point.
        ax.scatter([x], [y], s=70, marker=style[name]["marker"], facecolors="none",
                   edgecolors=[style[name]["color"]], linewidths=1.8, label=name)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlim(-0.03, 1.03)
    ax.set_xlabel("model utility (higher is better)")
    ax.set_ylabel("forget quality, KS p-value (higher is better)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9, title="model", borderaxespad=0)
    return fig


def split_bars(results: dict[str, dict], path: Path) -> None:
    """One panel per eval set, grouped bars (metric x model)."""
    style = styles(list(results))
    splits = [s for s in SPLITS if any(f"{s}_prob" in r["metrics"] for r in results.values())]
    fig = _figure(11, 6.2)
    axes = fig.subplots(2, 2, squeeze=False).ravel()
    width = 0.8 / len(results)
    for ax, split in zip(axes, splits):
        names = [m for m in SPLIT_METRICS if any(f"{split}_{m}" in r["metrics"] for r in results.values())]
        for k, (model, r) in enumerate(results.items()):
            values = [_value(r, f"{split}_{m}") or 0.0 for m in names]
            ax.bar(
                [i + k * width for i in range(len(names))],
                values,
                width,
                color=style[model]["color"],
                label=model,
            )
        ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(names))],
                      [SPLIT_METRICS[m] for m in names])  # fmt: skip
        better = (
            "lower is better; truth ratio: closer to the reference"
            if split == "forget"
            else "higher is better"
        )
        ax.set_title(f"{SPLITS[split]} ({better})", fontsize=10)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("value")
        ax.grid(True, axis="y", alpha=0.3)
    for ax in axes[len(splits) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    _legend_below(fig, handles, labels, len(results))
    fig.savefig(path, dpi=DPI)


def roc_curve(members: Sequence[float], nonmembers: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) with non-members positive and higher scores flagged first.

    At each distinct threshold t: TPR = share of non-members scoring >= t, FPR = share of members
    scoring >= t; the curve runs from (0, 0) to (1, 1) and its trapezoid area is the Mann-Whitney AUC.
    """
    m, h = np.asarray(members, dtype=np.float64), np.asarray(nonmembers, dtype=np.float64)
    thresholds = np.unique(np.concatenate([m, h]))[::-1]
    fpr = np.array([0.0, *((m >= t).mean() for t in thresholds)])
    tpr = np.array([0.0, *((h >= t).mean() for t in thresholds)])
    return fpr, tpr


def mia_roc(results: dict[str, dict], path: Path) -> list[str]:
    """One panel per attack, a curve per model with per-sample scores; returns the attacks drawn."""
    style = styles(list(results))
    attacks = [
        a for a in ATTACKS if any("per_sample_forget" in r["metrics"].get(a, {}) for r in results.values())
    ]
    if not attacks:
        return []
    cols = min(len(attacks), 3)
    rows = -(-len(attacks) // cols)
    fig = _figure(3.6 * cols, 3.4 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, attack in zip(axes, attacks):
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8)
        for k, (model, r) in enumerate(results.items()):
            entry = r["metrics"].get(attack)
            if entry is None or "per_sample_forget" not in entry:
                continue
            fpr, tpr = roc_curve(entry["per_sample_forget"], entry["per_sample_holdout"])
            # Models with equal curves (e.g. AUC 1) would hide each other: line styles and widths differ.
            ax.plot(fpr, tpr, color=style[model]["color"], ls=LINESTYLES[k % len(LINESTYLES)],
                    lw=2.4 - 1.2 * k / max(1, len(results) - 1), label=f"{model}: {entry['value']:.2f}")  # fmt: skip
        ax.legend(loc="lower right", fontsize=7, title="AUC", title_fontsize=7, framealpha=0.85)
        ax.set_title(ATTACKS[attack], fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("forget set flagged as unseen (FPR)")
        ax.set_ylabel("holdout flagged as unseen (TPR)")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(attacks) :]:
        ax.set_visible(False)
    fig.suptitle(
        "membership inference: forget set (members) vs holdout; the grey diagonal is chance", fontsize=11
    )
    fig.savefig(path, dpi=DPI)
    return attacks


def _metric_label(name: str, direction: str | None) -> str:
    text = METRIC_NAMES.get(name, name.replace("_", " "))
    return f"{text} ({direction.replace('_', ' ')} is better)" if direction else text


def probe_curves(probe: dict, path: Path, title: str) -> bool:
    """Relearning / Piggyback: each forget metric on the held-out part E against the step budget."""
    probes = [p for p in PROBE_TITLES if p in probe]
    if not probes:
        return False
    directions = probe.get("directions", {})
    metrics = [m for m in PROBE_METRICS if m in probe[probes[0]]["unlearned"][0]["metrics"]]
    fig = _figure(3.3 * len(metrics), 3.0 * len(probes) + 0.9)
    axes = fig.subplots(len(probes), len(metrics), squeeze=False)
    for row, name in enumerate(probes):
        section = probe[name]
        for col, metric in enumerate(metrics):
            ax = axes[row][col]
            # The reference first, with larger markers, so the unlearned model stays visible on top of it.
            for who, color, marker, ls, size, label in (
                ("reference", "0.45", "s", "--", 8, "retain-only reference, probed"),
                ("unlearned", "C0", "o", "-", 5, "unlearned model, probed"),
            ):
                budgets = [p["budget"] for p in section[who]]
                values = [p["metrics"][metric]["value"] for p in section[who]]
                ax.plot(budgets, values, color=color, marker=marker, ms=size, ls=ls, label=label)
            ax.axhline(
                section["original"][metric]["value"], color="C3", ls=":", label="original model (unprobed)"
            )
            ax.set_title(f"{PROBE_TITLES[name]}: {_metric_label(metric, None)}", fontsize=10)
            ax.set_xlabel("optimizer steps on the attack part")
            ax.set_xticks([p["budget"] for p in section["unlearned"]])
            ax.set_ylabel(_metric_label(metric, directions.get(metric)), fontsize=9)
            ax.grid(True, alpha=0.3)
    fig.suptitle(
        f"{title}: residual-knowledge probes, scored on the held-out part of the forget set", fontsize=11
    )
    handles, labels = axes[0][0].get_legend_handles_labels()
    _legend_below(fig, handles, labels, 3)
    fig.savefig(path, dpi=DPI)
    return True


def probe_comparison(probes: dict[str, dict], path: Path) -> bool:
    """Several runs' relearning / Piggyback curves on one axis per probe and metric, side by side.

    The way to see whether a remedy (SAM, UNDO) keeps forgetting from coming back: the plain method's
    run and the remedied runs in one panel, with the retain-only reference probed the same way.
    Needs two or more runs probed with the same budgets.
    """
    runs = {label: probe for label, probe in probes.items() if any(p in probe for p in PROBE_TITLES)}
    if len(runs) < 2:
        return False
    first = next(iter(runs.values()))
    names = [p for p in PROBE_TITLES if all(p in probe for probe in runs.values())]
    if not names:
        return False
    metrics = [m for m in PROBE_METRICS if m in first[names[0]]["unlearned"][0]["metrics"]]
    directions = first.get("directions", {})
    fig = _figure(3.3 * len(metrics), 3.0 * len(names) + 0.9 + 0.25 * len(runs))
    axes = fig.subplots(len(names), len(metrics), squeeze=False)
    for row, name in enumerate(names):
        for col, metric in enumerate(metrics):
            ax = axes[row][col]
            reference = first[name]["reference"]
            ax.plot([p["budget"] for p in reference], [p["metrics"][metric]["value"] for p in reference],
                    color="0.45", marker="s", ms=7, ls="--", label="retain-only reference, probed")  # fmt: skip
            for i, (label, probe) in enumerate(runs.items()):
                points = probe[name]["unlearned"]
                ax.plot([p["budget"] for p in points], [p["metrics"][metric]["value"] for p in points],
                        color=f"C{i % 10}", marker="o", ms=5, label=label)  # fmt: skip
            ax.set_title(f"{PROBE_TITLES[name]}: {_metric_label(metric, None)}", fontsize=10)
            ax.set_xlabel("optimizer steps on the attack part")
            ax.set_ylabel(_metric_label(metric, directions.get(metric)), fontsize=9)
            ax.grid(True, alpha=0.3)
    fig.suptitle(
        "residual-knowledge probes side by side, scored on the held-out part of the forget set", fontsize=11
    )
    handles, labels = axes[0][0].get_legend_handles_labels()
    _legend_below(fig, handles, labels, 3)
    fig.savefig(path, dpi=DPI)
    return True


def quant_curves(probe: dict, path: Path, title: str) -> bool:
    """Quantization probe: forget metrics and membership AUCs at each bit width, for the three models."""
    quant = probe.get("quant")
    if not quant:
        return False
    directions = probe.get("directions", {})
    bits = list(quant["unlearned"])
    first = quant["unlearned"][bits[0]]["metrics"]
    metrics = [m for m in QUANT_METRICS if m in first]
    cols = min(len(metrics), 3)
    rows = -(-len(metrics) // cols)
    fig = _figure(3.6 * cols, 3.0 * rows + 0.9)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    models = (
        ("reference", "0.45", "s", "--", 8),
        ("original", "C3", "^", ":", 7),
        ("unlearned", "C0", "o", "-", 5),
    )
    names = {
        "unlearned": "unlearned model",
        "original": "original model",
        "reference": "retain-only reference",
    }
    for ax, metric in zip(axes, metrics):
        for who, color, marker, ls, size in models:
            if who not in quant:
                continue
            ys = [quant[who][b]["metrics"].get(metric, {}).get("value", np.nan) for b in bits]
            ax.plot(range(len(bits)), ys, color=color, marker=marker, ms=size, ls=ls, label=names[who])
        ax.set_xticks(range(len(bits)), [f"{b}-bit" if str(b).isdigit() else str(b) for b in bits])
        ax.set_xlabel("weights")
        ax.set_ylabel(_metric_label(metric, directions.get(metric)), fontsize=9)
        ax.set_title(_metric_label(metric, None), fontsize=10)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    fig.suptitle(f"{title}: quantization probe (round-to-nearest), whole forget set", fontsize=11)
    handles, labels = axes[0].get_legend_handles_labels()
    _legend_below(fig, handles, labels, 3)
    fig.savefig(path, dpi=DPI)
    return True


def _series(log: list[dict], key: str) -> tuple[list[float], list[float]]:
    rows = [r for r in log if isinstance(r.get(key), (int, float)) and "step" in r]
    return [r["step"] for r in rows], [float(r[key]) for r in rows]


def training_curves(log: list[dict], path: Path, title: str) -> list[str]:
    """Panels for whatever train_log.jsonl holds; returns the panel titles drawn (empty: nothing drawn)."""
    steps = [r for r in log if "loss" in r]  # per-step records; the closing summary has `train_loss`
    keys = sorted({k for r in steps for k in r})
    groups = {
        "loss terms (minimized)": ["loss", *[k for k in keys if k.startswith("loss_")]],
        "gradient norms": [k for k in keys if k == "grad_norm" or k.startswith("grad_norm_")],
        "gradient cosine": [k for k in keys if k.startswith("cos_")],
        "learning rate": ["learning_rate"] if "learning_rate" in keys else [],
    }
    panels = {t: ks for t, ks in groups.items() if ks and steps}
    gen = [r for r in log if "gen_eta_star" in r]
    if gen:
        panels["GeN learning-rate fits"] = ["gen"]
    stop = [r for r in log if "stop_decision" in r]
    if stop:
        panels["stop rule: forget vs holdout"] = ["stop"]
    if not panels:
        return []
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig = _figure(4.2 * cols, 3.1 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (panel, ks) in zip(axes, panels.items()):
        if ks == ["gen"]:
            _gen_panel(ax, gen)
        elif ks == ["stop"]:
            _stop_panel(ax, stop, next((r for r in log if "stop_reason" in r), None))
        else:
            for k in ks:
                x, y = _series(steps, k)
                ax.plot(x, y, lw=1.4, label=k, marker="." if len(x) < 40 else None)
            if panel == "gradient cosine":
                ax.axhline(0, color="0.5", lw=0.8)
                ax.set_ylim(-1.05, 1.05)
            elif panel != "loss terms (minimized)":  # norms and rates are >= 0; a constant lr reads plainly
                ax.set_ylim(bottom=0)
            ax.legend(loc="best", fontsize=8, framealpha=0.8)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.grid(True, alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(f"{title}: training (train_log.jsonl)", fontsize=11)
    fig.savefig(path, dpi=DPI)
    return list(panels)


def _gen_panel(ax, gen: list[dict]) -> None:
    """The lr GeN used at each probe, the fitted optimum eta* of accepted fits, and the rejected fits."""
    x = [r["step"] for r in gen]
    ax.plot(x, [r["gen_lr"] for r in gen], color="C0", lw=1.4, marker=".", label="lr in use (gen_lr)")
    ok = [r for r in gen if r.get("gen_accepted")]
    bad = [r for r in gen if not r.get("gen_accepted")]
    if ok:
        ax.scatter([r["step"] for r in ok], [r["gen_eta_star"] for r in ok], color="C2", s=22, zorder=3,
                   label="accepted fit: eta*")  # fmt: skip
    if bad:
        ax.scatter([r["step"] for r in bad], [r["gen_lr"] for r in bad], color="C3", marker="x", s=28, zorder=3,
                   label="rejected fit (lr kept)")  # fmt: skip
    rate = gen[-1].get("gen_acceptance_rate")
    shown = [r["gen_lr"] for r in gen] + [r["gen_eta_star"] for r in ok]
    if min(shown) > 0:  # eta* can lie orders of magnitude from the lr in use
        ax.set_yscale("log")
    ax.set_ylabel("learning rate")
    ax.legend(fontsize=8, title=f"acceptance {rate:.0%}" if rate is not None else None, title_fontsize=8)


def _stop_panel(ax, checks: list[dict], end: dict | None) -> None:
    """The stop rule's gap (forget vs holdout; 0 = indistinguishable) at each check, on the whole forget
    set and its trained and held-out parts, the retain loss's relative rise, the estimated utility's
    drop (with --stop_utility_tolerance), the check it kept, and --stop_repair's retain-only steps after it
    (shaded; the repaired weights' gap as a diamond)."""
    repair = [r for r in checks if r.get("stop_phase") == "repair"]
    # Under --auto the utility is estimated at some checks only, and at the end on the kept weights (`kept`).
    utility = sorted(
        (r["step"], r["stop_utility_drop"]) for r in checks if r.get("stop_utility_drop") is not None
    )
    checks = [r for r in checks if r.get("stop_phase") not in ("repair", "kept")]
    x = [r["step"] for r in checks]

    def values(key: str) -> list[float]:  # a screened check has no gap (None): a hole in the line
        return [math.nan if r.get(key) is None else r[key] for r in checks]

    ax.plot(x, values("stop_gap"), color="C0", lw=1.6, marker=".", label="gap, whole forget set")
    ax.plot(x, values("stop_gap_trained"), color="C1", lw=1.0, ls="--", label="gap, trained part")
    if any(r.get("stop_screened") for r in checks):
        ax.plot(x, values("stop_gap_loss_auc"), color="0.55", lw=1.0, marker="x", ms=4,
                label="answer-loss AUC gap (screening)")  # fmt: skip
    held = [(r["step"], r["stop_gap_heldout"]) for r in checks if r.get("stop_gap_heldout") is not None]
    if held:
        ax.plot(*zip(*held), color="C2", lw=1.0, ls=":", label="gap, held-out part")
    ax.plot(x, values("stop_retain_rise"), color="C3", lw=1.0, ls="-.", label="retain loss rise")
    if repair and repair[-1]["step"] > repair[0]["step"]:
        ax.axvspan(repair[0]["step"], repair[-1]["step"], color="C2", alpha=0.12, label="retain-only repair")
        scored = [r for r in repair if r.get("stop_gap") is not None]
        if scored:
            ax.plot(
                scored[-1]["step"], scored[-1]["stop_gap"], "D", color="C0", ms=5, label="gap after repair"
            )
    if utility:
        ax.plot(*zip(*utility), color="C4", lw=1.0, ls=":", marker="^", ms=3, label="estimated utility drop")
    ax.axhline(0, color="0.5", lw=0.8)
    if end is not None and end.get("stop_best_step") is not None:
        ax.axvline(end["stop_best_step"], color="k", lw=0.8, ls="--")
        ax.text(end["stop_best_step"], 0.03, f" kept: step {end['stop_best_step']} ({end['stop_reason']})",
                transform=ax.get_xaxis_transform(), fontsize=7, ha="right", va="bottom", rotation=90)  # fmt: skip
    ax.set_ylabel(f"{checks[0]['stop_statistic']} gap / relative rise")
    # Center left is clear of the gaps (near the top) and of the retain rise (near 0).
    ax.legend(fontsize=7, loc="center left", framealpha=0.8)
