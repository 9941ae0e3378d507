"""The model card pushed with a run: what was forgotten, how, how well, and what that does not prove.

`build_card(run_dir, repo_id, adapter=...)` reads only the run directory (`unlearn_config.yaml`,
`eval.json`, `run_info.json`, `train_log.jsonl`, the weights' `config.json` and safetensors header)
and, where the data folder still exists, counts the forget and retain rows. The metadata block is
`huggingface_hub.ModelCardData`: base model, tags, datasets and every number of eval.json as
`model-index` results, so the Hub and other tools read them without parsing prose. The body
repeats the numbers as a table with each metric's direction, names the reference that forget
quality was measured against, and cites the method's paper and TOFU (arXiv 2401.06121), whose
metrics these are. Each number is tied to the eval sets it was measured on, by their split names in
eval.json: membership inference and privleak to the forget set against the holdout set, model
utility to the retain set, real authors and world facts.

A local model folder is never named by its path on the training machine (`push.local_name`). A
model of the built-in world (`models.build_default_models`) is said to be one, with its parameter
count: a toy trained on a synthetic world to demonstrate the pipeline, not a useful language model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..data.world import read_world_config
from ..methods import get_method
from ..models.loading import is_missing_local_path
from ..models.sources import BUILTIN_MODELS, PREFIX, is_builtin
from ..runs.folder import RunError, read_run_config
from ..runs.redact import HUB_SNAPSHOT, WORLD_MODELS, known_paths, local_name, redact_paths

TOFU = "arXiv:2401.06121"
GEN = "arXiv:2407.02772"
NGDIFF = "arXiv:2410.22086"
SAM = "arXiv:2502.05374"
MUSE = "arXiv:2407.06460"
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
    "2502.05374": "Towards LLM Unlearning Resilient to Relearning Attacks: A Sharpness-Aware Minimization "
    "Perspective and Beyond",
}
SPLIT_ROLES = {"forget": "forget set", "retain": "retain set", "ra": "real authors", "wf": "world facts",
               "holdout": "holdout set"}  # fmt: skip
UTILITY_ROLES = ("retain", "ra", "wf")  # model utility's eval sets (metrics.MODEL_UTILITY_INPUTS)
ATTACKS = {"loss": "LOSS", "zlib": "zlib", "min_k": "Min-K%", "min_k_plus_plus": "Min-K%++",
           "reference": "loss minus the reference's loss"}  # fmt: skip
MEASURES = {"prob": "probability", "rouge_l": "ROUGE-L recall", "truth_ratio": "truth ratio",
            "fact_recall": "fact recall", "quality": "quality", "utility": "utility"}  # fmt: skip
HEADLINE = ("forget_quality", "model_utility")
DIRECTIONS = {
    "higher": "higher is better",
    "lower": "lower is better",
    "closer_to_reference": "closer to the retain-only reference is better",
    "closer_to_0.5": "closer to 0.5 (chance) is better",
    "closer_to_0": "closer to 0 is better",
}
WORLD_ROLES = {"base": ("base model", "pretrained on the world's analog facts"),
               "target": ("target model", "fine-tuned on every fictitious author")}  # fmt: skip
DATA_CARDS = Path(__file__).resolve().parents[2] / "data_cards"


def read_run(run_dir: Path) -> dict:
    """The records of a run directory that the card is made from (eval and run info may be absent)."""

    from ..eval.report import training_end
    from ..eval.runs import read_train_log
    from ..eval.tofu import load_eval

    info, log = run_dir / "run_info.json", run_dir / "train_log.jsonl"
    try:
        info = json.loads(info.read_text(encoding="utf-8")) if info.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        info = None
    if not isinstance(info, dict):
        raise RunError(
            f"{run_dir / 'run_info.json'} is damaged (not a JSON object); restore the file the run wrote"
        )
    steps = read_train_log(log) if log.is_file() else []
    return {
        "config": read_run_config(run_dir, required=True),
        "eval": load_eval(run_dir / "eval.json") if (run_dir / "eval.json").is_file() else None,
        "info": info,
        "steps": max((s["step"] for s in steps if "step" in s), default=None),
        # Epochs as run (a step limit or the stop rule ends a run before its configured epochs).
        "epochs": max((s["epoch"] for s in steps if isinstance(s.get("epoch"), (int, float))), default=None),
        # Why training ended (the stop rule, its repair, --vanish_stop): the sentence report.md shows.
        "ended": training_end(steps),
        # --auto that started again in its second regime (core/auto.py): the settings above are that regime's.
        "fallback": next((s["auto_fallback"] for s in steps if "auto_fallback" in s), None),
    }


def _undo_text(undo: dict, method: str, steps: str, settings: str) -> str:
    """The Training sentence of a `distill` run: what UNDO did (its steps are the distillation's), then the
    unlearning run it started from, whose settings the rest of the recipe holds."""
    source = local_name(str(undo.get("source_run")), None) if undo.get("source_run") else "(not recorded)"
    splits = ", ".join(f"`{s}`" for s in undo.get("splits") or []) or "(not recorded)"
    return (
        f"Made with UNDO ({undo.get('paper', 'arXiv 2506.06278')}) from the unlearned run `{source}` (method "
        f"`{method}`): its weights were mixed with a share `{undo.get('alpha')}` of a fresh initialization "
        f"(scale `{undo.get('noise_beta')}`) and distilled from it for {steps} on {splits} "
        f"({undo.get('distill_rows')} examples) with AdamW at learning rate `{undo.get('learning_rate')}`, "
        f"a `{undo.get('lr_scheduler_type')}` schedule with `{undo.get('warmup_steps')}` warm-up steps, batch "
        f"`{undo.get('per_device_train_batch_size')}` per device, accumulation "
        f"`{undo.get('gradient_accumulation_steps')}`, seed `{undo.get('seed')}`. The unlearning run's own "
        f"settings: {settings}. "
    )


def _repair_note(config: dict, ended: str | None) -> str:
    """The repair's own optimizer, when a run repaired (core/repair.py): its steps are not the method's."""
    if not ended or "repair steps" not in ended:
        return ""
    return (
        f"The repair steps train on retain questions alone with AdamW at learning rate "
        f"`{config.get('stop_repair_lr')}` (`--stop_repair`). "
    )


def _resume_note(resumes: list | None) -> str:
    """How the run was interrupted and resumed (`run_info.json`), if it was: a model-only checkpoint started
    the optimizer and schedule afresh, which a reader reproducing the run needs to know."""
    if not resumes:
        return ""
    names = ", ".join(f"`{r.get('checkpoint')}`" for r in resumes)
    fresh = [f"`{r.get('checkpoint')}`" for r in resumes if r.get("optimizer_restored") is False]
    note = f"It was interrupted and resumed {_plural(len(resumes), 'time')}, from {names}"
    if fresh:
        note += (
            f"; {', '.join(fresh)} held the model only, so the optimizer and schedule started afresh there"
        )
    return note + ". "


def _fallback_note(fallback: dict | None) -> str:
    if not fallback:
        return ""
    drop = fallback.get("utility_drop")
    why = (
        f" after its estimate of model utility fell {100 * drop:.0f}% at step {fallback.get('at_step')}"
        if drop
        else ""
    )
    return (
        f"The command's `--auto` first unlearned in large SGD steps; it started again from the original weights in "
        f"its second regime (these settings){why} (llm-unlearn docs/auto.md). "
    )


def world_model(name_or_path: str, run_dir: Path) -> dict | None:
    """{"size", "parameters"} when the run's model is one of the built-in world's toy models, else None.

    Told by the cache folder `models.build_default_models` wrote it to (`world-SIZE-HASH/ROLE`), or,
    where that folder was moved, by the run's `config.json` having the dimensions of a `tiny.MODEL_SIZES`
    entry. The count is of the run's own weights (their safetensors headers), tied embeddings once.
    """
    from safetensors import safe_open

    from ..models.tiny import MODEL_SIZES

    folder = next((part for part in Path(name_or_path).parts if WORLD_MODELS.fullmatch(part)), None)
    if folder is not None:
        size = folder.split("-")[1]
    else:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
        size = next((name for name, dims in MODEL_SIZES.items() if config.get("model_type") == "llama"
                     and all(config.get(k) == v for k, v in dims.items())), None)  # fmt: skip
        if size is None:
            return None
    parameters = 0
    for weights in run_dir.glob("model*.safetensors"):
        with safe_open(weights, "pt") as f:
            parameters += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return {"size": size, "parameters": parameters}


def describe_model(name_or_path: str) -> tuple[str | None, str]:
    """(Hub id for the `base_model` metadata or None, how the card names the model).

    A local folder is named without the machine's path: a Hugging Face cache snapshot by its Hub id,
    a model of the built-in world as such, any other folder by its name alone.
    """
    if is_builtin(name_or_path):
        spec = BUILTIN_MODELS[name_or_path[len(PREFIX) :]]
        return spec.upstream, f"[{spec.upstream}](https://huggingface.co/{spec.upstream}) ({spec.note})"
    if match := HUB_SNAPSHOT.search(name_or_path):
        name_or_path = match["id"].replace("--", "/")
    elif Path(name_or_path).expanduser().exists() or is_missing_local_path(name_or_path):
        # The Hub only links `base_model` to a model id, so a local folder is named in the text alone.
        path = Path(name_or_path).expanduser().absolute()
        if any(WORLD_MODELS.fullmatch(part) for part in path.parts[:-1]):
            role, what = WORLD_ROLES.get(path.name, (f"model `{path.name}`", None))
            if path.name.startswith("retain-"):
                split = path.name.removeprefix("retain-")
                role, what = f"retain-only model for `{split}`", f"trained without the `{split}` authors"
            detail = f", {what}" if what else ""
            return None, f"the built-in world's {role} (`{local_name(str(path))}`{detail})"
        return None, f"the local model folder `{local_name(str(path))}` (not a Hub id)"
    return name_or_path, f"[{name_or_path}](https://huggingface.co/{name_or_path})"


def toy_note(toy: dict) -> str:
    """What the card says first about a model of the built-in world."""
    return (
        f"**This is a toy model.** It is the built-in world's `{toy['size']}`-size Llama of "
        f"{toy['parameters']:,} parameters ({toy['parameters'] / 1e6:.2g}M), trained from scratch by llm-unlearn "
        "on a synthetic world of fictitious authors to demonstrate the unlearning pipeline end to end. It is "
        "not a useful language model: it has seen no text but that world's facts and questions."
    )


def describe_data(config: dict, *, count: bool = True) -> dict:
    """What the data is: its Hub id (or None), a readable name, a model-index type, its data card, row counts.

    Rows are counted only where the data folder still exists (and `count` is set).
    """
    data_dir, hub_id = config.get("data_dir"), config.get("dataset_name")
    if data_dir is None:
        name, kind, card = f"TOFU-format dataset `{hub_id}` on the Hub", hub_id, "tofu.md"
    elif (world := read_world_config(data_dir)) is not None:
        name = f"the built-in fictitious-author world ({world.n_authors} authors, seed {world.seed})"
        kind, card = "llm-unlearn-world", "world.md"
    else:
        name = f"a local TOFU-format folder `{local_name(str(Path(data_dir).absolute()))}`"
        kind, card = "local-tofu-format", "tofu.md"
    counts = {}
    if count and data_dir is not None and Path(data_dir).is_dir():
        from ..data.qa import load_split

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
    """One model-index entry per number in eval.json, on the eval split(s) it was computed from."""
    splits = result["meta"].get("splits", {})
    return [
        EvalResult(
            task_type="text-generation",
            task_name="Machine unlearning (TOFU metrics)",
            dataset_type=data["type"],
            dataset_name=data["name"].replace("`", ""),
            dataset_config=config["forget_split"],
            dataset_split=eval_sets(name, splits)[1],
            metric_type=name,
            metric_name=f"{_label(name)} ({_direction(entry)})",
            metric_value=entry["value"],
        )
        for name, entry in _ordered(result["metrics"])
    ]


def eval_sets(name: str, splits: dict) -> tuple[str, str | None]:
    """(Where the table says metric `name` was measured, its model-index split), from eval.json's split names.

    Membership inference scores the forget set (members) against the holdout set (never trained on);
    model utility averages the retain set, real authors and world facts.
    """

    def named(role: str) -> str:
        return f"{SPLIT_ROLES[role]} (`{splits[role]['name']}`)"

    if name.startswith("mia_auc_") or name == "privleak":
        where = f"{named('forget')} vs {named('holdout')}"
        if name == "privleak":
            where += ", this model's AUC vs the reference's"
        return where, f"{splits['forget']['name']} vs {splits['holdout']['name']}"
    if name == "model_utility":
        roles = [role for role in UTILITY_ROLES if role in splits]
        return ", ".join(map(named, roles)), ", ".join(splits[role]["name"] for role in roles) or None
    role = name.split("_", 1)[0]
    if role not in splits:
        return "-", None
    if name == "forget_quality":
        return f"{named('forget')} vs reference", splits["forget"]["name"]
    return named(role), splits[role]["name"]


def _label(name: str) -> str:
    """`forget_rouge_l` -> "Forget ROUGE-L recall"; names we do not know are shown as they are."""
    if name.startswith("mia_auc_"):
        attack = name.removeprefix("mia_auc_")
        return f"Membership-inference AUC, {ATTACKS.get(attack, attack)}"
    if name == "privleak":
        return "PrivLeak (Min-K% AUC relative to the reference's)"
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
    lines = ["## Evaluation", ""]
    scored = splits.get("forget", {}).get("name") if isinstance(splits.get("forget"), dict) else None
    unlearned = config.get("forget_split")
    if scored and unlearned and scored not in (unlearned, f"{unlearned}_perturbed"):
        # An eval.json made with another --forget_split: its forget metrics are not about what was unlearned.
        lines += [f"**Note:** these forget metrics were measured on `{scored}`, not on the split this model "
                  f"unlearned (`{unlearned}`).", ""]  # fmt: skip
    lines += ["| metric | eval set | value | direction |", "|---|---|---|---|"]
    for name, entry in _ordered(result["metrics"]):
        where = eval_sets(name, splits)[0]
        lines.append(f"| {_label(name)} (`{name}`) | {where} | {entry['value']:.4g} | {_direction(entry)} |")
    sizes = ", ".join(f"{SPLIT_ROLES[r]} {s['n']}" for r, s in splits.items() if r in SPLIT_ROLES)
    lines += ["", f"Questions per eval set: {sizes}."]
    ref = meta.get("forget_quality_reference")
    if ref is not None:
        lines += [
            "",
            f"**Forget quality** is the p-value of a two-sample Kolmogorov-Smirnov test between this model's "
            f"per-question truth ratios on the forget eval set and those of the retain-only reference, "
            f"{_reference_text(ref, config)}, a model trained without the forget authors ({ref['n']} questions "
            f"each, {TOFU}). A high value means the two distributions cannot be told apart; it says nothing "
            "about any single fact.",
        ]
        floor = result["metrics"].get("forget_quality", {}).get("smallest_possible")
        if floor is not None:
            lines[-1] += (
                f" With {_plural(ref['n'], 'question')} it cannot fall below {floor:.3g}, whatever the model does: it cannot "
                "show that forgetting failed."
            )
    if "holdout" in splits and any(name.startswith("mia_auc_") for name in result["metrics"]):
        lines += [
            "",
            f"**Membership inference** (`mia_auc_*`) tells the forget set (`{splits['forget']['name']}`, trained "
            f"on before unlearning) from the holdout set (`{splits['holdout']['name']}`, fictitious authors never "
            "trained on) by each attack's per-question score: 0.5 means the forget set looks unseen, 1 that it is "
            "plainly remembered, below 0.5 that it looks less familiar than unseen data. **PrivLeak** "
            f"(`privleak`, {MUSE}) compares this model's Min-K% AUC on the same two sets with the reference's: "
            "0 is ideal, -100 a model that still holds the forget set.",
        ]
    generation = meta.get("generation", {})
    lines += [
        "",
        f"Settings: truth ratio `{meta.get('truth_ratio_variant')}`, prompt format `{meta.get('prompt_format')}`, "
        f"greedy generation of at most {generation.get('max_new_tokens')} new tokens for ROUGE-L, dtype "
        f"`{meta.get('dtype')}`, on {meta.get('hardware')}. Per-question values are in `eval.json`.",
    ]
    return lines


def _reference_text(ref: dict, config: dict) -> str:
    """The reference model by name (never its local path), and its eval file when one was given."""
    names = [describe_model(ref["model"])[1]] if ref.get("model") else []
    if config.get("reference_eval"):
        names.append(f"evaluated in `{local_name(str(Path(config['reference_eval']).absolute()))}`")
    return ", ".join(names) or "whose model the reference evaluation did not record"


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


def _usage_section(
    repo_id: str, adapter: bool, base_text: str, base_id: str | None, remote: bool = False
) -> list[str]:
    trust = ", trust_remote_code=True" if remote else ""
    if not adapter:
        code = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{repo_id}"{trust})',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{trust})',
        ]
        # `remote`: push publishes code files the config names (code_files), which from_pretrained runs.
        note = [
            "The model runs code shipped in this repo (the `.py` files); read it before you trust it.",
            "",
        ]
        return ["## Use", "", *(note if remote else []), "```python", *code, "```"]
    code = [
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base_id or "BASE_MODEL"}"{trust})',
        f'model = PeftModel.from_pretrained(base, "{repo_id}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{trust})',
    ]
    return [
        "## Use",
        "",
        f"This repo holds the LoRA adapter; apply it to {base_text}."
        + (
            ""
            if base_id
            else " (`adapter_config.json` names that folder without the training machine's path.)"
        ),
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
  on related text; {relearning}
- **Collateral damage.** Model utility covers the retain set, real authors and world facts only;
  abilities not measured here may be degraded.
- **Inherited properties.** The base model's license applies to this model. Its biases and its
  knowledge outside the forget set were not targeted by this procedure."""


NOT_PROBED = "these results do not measure resistance to that."


def _relearning_text(probe: dict | None) -> str:
    """What `llm-unlearn probe` measured, in a sentence per probe (its forget probability at the smallest and
    largest budget, or at full and lowest precision), or that nothing was measured."""
    if probe is None:
        return NOT_PROBED
    meta = probe["meta"]
    rows = [
        r for r in probe.get("rows", []) if r.get("metric") == "forget_prob" and r.get("recovery") is not None
    ]
    found = []
    for name in ("relearn", "piggyback"):
        points = sorted((r for r in rows if r["probe"] == name), key=lambda r: r["budget"])
        if len(points) > 1:
            a, b = points[0], points[-1]
            found.append(
                f"`{name}` ({b['budget']} steps on {meta['n_attack']} forget questions; the other "
                f"{meta['n_heldout']} scored): forget probability {a['value']:.3f} -> {b['value']:.3f}, "
                f"recovery {a['recovery']:+.2f} -> {b['recovery']:+.2f}"
            )
    quant = sorted(
        (r for r in rows if r["probe"] == "quant"),
        key=lambda r: -int(r["bits"]) if str(r["bits"]).isdigit() else 0,
    )
    if len(quant) > 1:
        a, b = quant[0], quant[-1]
        found.append(
            f"`quant` ({a['bits']} -> {b['bits']} bits, all {meta['n_forget']} forget questions): forget "
            f"probability {a['value']:.3f} -> {b['value']:.3f}, recovery {a['recovery']:+.2f} -> {b['recovery']:+.2f}"
        )
    if not found:
        return NOT_PROBED
    return (
        "`llm-unlearn probe` measured it on this model (`probe.json`; recovery 0 is the retain-only reference's "
        "level, 1 the original model's): " + "; ".join(found) + "."
    )


def code_files(run_dir: Path) -> list[Path]:
    """The Python files a model with its own code needs beside its weights: `save_pretrained` writes the
    modules its config.json's (or tokenizer_config.json's) `auto_map` names, with what they import, into
    the run; without them the published config names code that is not there and nobody can load it."""
    named = False
    for name in ("config.json", "tokenizer_config.json"):
        path = run_dir / name
        try:
            auto_map = (
                json.loads(path.read_text(encoding="utf-8")).get("auto_map") if path.is_file() else None
            )
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            auto_map = None  # check_run has refused a damaged config.json; a tokenizer's is its own
        refs = auto_map.values() if isinstance(auto_map, dict) else []
        for ref in (r for v in refs for r in (v if isinstance(v, list) else [v]) if isinstance(r, str)):
            named |= "--" not in ref  # "repo--module.Class" is code in another repository, fetched there
    # The named modules and the modules they import (check_run has loaded them: none is missing).
    return sorted(run_dir.glob("*.py")) if named else []


def build_card(
    run_dir: str | Path, repo_id: str, *, adapter: bool, data_card: str | None = None
) -> ModelCard:
    """The README.md for `repo_id` from the records in `run_dir` (`adapter`: the repo holds a LoRA adapter).

    `data_card` is the name of the data card file uploaded beside the card, if any.
    """
    from ..eval.runs import run_probe

    run_dir = Path(run_dir)
    run = read_run(run_dir)
    config, result, info = run["config"], run["eval"], run["info"]
    method = get_method(config["method"])
    base_id, base_text = describe_model(config["model_name_or_path"])
    toy = world_model(config["model_name_or_path"], run_dir)
    data = describe_data(config)
    model_name = repo_id.split("/")[-1]
    papers = [p for p in (method.paper, NGDIFF if config.get("combine") == "normalized" else None,
                          GEN if config.get("gen") else None, SAM if config.get("sam_rho") else None, TOFU) if p]  # fmt: skip
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
    hyper = [("optim", "optimizer"), ("learning_rate", "learning rate"), ("max_steps", "max steps"),
             ("num_train_epochs", "epochs set"),
             ("per_device_train_batch_size", "forget batch per device"), ("processes", "processes"),
             ("retain_batch_size", "retain batch"),
             ("gradient_accumulation_steps", "accumulation"), ("forget_weight", "forget weight"),
             ("retain_weight", "retain weight"), ("retain_loss", "retain loss"), ("combine", "combine"),
             ("gen", "GeN learning rate"), ("use_lora", "LoRA"), ("seed", "seed")]  # fmt: skip
    steps = _plural(run["steps"], "optimizer step") if run["steps"] is not None else "steps not recorded"
    if run.get("epochs") is not None:
        steps += f" ({run['epochs']:.3g} epochs)"
    shown = {True: "on", False: "off"}  # a switch reads as one ("GeN learning rate `off`"), not a Python bool
    settings = ", ".join(
        f"{label} `{shown.get(config[key], config[key]) if isinstance(config[key], bool) else config[key]}`"
        for key, label in hyper
        if key in config
    )
    if config.get("sam_rho"):
        settings += f", sharpness-aware radius `{config['sam_rho']}`"
    body = [
        f"# {model_name}",
        "",
        f"This {what} is {base_text} after unlearning the forget split `{config['forget_split']}` with "
        f"`{method.name}`{paper}{summary}. It was made {'and evaluated ' if result else ''}with llm-unlearn.",
        "",
        *([toy_note(toy), ""] if toy else []),
        *_usage_section(repo_id, adapter, base_text, base_id, bool(code_files(run_dir))),
        "",
        *_data_section(config, data, data_card),
        "",
        *_metrics_section(result, config, data),
        "",
        "## Training",
        "",
        (
            _undo_text(config["undo"], method.name, steps, settings)
            if isinstance(config.get("undo"), dict)
            else f"Method `{method.name}`{paper}; {steps}. Settings: {settings}. "
        )
        + (f"{run['ended']} " if run.get("ended") else "")
        + _repair_note(config, run.get("ended"))
        + _fallback_note(run.get("fallback"))
        + _resume_note(info.get("resumes"))
        + "The full resolved recipe is below and in `unlearn_config.yaml`; per-step losses are in "
        "`train_log.jsonl`.",
        "",
        "Command:",
        "",
        "```bash",
        redact_paths(info.get("command", "(not recorded)"), known=known_paths(run_dir, config)),
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
        redact_paths(
            (run_dir / "unlearn_config.yaml").read_text(encoding="utf-8").rstrip(),
            known=known_paths(run_dir, config),
        ),
        "```",
        "",
        "</details>",
        "",
        LIMITATIONS.format(relearning=_relearning_text(run_probe(run_dir))),
        "",
        "## Citation",
        "",
        "```bibtex",
        "\n\n".join(bibtex(p) for p in papers),
        "```",
        "",
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(body))
