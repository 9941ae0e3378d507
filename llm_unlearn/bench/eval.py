"""`llm-unlearn bench --eval`: batched evaluation against one sample at a time, side by side in one run.

    llm-unlearn bench --eval --threads 1 --out benchmarks/bench_eval.json   # default world's target model
    llm-unlearn bench --eval --size micro --out /tmp/bench_eval.json        # seconds; checks the harness only

Both sides run `eval.tofu.evaluate` on the same model (the built-in world's target model, built or
taken from the cache by `models.build_default_models`) and the same data; the one difference is the
batch size of every loss pass, membership-scoring pass and greedy generation: `batch_size` (default
32, length-sorted; scoring packs each prompt's answers into one row (`eval/packed.py`); generation
left-padded with the KV cache, finished rows dropped (`eval/greedy.py`), starting from the prompt keys and values the packed loss pass kept) against 1 (no padding at all). One untimed batched run comes first (warm-up); then `rounds` rounds each time one
batched and one batch-1 run. The speedup compares median wall times around `evaluate`;
`eval_speedup_batched_cpu_time` compares this process's median CPU times, which other busy processes
move less than wall times (information, not a target).

Agreement. Likelihood numbers (per-sample answer losses, probabilities, truth ratios, the LOSS,
zlib and Min-K% membership scores, every AUC) must agree to 1e-5 in absolute terms
(`eval_max_abs_diff`). Two kinds are reported apart: raw truth ratios R = exp(loss difference),
compared relatively as R can be large, and Min-K%++ scores, which divide by the standard deviation of
the next-token log-probabilities (z-scores, several units in size) and so scale float32 rounding up. Greedy generations may differ
where padding flips a near-tied argmax, so they are compared as the fraction of identical answers
and the difference of mean ROUGE-L recall per eval set. Determinism: the warm-up and the first
timed batched run must give identical metrics, losses and generations.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from ..runs.scratch import scratch_dir

TARGETS = {
    "eval_speedup_batched": (">=", 5.0),
    "eval_max_abs_diff": ("<=", 1e-5),
    "eval_generations_identical_fraction": (">=", 0.99),
    "eval_rouge_l_mean_max_abs_diff": ("<=", 1e-3),
}
# Metrics computed from greedy generations (directly, or in part for model utility).
GENERATION_MARKERS = ("rouge", "fact_recall", "model_utility")
MODEL_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
LIKELIHOOD_LISTS = ("per_sample", "per_sample_forget", "per_sample_holdout")
# Per-sample scores standardized by a per-token standard deviation (mia.py): compared apart.
STANDARDIZED = ("mia_auc_min_k_plus_plus",)


def _is_generation_metric(name: str) -> bool:
    return any(marker in name for marker in GENERATION_MARKERS)


def _max_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.abs(a - b).max()) if a.size else 0.0


def compare(batched: dict, single: dict) -> dict:
    """How far two eval.json dicts of the same model and data are apart (module docstring)."""
    worst, where = 0.0, None

    def track(diff: float, at: str) -> None:
        nonlocal worst, where
        if diff > worst or where is None:
            worst, where = max(worst, diff), at

    for role, losses in batched["losses"].items():
        other = single["losses"][role]
        for kind in ("answer", "paraphrased"):
            if kind in losses:
                track(_max_diff(losses[kind], other[kind]), f"losses.{role}.{kind}")
        for i, (x, y) in enumerate(zip(losses["perturbed"], other["perturbed"], strict=True)):
            track(_max_diff(x, y), f"losses.{role}.perturbed[{i}]")
    ratio_rel, standardized = 0.0, 0.0
    for name, entry in batched["metrics"].items():
        if _is_generation_metric(name):
            continue
        other = single["metrics"][name]
        track(abs(entry["value"] - other["value"]), f"metrics.{name}.value")
        for key in LIKELIHOOD_LISTS:
            if key in entry and name in STANDARDIZED:
                standardized = max(standardized, _max_diff(entry[key], other[key]))
            elif key in entry:
                track(_max_diff(entry[key], other[key]), f"metrics.{name}.{key}")
        if "per_sample_ratio" in entry:
            r, s = np.asarray(entry["per_sample_ratio"]), np.asarray(other["per_sample_ratio"])
            ratio_rel = max(ratio_rel, float((np.abs(r - s) / np.abs(s)).max()))
    same, total, rouge_diff = 0, 0, {}
    for role, gens in batched["generations"].items():
        other = single["generations"][role]
        same += sum(g["generated"] == h["generated"] for g, h in zip(gens, other, strict=True))
        total += len(gens)
        rouge_diff[role] = abs(
            batched["metrics"][f"{role}_rouge_l"]["value"] - single["metrics"][f"{role}_rouge_l"]["value"]
        )
    fact = {
        name.removesuffix("_fact_recall"): abs(entry["value"] - single["metrics"][name]["value"])
        for name, entry in batched["metrics"].items()
        if name.endswith("_fact_recall")
    }
    mu = batched["metrics"]["model_utility"]["value"] - single["metrics"]["model_utility"]["value"]
    return {
        "eval_max_abs_diff": worst,
        "eval_max_abs_diff_at": where,
        "eval_max_rel_diff_truth_ratio": ratio_rel,
        "eval_max_abs_diff_min_k_plus_plus_scores": standardized,
        "eval_generations_identical_fraction": same / total,
        "eval_generations_compared": total,
        "eval_rouge_l_mean_max_abs_diff": max(rouge_diff.values()),
        "eval_rouge_l_mean_abs_diff": rouge_diff,
        "eval_fact_recall_mean_abs_diff": fact,
        "eval_model_utility_abs_diff": abs(mu),
    }


def identical(a: dict, b: dict) -> bool:
    """Same metrics, losses and generations, exactly (meta holds timings, so it is left out)."""
    return all(a[key] == b[key] for key in ("metrics", "losses", "generations"))


def _hardware() -> str:
    from .hardware import device_name

    return device_name()


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not available on this platform
        return None


def _target_model(workdir: Path, size: str) -> tuple[Path, Path]:
    from ..data.world import WORLD_SIZES, WorldConfig, write_world
    from ..models.build import build_default_models

    if size not in WORLD_SIZES:
        raise ValueError(f"unknown world size {size!r}; choose one of {', '.join(WORLD_SIZES)}")
    world = write_world(workdir / "world", WorldConfig(**WORLD_SIZES[size]))
    return world, build_default_models(world, forget_splits=(), size=size)["target"]


def bench_eval(
    out: str | Path,
    size: str = "default",
    threads: int | None = None,
    batch_size: int = 32,
    rounds: int = 1,
    max_new_tokens: int = 64,
) -> dict:
    """Run the evaluation benchmark and write its JSON to `out` (atomically); return the result."""
    from ..eval.tofu import evaluate
    from ..models.loading import load_model_and_tokenizer
    from ..runs.folder import write_json_atomic

    if batch_size < 2:
        raise ValueError(f"--batch_size must be at least 2 to compare with batch 1, got {batch_size}")
    if rounds < 1:
        raise ValueError(f"--rounds must be at least 1, got {rounds}")
    if threads:
        torch.set_num_threads(threads)
    start, load_before = time.perf_counter(), _load_average()
    with scratch_dir("llm-unlearn-bench-eval-") as tmp:
        world, target = _target_model(Path(tmp), size)
        model, tokenizer = load_model_and_tokenizer(str(target))
        n_params = sum(p.numel() for p in model.parameters())

        def run(bs: int) -> tuple[dict, float, float]:
            t, cpu = time.perf_counter(), time.process_time()
            result = evaluate(model, tokenizer, data_dir=world, batch_size=bs,
                              max_new_tokens=max_new_tokens, progress=False)  # fmt: skip
            return result, time.perf_counter() - t, time.process_time() - cpu

        warmup, _, _ = run(batch_size)
        seconds: dict[str, list[float]] = {"batched": [], "single": []}
        cpu_seconds: dict[str, list[float]] = {"batched": [], "single": []}
        results: dict[str, dict] = {}
        for _ in range(rounds):
            for side, bs in (("batched", batch_size), ("single", 1)):
                results[side], s, cpu = run(bs)
                seconds[side].append(s)
                cpu_seconds[side].append(cpu)
        deterministic = identical(warmup, results["batched"])
    median = {side: statistics.median(v) for side, v in seconds.items()}
    cpu_median = {side: statistics.median(v) for side, v in cpu_seconds.items()}
    timing = results["batched"]["meta"]["timing"]
    result = {
        "eval_speedup_batched": median["single"] / median["batched"],
        # The same ratio in this process's CPU time: less moved by other processes waiting for the cores.
        "eval_speedup_batched_cpu_time": cpu_median["single"] / cpu_median["batched"],
        **compare(results["batched"], results["single"]),
        "eval_deterministic": deterministic,
    }
    result["targets"] = {
        key: {
            "target": f"{op} {value:g}",
            "met": result[key] >= value if op == ">=" else result[key] <= value,
        }
        for key, (op, value) in TARGETS.items()
    }
    result["targets"]["eval_deterministic"] = {"target": "true", "met": deterministic}
    result |= {
        "seconds": {
            side: {
                "median_s": median[side],
                "runs_s": [round(x, 3) for x in v],
                "cpu_median_s": cpu_median[side],
                "cpu_runs_s": [round(x, 3) for x in cpu_seconds[side]],
            }
            for side, v in seconds.items()
        },
        "workload": {
            "samples": timing["samples"],
            "sequences_scored": timing["sequences_scored"],
            "generations": result["eval_generations_compared"],
            "max_new_tokens": max_new_tokens,
            "splits": {role: s["n"] for role, s in results["batched"]["meta"]["splits"].items()},
        },
        "settings": {"size": size, "batch_size": batch_size, "rounds": rounds, "warmup_runs": 1},
        "model": {
            "parameters": n_params,
            "dtype": str(model.dtype).removeprefix("torch."),
            "config": {k: getattr(model.config, k) for k in MODEL_FIELDS},
        },
        "command": "llm-unlearn " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "bench_eval()",
        "hardware": _hardware(),
        "torch_threads": torch.get_num_threads(),
        # Other processes on the machine slow the compute-bound batched side more than batch 1.
        "load_average_1min": {"start": load_before, "end": _load_average()},
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
        "date": date.today().isoformat(),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    write_json_atomic(Path(out), result)
    return result


def print_summary(r: dict, out: str) -> None:
    s = r["seconds"]
    print(f"batched (batch {r['settings']['batch_size']}): {s['batched']['median_s']:.2f} s   "
          f"one at a time: {s['single']['median_s']:.2f} s   "
          f"(CPU time {s['batched']['cpu_median_s']:.2f} s vs {s['single']['cpu_median_s']:.2f} s: "
          f"{r['eval_speedup_batched_cpu_time']:.2f}x)")  # fmt: skip
    for key in (*TARGETS, "eval_deterministic"):
        met = r["targets"][key]
        value = r[key] if isinstance(r[key], bool) else f"{r[key]:.4g}"
        print(f"{key:<40}{value!s:>12}   target {met['target']}: {'met' if met['met'] else 'NOT met'}")
    print(f"largest likelihood difference at {r['eval_max_abs_diff_at']}")
    load = r["load_average_1min"]
    print(f"wrote {out} ({r['hardware']}, {r['torch_threads']} threads, {r['total_seconds']} s, "
          f"1-min load average {load['start']} -> {load['end']})")  # fmt: skip
