"""A markdown report comparing eval.json results: a metric table, two plots, example generations.

Plots use matplotlib's object API with the Agg canvas (no pyplot, no display needed):
`fq_vs_mu.png` puts forget quality (log scale) against model utility, the usual TOFU trade-off plot
(arXiv 2401.06121, figure 5), and `forget_metrics.png` compares the forget-set metrics.
"""

from __future__ import annotations

from pathlib import Path

from .metrics import MODEL_UTILITY_INPUTS

HEADLINE = ("forget_quality", "model_utility")
FORGET = ("forget_prob", "forget_rouge_l", "forget_truth_ratio", "forget_fact_recall")
N_EXAMPLES = {"forget": 3, "retain": 2}


def _metric_order(results: dict[str, dict]) -> list[str]:
    present = {name for r in results.values() for name in r["metrics"]}
    preferred = [*HEADLINE, *FORGET, *MODEL_UTILITY_INPUTS, "retain_fact_recall"]
    return [m for m in preferred if m in present] + sorted(present - set(preferred))


def _fmt(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if name == "forget_quality" else f"{value:.4f}"


def _cell(text: str, limit: int = 160) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _value(result: dict, name: str) -> float | None:
    entry = result["metrics"].get(name)
    return None if entry is None else entry["value"]


def _fq_vs_mu_plot(results: dict[str, dict], path: Path) -> list[str]:
    """Scatter of the models that have forget quality; returns the names left out."""
    from matplotlib.figure import Figure

    have = {name: r for name, r in results.items() if _value(r, "forget_quality") is not None}
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    for name, r in have.items():
        # A KS p-value can underflow to 0; floor it so it still shows on the log axis.
        x, y = _value(r, "model_utility"), max(_value(r, "forget_quality"), 1e-300)
        ax.scatter([x], [y], s=40)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=9)
    ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.set_xlabel("model utility (higher is better)")
    ax.set_ylabel("forget quality, KS p-value (higher is better)")
    ax.grid(True, which="major", alpha=0.3)
    fig.savefig(path, dpi=120)
    return [name for name in results if name not in have]


def _forget_bar_plot(results: dict[str, dict], path: Path) -> None:
    from matplotlib.figure import Figure

    names = [m for m in FORGET if any(m in r["metrics"] for r in results.values())]
    fig = Figure(figsize=(max(5.5, 1.6 * len(names) * max(1, len(results)) / 2), 4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(results)
    for k, (model, r) in enumerate(results.items()):
        values = [_value(r, m) or 0.0 for m in names]
        ax.bar([i + k * width for i in range(len(names))], values, width, label=model)
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(names))], [m[7:] for m in names])
    ax.set_ylabel("forget set")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def write_report(results: dict[str, dict], out_dir: str | Path, title: str = "Unlearning report") -> Path:
    """Write `report.md`, `fq_vs_mu.png` and `forget_metrics.png` for the models in `results`.

    `results` maps a model label (e.g. target, retain, graddiff) to its eval.json dict; columns keep
    this order. A model without forget quality is listed in the table with "-" and left out of the
    scatter plot.
    """
    if not results:
        raise ValueError("write_report needs at least one result")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
    for m in models:
        meta = results[m]["meta"]
        ref = meta.get("forget_quality_reference", {}).get("path", "none")
        lines.append(
            f"- **{m}**: forget split `{meta.get('forget_split', meta.get('splits', {}).get('forget', {}).get('name'))}`, "
            f"truth ratio `{meta.get('truth_ratio_variant')}`, prompt `{meta.get('prompt_format')}`, "
            f"forget-quality reference `{ref}`"
        )

    lines += ["", "## Forget quality vs model utility", ""]
    if any(_value(r, "forget_quality") is not None for r in results.values()):
        missing = _fq_vs_mu_plot(results, out / "fq_vs_mu.png")
        lines.append("![forget quality vs model utility](fq_vs_mu.png)")
        if missing:
            lines += ["", f"Not plotted (no forget quality: no reference given): {', '.join(missing)}."]
    else:
        lines.append("No model has forget quality (no retain-only reference was given), so there is no plot.")

    lines += ["", "## Forget-set metrics", "", "![forget-set metrics](forget_metrics.png)"]
    _forget_bar_plot(results, out / "forget_metrics.png")

    lines += ["", "## Example generations", ""]
    for m in models:
        gens = results[m].get("generations", {})
        if not gens:
            continue
        lines += [f"### {m}", "", "| set | question | gold answer | generated |", "|---|---|---|---|"]
        for role, k in N_EXAMPLES.items():
            for g in gens.get(role, [])[:k]:
                lines.append(
                    f"| {role} | {_cell(g['question'])} | {_cell(g['answer'])} | {_cell(g['generated'])} |"
                )
        lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path
