"""`llm-unlearn bench`: what NGDiff and GeN cost, measured side by side in one run.

    llm-unlearn bench --threads 1 --out benchmarks/bench_cpu.json    # ~8 min on a 2-core CPU
    llm-unlearn bench --preset quick --out /tmp/bench.json       # seconds; checks the harness only
    llm-unlearn bench --eval --out benchmarks/bench_eval.json    # evaluation: batched vs batch 1 (bench/eval.py)

Setting: one randomly initialised Llama (preset `default`: 13.9M parameters, so one fp32 gradient
copy is 56 MB) on forget/retain batches of 8 from the built-in micro world,
AdamW, constant lr, through
`UnlearnTrainer.train()` itself: the step time is the wall time between consecutive
`on_step_end` callbacks, so data loading, the combination, clipping, the optimizer and GeN's
probes are all inside it.

Time. The configurations run in interleaved blocks (A, B, C, ... then again, order rotated each
round), each block from the same initial weights, its first `warmup` steps dropped; per
configuration that gives `rounds x steps` timed steps. NGDiff vs GradDiff compares medians;
GeN's cost comes on probe steps only, so GeN vs fixed lr compares means over windows that hold a
whole number of probe intervals (`steps` is a multiple of 20). `graddiff_two_backward` is GradDiff
with NGDiff's order of work (forget forward, retain forward, one backward per term), so the ratio
against it isolates the combination itself; `graddiff` (one backward of the summed loss) is what
users run.

Memory. One subprocess per configuration, each running `memory_steps` steps after loading; its
peak RSS is reset after loading (Linux `clear_refs`) and glibc is told to return large blocks at
once, so the peak is the training's live memory. The extra memory of NGDiff is reported in units
of one gradient copy (4 bytes x trainable parameters for fp32). On a CUDA device
`torch.cuda.max_memory_allocated` is used instead of RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

from ..runs.options import CommandParser, require_one_process
from ..runs.scratch import scratch_dir
from .hardware import device_name

PRESETS: dict[str, dict] = {
    "default": dict(
        model=dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, intermediate_size=1408),
        batch_size=8, steps=20, warmup=2, rounds=4, memory_steps=3,
    ),
    "quick": dict(
        model=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        batch_size=2, steps=20, warmup=1, rounds=1, memory_steps=2,
    ),
}  # fmt: skip
CONFIGS: dict[str, dict] = {
    "graddiff": dict(method="graddiff"),
    "graddiff_two_backward": dict(method="graddiff"),
    "ngdiff": dict(method="ngdiff"),
    "ngdiff_gen4": dict(method="ngdiff", gen=True, gen_interval=4),
    "ngdiff_gen10": dict(method="ngdiff", gen=True, gen_interval=10),
}
MEMORY_CONFIGS = ("graddiff", "ngdiff", "ngdiff_gen4")
TARGETS = {
    "step_time_ratio_ngdiff_graddiff": 1.10,
    "extra_mem_grad_copies_ngdiff": 1.1,
    # Fresh-batch probes: three probe forwards per stream every 4 steps against ~6 forward-equivalents
    # per NGDiff step, so about 1 + 1/4 in theory.
    "gen_overhead_ratio_interval4": 1.30,
}


def _trainer_class():
    from transformers import TrainerCallback

    from ..core.trainer import UnlearnTrainer
    from ..methods import MethodContext

    class TwoBackwardTrainer(UnlearnTrainer):
        """GradDiff in NGDiff's order of work: one backward per term, accumulated in `.grad`."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            model.train()
            forget, retain = self._prepare_inputs(inputs["forget"]), self._prepare_inputs(inputs["retain"])
            ctx = MethodContext(config=self.args, reference_model=self.reference_model)
            with self.compute_loss_context_manager():
                terms = {n: self._normalize(t) for n, t in self.method.fn(model, forget, retain, ctx).items()}
            self._check_finite(terms)
            names = list(terms)
            for i, name in enumerate(names):
                self.accelerator.backward(terms[name], retain_graph=i < len(names) - 1)
            self._record_terms(terms)
            return sum(terms.values()).detach()

    class StepClock(TrainerCallback):
        def __init__(self):
            self.stamps: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.stamps.append(time.perf_counter())

    return UnlearnTrainer, TwoBackwardTrainer, StepClock


def prepare(workdir: Path, preset: str) -> Path:
    """Write the micro world, a tokenizer and a randomly initialised model of the preset's size."""
    from transformers import LlamaForCausalLM

    from ..data.world import WORLD_SIZES, WorldConfig, write_world
    from ..models.build import TOKENIZER_SETTINGS, _world_texts
    from ..models.tiny import tiny_llama_config, train_tokenizer

    world = write_world(workdir / "world", WorldConfig(**WORLD_SIZES["micro"]))
    tokenizer = train_tokenizer(_world_texts(world), **TOKENIZER_SETTINGS)
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer, PRESETS[preset]["model"]))
    model.save_pretrained(workdir / "model")
    tokenizer.save_pretrained(workdir / "model")
    return workdir


def make_trainer(workdir: Path, preset: str, name: str, max_steps: int, output_dir: Path, callbacks=()):
    from transformers import PrinterCallback

    from ..core.config import UnlearnConfig
    from ..data.args import DataArgs
    from ..data.qa import QACollator, QADataset, load_split, pad_id
    from ..methods import get_method
    from ..models.loading import load_model, load_tokenizer

    base_cls, two_backward_cls, _ = _trainer_class()
    settings = CONFIGS[name]
    p = PRESETS[preset]
    tokenizer = load_tokenizer(str(workdir / "model"))
    encode = dict(prompt_format=DataArgs.prompt_format, max_length=DataArgs.max_length)
    forget = QADataset(load_split("forget10", data_dir=workdir / "world"), tokenizer, **encode)
    retain = QADataset(load_split("retain90", data_dir=workdir / "world"), tokenizer, **encode)
    config = UnlearnConfig(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=p["batch_size"],
        learning_rate=1e-5, lr_scheduler_type="constant", weight_decay=0.0, save_strategy="no",
        disable_tqdm=True, report_to="none", seed=0, dataloader_num_workers=0,
        dataloader_drop_last=True,  # every step a full batch: a short last batch would skew the timings
        use_cpu=not torch.cuda.is_available(), **settings,
    )  # fmt: skip
    cls = two_backward_cls if name == "graddiff_two_backward" else base_cls
    trainer = cls(
        model=load_model(str(workdir / "model")),
        args=config,
        train_dataset=forget,
        retain_dataset=retain,
        data_collator=QACollator(pad_id(tokenizer)),
        processing_class=tokenizer,
        method=get_method(settings["method"]),
        callbacks=list(callbacks),
    )
    trainer.remove_callback(PrinterCallback)  # per-step dicts on stdout would only add noise
    return trainer


def time_configs(workdir: Path, preset: str, names: list[str]) -> dict[str, list[float]]:
    """Per-step wall times of each configuration, collected in interleaved blocks."""
    from tqdm.auto import tqdm

    *_, clock_cls = _trainer_class()
    p = PRESETS[preset]
    times: dict[str, list[float]] = {n: [] for n in names}
    blocks = [(r, names[r % len(names) :] + names[: r % len(names)]) for r in range(p["rounds"])]
    bar = tqdm(total=p["rounds"] * len(names), desc="timing blocks", leave=False)
    for r, order in blocks:
        for name in order:
            clock = clock_cls()
            trainer = make_trainer(workdir, preset, name, p["warmup"] + p["steps"] + 1,
                                   workdir / f"run-{name}-{r}", [clock])  # fmt: skip
            trainer.train()
            stamps = clock.stamps[p["warmup"] :]
            times[name] += [b - a for a, b in zip(stamps, stamps[1:])]
            bar.update()
    bar.close()
    return times


def memory_child(workdir: Path, preset: str, name: str) -> dict:
    """Run in a fresh process: a few steps of one configuration; report its peak memory."""
    trainer = make_trainer(workdir, preset, name, PRESETS[preset]["memory_steps"], workdir / f"mem-{name}")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        kind = "cuda max_memory_allocated during training"
    elif _reset_peak_rss():
        kind = "peak RSS during training (VmHWM reset after loading)"
    else:
        kind = "peak RSS of the process (loading included)"
    trainer.train()
    n = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    dtype_bytes = next(trainer.model.parameters()).element_size()
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss()
    return {"peak_bytes": peak, "grad_copy_bytes": n * dtype_bytes, "trainable_params": n, "kind": kind}


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM, so the peak covers training, not model loading."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _spread(values: list[float]) -> dict:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median_s": statistics.median(values), "mean_s": statistics.fmean(values),
            "q1_s": q[0], "q3_s": q[2], "n": len(values)}  # fmt: skip


def bench(out: str | Path, preset: str = "default", threads: int | None = None) -> dict:
    """Run the benchmark and write its JSON to `out` (atomically); return the result."""
    from ..runs.folder import write_json_atomic

    if preset not in PRESETS:
        raise ValueError(f"unknown bench preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if threads:
        torch.set_num_threads(threads)
    if PRESETS[preset]["steps"] % 20:
        raise ValueError("bench steps must be a multiple of 20 so GeN's 4- and 10-step intervals fit whole")
    start = time.perf_counter()
    with scratch_dir("llm-unlearn-bench-") as tmp:
        workdir = prepare(Path(tmp), preset)
        memory = {}
        for name in MEMORY_CONFIGS:
            cmd = [sys.executable, "-m", "llm_unlearn.bench.train", "--_child", name, "--preset", preset,
                   "--_workdir", str(workdir), "--threads", str(torch.get_num_threads())]  # fmt: skip
            # glibc otherwise keeps freed blocks below a moving threshold: RSS would lag live memory.
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if done.returncode:
                raise RuntimeError(f"memory run for {name} failed:\n{done.stderr[-2000:]}")
            memory[name] = json.loads(done.stdout.strip().splitlines()[-1])
        times = time_configs(workdir, preset, list(CONFIGS))
    stats = {name: _spread(v) for name, v in times.items()}
    med = {name: s["median_s"] for name, s in stats.items()}
    mean = {name: s["mean_s"] for name, s in stats.items()}
    grad_copy = memory["ngdiff"]["grad_copy_bytes"]
    result = {
        "step_time_ratio_ngdiff_graddiff": med["ngdiff"] / med["graddiff"],
        "step_time_ratio_ngdiff_graddiff_two_backward": med["ngdiff"] / med["graddiff_two_backward"],
        "peak_mem_ratio_ngdiff_graddiff": memory["ngdiff"]["peak_bytes"] / memory["graddiff"]["peak_bytes"],
        "extra_mem_grad_copies_ngdiff": (memory["ngdiff"]["peak_bytes"] - memory["graddiff"]["peak_bytes"]) / grad_copy,
        "extra_mem_grad_copies_ngdiff_gen4": (memory["ngdiff_gen4"]["peak_bytes"] - memory["graddiff"]["peak_bytes"]) / grad_copy,
        "gen_overhead_ratio_interval4": mean["ngdiff_gen4"] / mean["ngdiff"],
        "gen_overhead_ratio_interval10": mean["ngdiff_gen10"] / mean["ngdiff"],
    }  # fmt: skip
    # The targets are judged on the default preset's model; the quick preset checks the harness, and its
    # memory is a few hundred KB of gradient inside RSS noise of hundreds of MB.
    judged = preset == "default"
    result["targets"] = {k: {"target": f"<= {v}", "met": result[k] <= v if judged else None,
                             "basis": "means" if k.startswith("gen_") else "medians" if "time" in k else "peak memory"}
                         for k, v in TARGETS.items()}  # fmt: skip
    result |= {
        "step_times": stats,
        "step_times_raw_s": {name: [round(x, 5) for x in v] for name, v in times.items()},
        "memory": memory,
        "preset": {"name": preset, **PRESETS[preset]},
        "command": "llm-unlearn " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "bench()",
        "hardware": device_name(),
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "date": date.today().isoformat(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json_atomic(Path(out), result)
    return result


def bench_cli(argv: list[str]) -> None:
    parser = CommandParser(prog="llm-unlearn bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="JSON file to write (required)")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--eval", action="store_true", help="time evaluation instead: batched vs batch 1")
    parser.add_argument("--size", default="default", help="--eval: world and model size (default, micro)")
    parser.add_argument("--batch_size", type=int, default=32, help="--eval: the batched side's batch size")
    parser.add_argument("--rounds", type=int, default=1, help="--eval: timed runs of each side")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    require_one_process("bench")  # every rank would do it all, into the same files
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads} must be at least 1 (or left out for torch's choice)")
    if args.out and Path(args.out).is_dir():  # before minutes of timing, not after them
        raise ValueError(
            f"--out {args.out} is a folder; pass the JSON file to write, e.g. {Path(args.out) / 'bench.json'}"
        )
    if not args.eval and not args._child:
        given = [
            f"--{name}"
            for name in ("size", "batch_size", "rounds")
            if getattr(args, name) != parser.get_default(name)
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)} applies to --eval only; add --eval, or use --preset for the training benchmark"
            )
    if args.eval:
        from .eval import bench_eval, print_summary

        if not args.out:
            raise ValueError(
                "no --out given; pass the JSON file to write, e.g. --out benchmarks/bench_eval.json"
            )
        print_summary(bench_eval(args.out, args.size, args.threads, args.batch_size, args.rounds), args.out)
        return
    if args._child:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(memory_child(Path(args._workdir), args.preset, args._child)))
        return
    if not args.out:
        raise ValueError("no --out given; pass the JSON file to write, e.g. --out benchmarks/bench_cpu.json")
    r = bench(args.out, args.preset, args.threads)
    print(f"\n{'configuration':<24}{'median s':>10}{'mean s':>10}{'q1':>9}{'q3':>9}{'n':>5}")
    for name, s in r["step_times"].items():
        print(
            f"{name:<24}{s['median_s']:>10.4f}{s['mean_s']:>10.4f}{s['q1_s']:>9.4f}{s['q3_s']:>9.4f}{s['n']:>5}"
        )
    print()
    for key in (k for k in r if k.endswith(tuple("0123456789")) or "ratio" in k or "copies" in k):
        met = r["targets"].get(key)
        verdict = (
            ""
            if not met
            else "not judged at this preset"
            if met["met"] is None
            else "met"
            if met["met"]
            else "NOT met"
        )
        print(
            f"{key:<46}{r[key]:>8.3f}"
            + (f"   target {met['target']} ({met['basis']}): {verdict}" if met else "")
        )
    print(f"wrote {args.out} ({r['hardware']}, {r['torch_threads']} threads, {r['seconds']} s)")


if __name__ == "__main__":
    bench_cli(sys.argv[1:])
