"""Probe: does fine-tuning on the target's own samples bring back what unlearning took outside the retain set?

    python benchmarks/anchor_probe.py runs/smollm2-tofu-cpu/runs/forget01-auto-repair-rare-npo-vstop \
        --start "<|im_start|>" --lr 1e-5 --steps 40

Why: on SmolLM2 the rare-token runs of `--auto --stop_repair` keep the retain answers (the repair restores
them) but lose real-author and world-fact answers, which neither the retain set nor the repair covers
(docs/results.md, 2026-12-06). A user has no such questions to repair on; the target itself can write
general text. This probe measures whether that text is enough, before any of it becomes an option:

1. sample `--samples` sequences of `--length` tokens from the target (temperature 1, no truncation, seeded),
   each starting at the token `--start` (SmolLM2's `<|endoftext|>` gives web text, `<|im_start|>` chat turns);
   generation ends at `<|endoftext|>`, which is then masked out of the loss;
2. fine-tune the unlearned model on them (mean token NLL, AdamW at `--lr`, batches of 8 drawn with a seeded
   generator, gradients clipped at 1, `--steps` steps);
3. score the target, the unlearned model and the fine-tuned one by ROUGE-L recall of greedy answers
   (48 new tokens, the evaluation's chat prompt) on the slice's real-author, world-fact, forget and
   retain questions (the same questions as `smollm2_tofu.py`'s evaluation; its 200-token answers give the
   same ROUGE-L recall for the target and the unlearned model to 3 decimals).

With `--evaluate DIR` the fine-tuned weights are saved in DIR and evaluated with `smollm2_tofu.py`'s CPU
protocol (the same `eval_stage`: every TOFU number, forget quality against the stored reference evaluation),
and the record adds forget quality and model utility.

One JSON record per probe is appended to `--out` (benchmarks/anchor_probe.json, under its lock). A probe, not a method: the
evaluation questions are only scored here, and nothing of it is used by `llm-unlearn`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_unlearn.eval.metrics import rouge_l_recall
from llm_unlearn.eval.scoring import generate_answers
from llm_unlearn.runs.folder import locked, write_json_atomic

HERE = Path(__file__).resolve().parent
SPLITS = {
    "ra": "real_authors_perturbed",
    "wf": "world_facts_perturbed",
    "forget": "forget01",
    "retain": "retain99",
}
END = "<|endoftext|>"


def sample_anchors(model, tokenizer, start: str, n: int, length: int, seed: int) -> torch.Tensor:
    """`n` sampled continuations of the single token `start` (ids [n, 1 + length], padded with END)."""
    first, end = tokenizer.convert_tokens_to_ids(start), tokenizer.convert_tokens_to_ids(END)
    rows = []
    with torch.no_grad():
        for b in range(0, n, 32):
            torch.manual_seed(seed + b)  # each batch of 32 from its own seed: the same samples at any n
            k = min(32, n - b)
            out = model.generate(
                input_ids=torch.full((k, 1), first), attention_mask=torch.ones(k, 1, dtype=torch.long),
                do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=length,
                pad_token_id=end, eos_token_id=end,
            )  # fmt: skip
            rows += torch.nn.functional.pad(out, (0, 1 + length - out.size(1)), value=end).tolist()
    return torch.tensor(rows)


def fine_tune(model, anchors: torch.Tensor, end_id: int, lr: float, steps: int, seed: int) -> list[float]:
    """`steps` AdamW steps on the mean token NLL of 8 anchors each; the losses every 10 steps."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for step in range(steps):
        x = anchors[torch.randint(0, len(anchors), (8,), generator=generator)]
        labels = x.masked_fill(x == end_id, -100)
        loss = model(input_ids=x, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 9:
            losses.append(round(float(loss.detach()), 4))
    return losses


def score(model, tokenizer, rows: dict[str, list[dict]]) -> dict[str, float]:
    model.eval()
    out = {}
    for role, rs in rows.items():
        answers = generate_answers(model, tokenizer, [r["question"] for r in rs], prompt_format="chat_template",
                                   max_new_tokens=48, batch_size=32)  # fmt: skip
        out[role] = round(float(rouge_l_recall([r["answer"] for r in rs], answers).mean()), 4)
    return out


def evaluate(model, tokenizer, out: Path, work: Path) -> dict:
    """The CPU protocol's evaluation of `model`, saved in `out` (smollm2_tofu.py's eval_stage and record)."""
    from smollm2_tofu import SIZES, eval_stage, record

    from llm_unlearn.eval.tofu import load_eval

    reference = work / "evals" / "reference-forget01.json"
    if not reference.is_file():
        raise SystemExit(f"{reference} does not exist: run benchmarks/smollm2_tofu.py first")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    result = eval_stage(
        str(out), work / "data", "forget01", out / "eval.json", SIZES["cpu"], load_eval(reference)
    )
    row = record(result, model="unlearned", method="anchor-probe", split="forget01", train_s=0.0, eval_s=0.0)
    keys = (
        "forget_quality",
        "model_utility",
        "forget_rouge_l",
        "retain_rouge_l",
        "ra_rouge_l",
        "wf_rouge_l",
        "ra_prob",
        "wf_prob",
        "ra_truth_ratio",
        "wf_truth_ratio",
        "retain_prob",
        "retain_truth_ratio",
    )
    return {k: row[k] for k in keys if k in row}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "unlearned", type=Path, help="an unlearned run folder of smollm2_tofu.py (its weights)"
    )
    parser.add_argument(
        "--work", type=Path, default=Path("runs/smollm2-tofu-cpu"), help="smollm2_tofu.py's --work"
    )
    parser.add_argument("--start", default=END, help="the token every sample starts from")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--length", type=int, default=96)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "anchor_probe.json")
    parser.add_argument(
        "--evaluate", type=Path, default=None, help="save the tuned model here and evaluate it"
    )
    args = parser.parse_args(argv)
    for path in (args.work / "target", args.work / "data", args.unlearned):
        if not path.is_dir():
            raise SystemExit(
                f"{path} does not exist: run benchmarks/smollm2_tofu.py first (its --work and run folders)"
            )
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(args.work / "target")
    rows = {role: [json.loads(line) for line in (args.work / "data" / f"{name}.json").open()]
            for role, name in SPLITS.items()}  # fmt: skip
    target = AutoModelForCausalLM.from_pretrained(args.work / "target")
    start = time.perf_counter()
    anchors = sample_anchors(target, tokenizer, args.start, args.samples, args.length, args.seed)
    record = {"unlearned": args.unlearned.name, "start": args.start, "samples": args.samples, "length": args.length,
              "lr": args.lr, "steps": args.steps, "seed": args.seed, "sample_s": round(time.perf_counter() - start, 1),
              "example": tokenizer.decode(anchors[0][:48])}  # fmt: skip
    record["target"] = score(target, tokenizer, rows)
    model = AutoModelForCausalLM.from_pretrained(args.unlearned)
    record["unlearned_rouge"] = score(model, tokenizer, rows)
    start = time.perf_counter()
    record["losses"] = fine_tune(
        model, anchors, tokenizer.convert_tokens_to_ids(END), args.lr, args.steps, args.seed
    )
    record["tune_s"] = round(time.perf_counter() - start, 1)
    record["tuned_rouge"] = score(model, tokenizer, rows)
    if args.evaluate is not None:
        record["evaluation"] = evaluate(model, tokenizer, args.evaluate, args.work)
    record |= {
        "date": time.strftime("%Y-%m-%d"),
        "hardware": f"{platform.machine()} CPU, 1 torch thread, fp32",
    }
    print(json.dumps(record))
    with locked(args.out):  # probes may run side by side
        records = json.loads(args.out.read_text()) if args.out.exists() else []
        write_json_atomic(args.out, [*records, record])


if __name__ == "__main__":
    main()
