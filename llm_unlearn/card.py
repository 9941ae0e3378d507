"""The model card pushed with a run: what was forgotten, how, how well, and what that does not prove.

`build_card(run_dir, repo_id, adapter=...)` reads only the run directory (`unlearn_config.yaml`,
`eval.json`, `run_info.json`, `train_log.jsonl`) and, where the data folder still exists, counts the
forget and retain rows. The metadata block is `huggingface_hub.ModelCardData`: base model, tags,
datasets and every number of eval.json as `model-index` results, so the Hub and other tools read
them without parsing prose. The body repeats the numbers as a table with each metric's direction,
names the reference that forget quality was measured against, and cites the method's paper and
TOFU (arXiv 2401.06121), whose metrics these are.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .methods import get_method
from .runio import is_missing_local_path
from .sources import BUILTIN_MODELS, PREFIX, is_builtin

TOFU = "arXiv:2401.06121"
GEN = "arXiv:2407.02772"
NGDIFF = "arXiv:2410.22086"
# Titles for the BibTeX entries of the papers our methods and options cite; the arXiv id is the key.
PAPER_TITLES = {
    "2401.06121": "TOFU: A Task of Fictitious Unlearning for LLMs",
    "2203.12817": "Continual Learning and Private Unlearning",
    "2410.22086": "Unlearning as multi-task optimization: A normalized gradient difference approach "
    "with an adaptive learning rate",
    "2407.02772": "Gradient descent with generalized Newton's method",
    "2305.18290": "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
    "2404.05868": "Negative Preference Optimization: From Catastrophic Collapse to Effective Unlearning",
    "2410.07163": "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM Unlearning",
    "2403.03218": "The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning",
    "2308.09971": "Disposable Transfer Learning for Selective Source Task Unlearning",
}
SPLIT_ROLES = {"forget": "forget set", "retain": "retain set", "ra": "real authors", "wf": "world facts"}
MEASURES = {"prob": "probability", "rouge_l": "ROUGE-L recall", "truth_ratio": "truth ratio",
            "fact_recall": "fact recall", "quality": "quality", "utility": "utility"}  # fmt: skip
HEADLINE = ("forget_quality", "model_utility")
DIRECTIONS = {
    "higher": "higher is better",
    "lower": "lower is better",
    "closer_to_reference": "closer to the retain-only reference is better",
}
DATA_CARDS = Path(__file__).resolve().parents[1] / "data_cards"


def read_run(run_dir: Path) -> dict:
    """The records of a run directory that the card is made from (eval and run info may be absent)."""

    def _json(name: str) -> dict | None:
        path = run_dir / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    log = run_dir / "train_log.jsonl"
    steps = (
        [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    )
    return {
        "config": yaml.safe_load((run_dir / "unlearn_config.yaml").read_text(encoding="utf-8")),
        "eval": _json("eval.json"),
        "info": _json("run_info.json") or {},
        "steps": max((s["step"] for s in steps if "step" in s), default=None),
    }


def base_model(name_or_path: str) -> tuple[str | None, str]:
    """(Hub id for the `base_model` metadata or None, how the card names the starting model)."""
    if is_builtin(name_or_path):
        spec = BUILTIN_MODELS[name_or_path[len(PREFIX) :]]
        return spec.upstream, f"[{spec.upstream}](https://huggingface.co/{spec.upstream}) ({spec.note})"
    if Path(name_or_path).expanduser().exists() or is_missing_local_path(name_or_path):
        # The Hub only links `base_model` to a model id, so a local folder is named in the text alone.
        return None, f"the local model folder `{name_or_path}` (not a Hub id)"
    return name_or_path, f"[{name_or_path}](https://huggingface.co/{name_or_path})"


def describe_data(config: dict, *, count: bool = True) -> dict:
    """What the data is: its Hub id (or None), a readable name, a model-index type, its data card, row counts.

    Rows are counted only where the data folder still exists (and `count` is set).
    """
    data_dir, hub_id = config.get("data_dir"), config.get("dataset_name")
    if data_dir is None:
        name, kind, card = f"TOFU-format dataset `{hub_id}` on the Hub", hub_id, "tofu.md"
    elif (Path(data_dir) / "world_config.json").is_file():
        world = json.loads((Path(data_dir) / "world_config.json").read_text())
        name = f"the built-in fictitious-author world ({world['n_authors']} authors, seed {world['seed']})"
        kind, card = "llm-unlearn-world", "world.md"
    else:
        name, kind, card = f"a local TOFU-format folder `{data_dir}`", "local-tofu-format", "tofu.md"
    counts = {}
    if count and data_dir is not None and Path(data_dir).is_dir():
        from .data import load_split

        for role in ("forget", "retain"):
            rows = load_split(config[f"{role}_split"], data_dir=data_dir)
            authors = len({r["author"] for r in rows}) if rows and "author" in rows[0] else None
            counts[role] = (len(rows), authors)
    hub_id = hub_id if data_dir is None else None
    return {"hub_id": hub_id, "name": name, "type": kind, "card": card, "counts": counts}


def data_card_path(config: dict) -> Path | None:
    """The data card (in this checkout of llm-unlearn) that documents the run's data, if there is one."""
    path = DATA_CARDS / describe_data(config, count=False)["card"]
    return path if path.is_file() else None


def eval_results(result: dict, config: dict, data: dict) -> list[EvalResult]:
    """One model-index entry per number in eval.json, on the eval split it was computed from."""
    splits = result["meta"].get("splits", {})
    out = []
    for name, entry in _ordered(result["metrics"]):
        role = name.split("_", 1)[0]
        out.append(
            EvalResult(
                task_type="text-generation",
                task_name="Machine unlearning (TOFU metrics)",
                dataset_type=data["type"],
                dataset_name=data["name"].replace("`", ""),
                dataset_config=config["forget_split"],
                dataset_split=splits[role]["name"] if role in splits else None,
                metric_type=name,
                metric_name=f"{_label(name)} ({_direction(entry)})",
                metric_value=entry["value"],
            )
        )
    return out


def _label(name: str) -> str:
    """`forget_rouge_l` -> "Forget ROUGE-L recall"; names we do not know are shown as they are."""
    role, _, measure = name.partition("_")
    prefix = {**SPLIT_ROLES, "model": "model"}.get(role, role).split(" set")[0]
    label = f"{prefix} {MEASURES.get(measure, measure.replace('_', ' '))}"
    return label[0].upper() + label[1:]


def _ordered(metrics: dict) -> list[tuple[str, dict]]:
    order = {name: i for i, name in enumerate(HEADLINE)}
    return sorted(metrics.items(), key=lambda item: order.get(item[0], len(order)))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _direction(entry: dict) -> str:
    return DIRECTIONS.get(entry["direction"], entry["direction"].replace("_", " "))


def bibtex(paper: str) -> str:
    arxiv_id = paper.removeprefix("arXiv:")
    title = PAPER_TITLES.get(arxiv_id)
    fields = ([f"  title         = {{{title}}},"] if title else []) + [
        f"  year          = {{20{arxiv_id[:2]}}},",
        f"  eprint        = {{{arxiv_id}}},",
        "  archivePrefix = {arXiv},",
        f"  url           = {{https://arxiv.org/abs/{arxiv_id}}},",
    ]
    return "\n".join([f"@misc{{arxiv{arxiv_id},", *fields, "}"])


def _metrics_section(result: dict | None, config: dict, data: dict) -> list[str]:
    if result is None:
        return ["## Evaluation", "", "This run was not evaluated (no `eval.json`): run `llm-unlearn eval` "
                "on it and push again to publish its results."]  # fmt: skip
    meta = result["meta"]
    splits = meta.get("splits", {})
    lines = ["## Evaluation", "", "| metric | eval set | value | direction |", "|---|---|---|---|"]
    for name, entry in _ordered(result["metrics"]):
        role = name.split("_", 1)[0]
        where = (
            f"{SPLIT_ROLES[role]} (`{splits[role]['name']}`)"
            if role in splits
            else "retain, real authors, world facts"
        )
        if name == "forget_quality":
            where = f"forget set (`{splits['forget']['name']}`) vs reference"
        lines.append(f"| {_label(name)} (`{name}`) | {where} | {entry['value']:.4g} | {_direction(entry)} |")
    sizes = ", ".join(f"{SPLIT_ROLES[r]} {s['n']}" for r, s in splits.items() if r in SPLIT_ROLES)
    lines += ["", f"Questions per eval set: {sizes}."]
    ref = meta.get("forget_quality_reference")
    if ref is not None:
        source = config.get("reference_eval") or ref.get("model") or ref.get("path")
        lines += [
            "",
            f"**Forget quality** is the p-value of a two-sample Kolmogorov-Smirnov test between this model's "
            f"per-question truth ratios on the forget eval set and those of the retain-only reference model "
            f"(`{source}`, a model trained without the forget authors), {ref['n']} questions each "
            f"({TOFU}). A high value means the two distributions cannot be told apart; it says nothing about "
            "any single fact.",
        ]
    generation = meta.get("generation", {})
    lines += [
        "",
        f"Settings: truth ratio `{meta.get('truth_ratio_variant')}`, prompt format `{meta.get('prompt_format')}`, "
        f"greedy generation of at most {generation.get('max_new_tokens')} new tokens for ROUGE-L, dtype "
        f"`{meta.get('dtype')}`, on {meta.get('hardware')}. Per-question values are in `eval.json`.",
    ]
    return lines


def _data_section(config: dict, data: dict, card_file: str | None) -> list[str]:
    def rows(role: str) -> str:
        if role not in data["counts"]:
            return "row count not available where this card was made"
        n, authors = data["counts"][role]
        return _plural(n, "question-answer pair") + (
            f" about {_plural(authors, 'fictitious author')}" if authors else ""
        )

    data_card = (
        f"[`{card_file}`]({card_file})" if card_file else f"`data_cards/{data['card']}` of llm-unlearn"
    )
    return [
        "## What was forgotten and what was kept",
        "",
        f"Data: {data['name']}; data card: {data_card}.",
        "",
        f"- **Forget set** `{config['forget_split']}` ({rows('forget')}): the model was trained to lose this "
        "knowledge.",
        f"- **Retain set** `{config['retain_split']}` ({rows('retain')}): the other fictitious authors, "
        "whose knowledge the method's retain term (if it has one) trains the model to keep.",
        "- **Real authors** and **world facts**: knowledge learnt before fine-tuning, evaluated only, to see "
        "what unlearning damaged beyond the fictitious authors.",
    ]


def _usage_section(repo_id: str, adapter: bool, base_text: str, base_id: str | None) -> list[str]:
    if not adapter:
        code = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
        ]
        return ["## Use", "", "```python", *code, "```"]
    code = [
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base_id or "BASE_MODEL"}")',
        f'model = PeftModel.from_pretrained(base, "{repo_id}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")',
    ]
    return [
        "## Use",
        "",
        f"This repo holds the LoRA adapter; apply it to {base_text}. (`adapter_config.json` names the "
        "path the base model had on the training machine.)",
        "",
        "```python",
        *code,
        "```",
    ]


LIMITATIONS = """## Intended use and limitations

Use this model to study unlearning: to compare methods, to probe what survives them, or as a
starting point for a stronger removal. Do not use it as evidence that any information has been
removed from it.

- **Empirical, not certified.** The numbers above are measured on a fixed set of questions. There is
  no formal guarantee (such as differential privacy or exact retraining) that the forget data's
  influence on the weights is gone; facts asked in other words, languages or formats may still come out.
- **Relative to a reference.** Forget quality compares this model with one retain-only model on one
  set of questions; a different reference, split or prompt format gives a different number, and a
  small forget set makes the test weak.
- **Relearning.** Knowledge suppressed by fine-tuning can come back after a little further training
  on related text; these results do not measure resistance to that.
- **Collateral damage.** Model utility covers the retain set, real authors and world facts only;
  abilities not measured here may be degraded.
- **Inherited properties.** The base model's license applies to this model. Its biases and its
  knowledge outside the forget set were not targeted by this procedure."""


def build_card(
    run_dir: str | Path, repo_id: str, *, adapter: bool, data_card: str | None = None
) -> ModelCard:
    """The README.md for `repo_id` from the records in `run_dir` (`adapter`: the repo holds a LoRA adapter).

    `data_card` is the name of the data card file uploaded beside the card, if any.
    """
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    config, result, info = run["config"], run["eval"], run["info"]
    method = get_method(config["method"])
    base_id, base_text = base_model(config["model_name_or_path"])
    data = describe_data(config)
    model_name = repo_id.split("/")[-1]
    papers = [p for p in (method.paper, NGDIFF if config.get("combine") == "normalized" else None,
                          GEN if config.get("gen") else None, TOFU) if p]  # fmt: skip
    papers = list(dict.fromkeys(papers))
    tags = ["llm-unlearn", "unlearning", method.name, "tofu"] + (["lora"] if adapter else [])
    card_data = ModelCardData(
        base_model=base_id,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-generation",
        tags=tags,
        datasets=[data["hub_id"]] if data["hub_id"] else None,
        model_name=model_name,
        eval_results=eval_results(result, config, data) if result else None,
    )
    what = "LoRA adapter" if adapter else "model"
    summary = f": {method.summary}" if method.summary else ""
    paper = f" ({method.paper})" if method.paper else ""
    hyper = [("learning_rate", "learning rate"), ("max_steps", "max steps"), ("num_train_epochs", "epochs"),
             ("per_device_train_batch_size", "forget batch per device"), ("retain_batch_size", "retain batch"),
             ("gradient_accumulation_steps", "accumulation"), ("forget_weight", "forget weight"),
             ("retain_weight", "retain weight"), ("retain_loss", "retain loss"), ("combine", "combine"),
             ("gen", "GeN learning rate"), ("use_lora", "LoRA"), ("seed", "seed")]  # fmt: skip
    steps = _plural(run["steps"], "optimizer step") if run["steps"] is not None else "steps not recorded"
    settings = ", ".join(f"{label} `{config[key]}`" for key, label in hyper if key in config)
    body = [
        f"# {model_name}",
        "",
        f"This {what} is {base_text} after unlearning the forget split `{config['forget_split']}` with "
        f"`{method.name}`{paper}{summary}. It was made and evaluated with llm-unlearn.",
        "",
        *_usage_section(repo_id, adapter, base_text, base_id),
        "",
        *_data_section(config, data, data_card),
        "",
        *_metrics_section(result, config, data),
        "",
        "## Training",
        "",
        f"Method `{method.name}`{paper}; {steps}. Settings: {settings}. "
        "The full resolved recipe is below and in `unlearn_config.yaml`; per-step losses are in "
        "`train_log.jsonl`.",
        "",
        "Command:",
        "",
        "```bash",
        info.get("command", "(not recorded)"),
        "```",
        "",
        "Versions: "
        + ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
        + (f", Python {info['python']}" if "python" in info else "")
        + ".",
        "",
        "<details><summary>Resolved recipe (unlearn_config.yaml)</summary>",
        "",
        "```yaml",
        (run_dir / "unlearn_config.yaml").read_text(encoding="utf-8").rstrip(),
        "```",
        "",
        "</details>",
        "",
        LIMITATIONS,
        "",
        "## Citation",
        "",
        "```bibtex",
        "\n\n".join(bibtex(p) for p in papers),
        "```",
        "",
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(body))
