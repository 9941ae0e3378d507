"""Can a model that never saw the forget or the holdout authors tell them apart? It should not.

    python benchmarks/exchangeability.py                  # seeds 0 1 2, default size: the "after" record
    PYTHONPATH=/tmp/old python benchmarks/exchangeability.py --label before   # an older llm_unlearn
    python benchmarks/exchangeability.py --report_only    # rewrite the .md from the JSON

For each world seed, the script writes the built-in world (`WORLD_SIZES[size]`, that seed), trains its
base model and the retain-only model of forget10 exactly as `models.build_default_models` does (its
`_pretrain` and `_finetune_from`, without the target model, which this measurement does not need), and
scores forget10 (members of nothing here) against holdout10 with the toolkit's membership inference
(`eval.mia.sample_scores` and `mia_metrics`, the calls `eval.tofu.evaluate` makes). Both sets are unseen
by this model, so every attack's AUC should sit near 0.5; the issue that asked for this measured a loss
AUC of 0.62 (Min-K%++ 0.72) on the construction before it.

Also recorded per seed, to explain an AUC away from 0.5: the share of answers holding a token that
never occurs in the model's training text (retain90 x phrasings + pretrain), and per author the mean
answer loss and how many of its two name parts (first, last) some retain90 author also has.

Records go to `<out>.json` under `runs[label]` (other labels are kept) and a table to `<out>.md`.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from llm_unlearn.data.qa import encode_qa, load_split
from llm_unlearn.data.world import WORLD_SIZES, WorldConfig, write_world
from llm_unlearn.eval.mia import auc, mia_metrics, sample_scores
from llm_unlearn.models import build as models
from llm_unlearn.models.loading import load_model_and_tokenizer
from llm_unlearn.runs.folder import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ("loss", "min_k_plus_plus", "min_k", "zlib")


def _hardware() -> str:
    from llm_unlearn.bench.hardware import device_name

    return device_name()


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "?"


def _name_parts_shared(name: str, retain_names: set[str]) -> int:
    first, last = name.split(" ", 1)
    return int(first in {n.split(" ", 1)[0] for n in retain_names}) + int(
        last in {n.split(" ", 1)[1] for n in retain_names}
    )


def _author_names(rows: list[dict]) -> dict[int, str]:
    # Each author's rows follow `world.ATTRIBUTES`, whose first fact is the full name.
    names: dict[int, str] = {}
    for r in rows:
        names.setdefault(r["author"], r["fact"])
    return names


def measure_seed(seed: int, size: str, workdir: Path) -> dict:
    world = write_world(workdir / f"world-{seed}", WorldConfig(**{**WORLD_SIZES[size], "seed": seed}))
    start = time.perf_counter()
    models._pretrain(world, size, workdir / f"base-{seed}")
    base_s = time.perf_counter() - start
    retain_rows = load_split("retain90", data_dir=world)
    models._finetune_from(workdir / f"base-{seed}", retain_rows, world, size, workdir / f"retain-{seed}")
    build_s = time.perf_counter() - start

    model, tokenizer = load_model_and_tokenizer(str(workdir / f"retain-{seed}"))
    rows = {role: load_split(f"{role}10", data_dir=world) for role in ("forget", "holdout")}
    scores = {
        role: sample_scores(
            model,
            tokenizer,
            [r["question"] for r in role_rows],
            [r["answer"] for r in role_rows],
            prompt_format="chat_template",
            max_length=models.MAX_LENGTH,
        )
        for role, role_rows in rows.items()
    }
    metrics = mia_metrics(scores["forget"], scores["holdout"])

    # Tokens the retain-only model was trained on: every id of its training examples.
    train = models._expand(retain_rows) + load_split("pretrain", data_dir=world)
    seen = {
        t
        for r in train
        for t in encode_qa(tokenizer, r["question"], r["answer"], "chat_template", 1024)["input_ids"]
    }

    def unseen_share(role_rows: list[dict]) -> float:
        hits = [
            any(
                t not in seen
                for t in encode_qa(tokenizer, r["question"], r["answer"], "chat_template", 1024)["labels"]
                if t >= 0
            )
            for r in role_rows
        ]
        return float(np.mean(hits))

    retain_names = set(_author_names(retain_rows).values())
    authors = []
    for role, role_rows in rows.items():
        names = _author_names(role_rows)
        loss = np.asarray(scores[role]["loss"])
        for author, name in sorted(names.items()):
            mask = np.array([r["author"] == author for r in role_rows])
            authors.append(
                {
                    "role": role,
                    "author": author,
                    "name": name,
                    "name_parts_shared_with_retain": _name_parts_shared(name, retain_names),
                    "mean_loss": float(loss[mask].mean()),
                }
            )
    # Under exchangeability the actual deal is one uniform draw among all ways to deal these 2k
    # unseen authors into two sets of k, so the AUCs of every deal are what chance alone gives,
    # and the share of deals at least as far from 0.5 is an exact two-sided p-value.
    by_author: dict[int, dict[str, np.ndarray]] = {}
    for role, role_rows in rows.items():
        ids = np.array([r["author"] for r in role_rows])
        for author in np.unique(ids):
            by_author[int(author)] = {a: np.asarray(scores[role][a])[ids == author] for a in ATTACKS}
    k = len({r["author"] for r in rows["forget"]})
    chance = {}
    for attack in ATTACKS:
        deals = [
            auc(
                np.concatenate([by_author[a][attack] for a in group]),
                np.concatenate([by_author[a][attack] for a in by_author if a not in group]),
            )
            for group in itertools.combinations(sorted(by_author), k)
        ]
        observed = metrics[f"mia_auc_{attack}"]["value"]
        far = np.abs(np.asarray(deals) - 0.5) >= abs(observed - 0.5) - 1e-12
        chance[attack] = {"sd": float(np.std(deals)), "n_deals": len(deals), "p_value": float(far.mean())}
    shared = np.array([a["name_parts_shared_with_retain"] for a in authors], dtype=float)
    loss_by_author = np.array([a["mean_loss"] for a in authors])
    corr = float(np.corrcoef(shared, loss_by_author)[0, 1]) if shared.std() > 0 else None
    return {
        "seed": seed,
        "auc": {a: metrics[f"mia_auc_{a}"]["value"] for a in ATTACKS},
        "mean_loss": {role: float(np.mean(scores[role]["loss"])) for role in rows},
        "answers_with_unseen_tokens": {role: unseen_share(role_rows) for role, role_rows in rows.items()},
        "authors": authors,
        "corr_author_loss_vs_name_parts_shared": corr,
        "n_rows": {role: len(role_rows) for role, role_rows in rows.items()},
        "seconds": {"base": round(base_s, 1), "base_and_retain": round(build_s, 1)},
        "auc_by_chance": chance,
        "per_sample": {
            role: {"author": [r["author"] for r in rows[role]]}
            | {a: [float(x) for x in scores[role][a]] for a in ATTACKS}
            for role in rows
        },
    }


def _table(record: dict) -> str:
    lines = [
        "| code | seed | loss AUC (chance SD, p) | Min-K%++ AUC (chance SD, p) | Min-K% AUC | zlib AUC "
        "| answers with unseen tokens (forget / holdout) | build s |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(value: float, chance: dict) -> str:
        return f"{value:.3f} ({chance['sd']:.3f}, {chance['p_value']:.2f})"

    for label, run in record["runs"].items():
        for s in run["seeds"]:
            auc_, chance, unseen = s["auc"], s["auc_by_chance"], s["answers_with_unseen_tokens"]
            lines.append(
                f"| {label} | {s['seed']} | {cell(auc_['loss'], chance['loss'])} | "
                f"{cell(auc_['min_k_plus_plus'], chance['min_k_plus_plus'])} | {auc_['min_k']:.3f} | "
                f"{auc_['zlib']:.3f} | {unseen['forget']:.2f} / {unseen['holdout']:.2f} | "
                f"{s['seconds']['base_and_retain']:.0f} |"
            )
        m, sd = run["mean_auc"], run["chance_sd_of_mean"]
        lines.append(
            f"| **{label}** | **mean** | **{m['loss']:.3f}** ({sd['loss']:.3f}) | "
            f"**{m['min_k_plus_plus']:.3f}** ({sd['min_k_plus_plus']:.3f}) | {m['min_k']:.3f} | "
            f"{m['zlib']:.3f} | | {run['seconds']:.0f} in all |"
        )
    return "\n".join(lines)


def write_report(out: Path) -> Path:
    record = json.loads(out.read_text())
    runs = "\n".join(
        f"- `{label}`: {run['code']}; `{run['command']}`; {run['date']}; {run['hardware']}, "
        f"torch {run['torch']} with {run['torch_threads']} thread(s); {run['seconds']:.0f} s in all."
        for label, run in record["runs"].items()
    )
    text = f"""# Forget vs holdout: are they exchangeable? (retain-only model, forget10 vs holdout10)

Command: `python benchmarks/exchangeability.py` (its docstring says what it measures). The retain-only
model of forget10 never saw forget10 nor holdout10, so each membership-inference AUC (holdout = 1,
higher score = looks unseen; `llm_unlearn/eval/mia.py`) should be 0.5. Goal: loss AUC within
0.5 +- 0.05 averaged over world seeds 0, 1, 2 (default world size, default model size).
In brackets: the AUC's spread from chance alone and its p-value. Under exchangeability the actual deal
of the 2k unseen authors into forget and holdout is one of the C(2k, k) equally likely deals (70 for
k = 4); the SD is over the AUCs of all of them, and p is the share at least as far from 0.5 (exact,
two-sided). For the mean, the bracket gives the SD that chance alone gives the mean over seeds.

{_table(record)}

Runs:
{runs}

{record.get("notes", "")}
"""
    return write_text_atomic(out.with_suffix(".md"), text)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--size", default="default", choices=sorted(WORLD_SIZES))
    parser.add_argument("--label", default="after", help="key of this run in the JSON's `runs`")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "exchangeability.json"))
    parser.add_argument(
        "--code", default="", help="what llm_unlearn this run imports (default: its folder and HEAD)"
    )
    parser.add_argument("--report_only", action="store_true", help="rewrite the .md from the JSON")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.report_only:
        return write_report(out)
    torch.set_num_threads(1)
    start = time.perf_counter()
    seeds = []
    with tempfile.TemporaryDirectory(prefix="exchangeability-") as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            seeds.append(measure_seed(seed, args.size, Path(tmp)))
            print(
                json.dumps(
                    {k: seeds[-1][k] for k in ("seed", "auc", "answers_with_unseen_tokens", "seconds")}
                ),
                flush=True,
            )
    record = json.loads(out.read_text()) if out.is_file() else {"runs": {}}
    record["runs"][args.label] = {
        "code": args.code or f"{Path(models.__file__).parent} at repo HEAD {_commit()}",
        "command": shlex.join(
            ["python", "benchmarks/exchangeability.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": datetime.date.today().isoformat(),
        "hardware": _hardware(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "size": args.size,
        "seconds": round(time.perf_counter() - start, 1),
        "mean_auc": {a: float(np.mean([s["auc"][a] for s in seeds])) for a in ATTACKS},
        # The spread chance alone gives the mean over seeds (independent worlds).
        "chance_sd_of_mean": {
            a: float(np.sqrt(sum(s["auc_by_chance"][a]["sd"] ** 2 for s in seeds)) / len(seeds))
            for a in ATTACKS
        },
        "seeds": seeds,
    }
    write_json_atomic(out, record)
    return write_report(out)


if __name__ == "__main__":
    print(main())
