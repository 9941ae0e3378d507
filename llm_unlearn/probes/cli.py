"""`llm-unlearn probe RUN_DIR`: argument parsing for `run.run_probes`.

Data, prompt and model-loading settings default to the run's `unlearn_config.yaml`: its
`model_name_or_path` is the original model and its `reference_model` the retain-only reference.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.heldout import SPLIT_BY
from ..runs.folder import RunError, read_run_config, read_status, require_complete
from ..runs.options import CommandParser, add_trust_remote_code, require_one_process, truth
from .attacks import ProbeSettings
from .measure import EvalSettings
from .run import ALL_PROBES, DEFAULT_BUDGETS, parse_budgets, parse_probes, run_probes

PROBE_FILE = "probe.json"


def make_parser() -> argparse.ArgumentParser:
    d, e = ProbeSettings(), EvalSettings()
    p = CommandParser(prog="llm-unlearn probe", description="Residual-knowledge probes on a finished run: "
                "LoRA relearning, Piggyback masking and RTN quantization.")  # fmt: skip
    p.add_argument("run_dir", help="a complete run directory (or a model folder, with --out)")
    p.add_argument("--data_dir", help="TOFU-format folder (default: the run's data_dir)")
    p.add_argument("--dataset_name", help="Hub dataset id instead of --data_dir (default: the run's)")
    p.add_argument("--forget_split", help="forget split, e.g. forget10 (default: the run's)")
    p.add_argument(
        "--original_model", help="the model before unlearning (default: the run's model_name_or_path)"
    )
    p.add_argument("--reference_model", help="the retain-only model (default: the run's reference_model)")
    p.add_argument(
        "--budgets",
        default=",".join(map(str, DEFAULT_BUDGETS)),
        help="optimizer-step budgets (0, the unprobed model, is always measured)",
    )
    p.add_argument("--probes", default=",".join(ALL_PROBES), help=f"any of {', '.join(ALL_PROBES)}")
    p.add_argument("--out", help=f"output file (default: RUN_DIR/{PROBE_FILE})")
    p.add_argument("--seed", type=int, default=d.seed, help="A/E split, LoRA init and batch order")
    p.add_argument(
        "--heldout_fraction", type=float, default=0.5, help="share of each author's questions in E"
    )
    p.add_argument(
        "--split_by", default="question", choices=SPLIT_BY, help="split within authors or by author"
    )
    p.add_argument("--batch_size", type=int, default=d.batch_size, help="attack batch size")
    p.add_argument("--relearn_lr", type=float, default=d.relearn_lr, help="AdamW lr of the LoRA attack")
    p.add_argument("--lora_r", type=int, default=d.lora_r)
    p.add_argument("--lora_alpha", type=int, default=d.lora_alpha)
    p.add_argument("--piggyback_lr", type=float, default=d.piggyback_lr, help="Adam lr of the mask scores")
    p.add_argument(
        "--piggyback_modules", default=",".join(d.piggyback_modules), help="module-name suffixes to mask"
    )
    p.add_argument("--quant_bits", default="8,4", help="RTN bit widths")
    p.add_argument("--group_size", type=int, default=128, help="RTN group size along the input dimension")
    p.add_argument(
        "--eval_batch_size", type=int, help=f"scoring batch size (default: the run's, else {e.batch_size})"
    )
    p.add_argument(
        "--max_new_tokens",
        type=int,
        help=f"greedy answer length (default: the run's, else {e.max_new_tokens})",
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    add_trust_remote_code(p)
    p.add_argument("--allow_pickle", type=truth, default=False, metavar="BOOL",
                   help="allow pickle (.bin) weights of the original or reference model; off: safetensors only")  # fmt: skip
    return p


def _parse_bits(text: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and 2 <= int(p) <= 8 for p in parts):
        raise ValueError(f"--quant_bits {text!r} must be comma-separated bit widths from 2 to 8 (e.g. 8,4)")
    return tuple(dict.fromkeys(int(p) for p in parts))


def _run_config(run_dir: Path, out: str | None) -> dict:
    if run_dir.is_file():
        raise FileNotFoundError(
            f"run directory {run_dir} is a file; pass the output_dir of `llm-unlearn unlearn`"
        )
    if not run_dir.exists():
        raise FileNotFoundError(
            f"run directory {run_dir} does not exist; pass the output_dir of `llm-unlearn unlearn`"
        )
    if read_status(run_dir) is None:
        if out is None:
            raise RunError(
                f"{run_dir} is not a run directory (no status.json); pass --out FILE for its probe.json"
            )
        return {}
    require_complete(run_dir, "probe")
    return read_run_config(run_dir)


def probe_cli(argv: list[str]) -> Path:
    args = make_parser().parse_args(argv)
    require_one_process("probe")
    if args.no_progress:  # transformers' own bars too (loading weights)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    budgets, probes = parse_budgets(args.budgets), parse_probes(args.probes)
    bits = _parse_bits(args.quant_bits)
    if args.group_size < 1:
        raise ValueError(
            f"--group_size {args.group_size} must be a positive number of input columns (e.g. 128)"
        )
    run_dir = Path(args.run_dir)
    if args.out and Path(args.out).is_dir():
        raise ValueError(
            f"--out {args.out} is a folder; pass the file to write, e.g. {Path(args.out) / PROBE_FILE}"
        )
    config = _run_config(run_dir, args.out)

    def pick(flag: str, key: str):
        value = getattr(args, flag)
        return value if value is not None else config.get(key)

    original, reference = (
        pick("original_model", "model_name_or_path"),
        pick("reference_model", "reference_model"),
    )
    for name, value in (("--original_model", original), ("--reference_model", reference)):
        if not value:
            raise ValueError(
                f"no {name} given and the run's unlearn_config.yaml names none; pass the model folder"
            )
    data_dir, dataset_name = pick("data_dir", "data_dir"), pick("dataset_name", "dataset_name")
    if args.data_dir or args.dataset_name:  # a source given on the command line replaces the run's
        data_dir, dataset_name = args.data_dir, args.dataset_name
    if not (data_dir or dataset_name):
        raise ValueError("no --data_dir given and the run names none; pass the TOFU-format folder")
    settings = ProbeSettings(seed=args.seed, batch_size=args.batch_size, relearn_lr=args.relearn_lr,
                             lora_r=args.lora_r, lora_alpha=args.lora_alpha, piggyback_lr=args.piggyback_lr,
                             piggyback_modules=tuple(m for m in args.piggyback_modules.split(",") if m))  # fmt: skip
    defaults = EvalSettings()
    eval_settings = EvalSettings(
        prompt_format=config.get("prompt_format", defaults.prompt_format),
        system_prompt=config.get("system_prompt", defaults.system_prompt),
        max_length=config.get("max_length", defaults.max_length),
        batch_size=pick("eval_batch_size", "eval_batch_size") or defaults.batch_size,
        max_new_tokens=pick("max_new_tokens", "max_new_tokens") or defaults.max_new_tokens,
    )
    # The weights' dtype is the run's; running shipped code or unpickling is asked for here, not read from a file.
    load = {k: config[k] for k in ("torch_dtype",) if k in config}
    load |= dict(trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
    out = Path(args.out) if args.out else run_dir / PROBE_FILE
    result = run_probes(
        run_dir, original_model=original, reference_model=reference, data_dir=data_dir,
        dataset_name=dataset_name, forget_split=pick("forget_split", "forget_split") or "forget10",
        probes=probes, budgets=budgets, settings=settings, eval_settings=eval_settings,
        heldout_fraction=args.heldout_fraction, split_by=args.split_by, quant_bits=bits,
        group_size=args.group_size, load=load, out=out, progress=not args.no_progress,
    )  # fmt: skip
    # Which questions the printed values score: the attacks train on part of the forget set and are scored on
    # the rest, so their budget-0 values differ from eval.json's, which the quantization probe's match.
    meta = result["meta"]
    attacks = [p for p in meta["probes"] if p != "quant"]
    if attacks:
        print(f"{' and '.join(attacks)}: scored on the {meta['n_heldout']} held-out forget questions")
    if "quant" in meta["probes"]:
        print(f"quant: scored on all {meta['n_forget']} forget questions, as eval.json")
    for row in result["rows"]:
        if row["metric"] in ("forget_prob", "forget_fact_recall") and row["recovery"] is not None:
            where = f"budget {row['budget']}" if row["bits"] is None else f"{row['bits']}-bit"
            print(
                f"  {row['probe']:<9} {where:<10} {row['metric']:<18} {row['value']:.4g}  recovery {row['recovery']:+.3f}"
            )
    print(f"wrote {out}")
    return out
