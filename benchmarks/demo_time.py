"""Where `llm-unlearn demo` spends its time, now and at an earlier commit, side by side in one run.

    python benchmarks/demo_time.py                         # HEAD vs aeeb57c, cold then warm, 1 thread
    python benchmarks/demo_time.py --base aeeb57c --out benchmarks/demo_time.json

For each version (the working tree, and `--base` checked out in a temporary git worktree) the demo
runs twice in a fresh process with one torch thread: cold (an empty model and evaluation cache, so
the models are built) and warm (the same cache again, as a user's second `make demo`). The versions
alternate so that load on the machine falls on both alike. Recorded per run: the demo's own stage
seconds (`summary.json`), the wall time of the process, and per evaluated model the seconds of its
evaluation split into answer-loss scoring, greedy generation and membership-inference scoring
(timed by wrapping those three functions of `eval/tofu.py`; an evaluation read from the cache costs
none of them). Results: `--out` (JSON) and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs inside the demo process: times the three parts of every evaluation, per model, then the demo.
PROBE = r"""
import json, sys, time, collections
import torch
from llm_unlearn.eval import tofu
parts = collections.defaultdict(lambda: collections.defaultdict(float))
current = ["?"]
def timed(name, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            parts[current[0]][name] += time.perf_counter() - start
    return wrapper
for name, label in (("answer_losses", "scoring"), ("generate_answers", "generation"), ("sample_scores", "membership")):
    if hasattr(tofu, name):
        setattr(tofu, name, timed(label, getattr(tofu, name)))
evaluate = tofu.evaluate
def evaluate_timed(model, *args, **kwargs):
    current[0] = str(model.name_or_path).rstrip("/").split("/")[-1]
    return timed("evaluate", evaluate)(model, *args, **kwargs)
tofu.evaluate = evaluate_timed
try:
    from llm_unlearn.pipeline.demo import demo
except ImportError:  # a base commit from before the package's layers (2026-12-02): llm_unlearn/demo.py
    from llm_unlearn.demo import demo
summary = demo("default", sys.argv[1], threads=1)
json.dump({"stage_seconds": summary["stage_seconds"], "passed": summary["passed"],
           "evaluations": {m: {k: round(v, 2) for k, v in p.items()} for m, p in parts.items()}},
          open(sys.argv[2], "w"), indent=1)
"""


def run_demo(source: Path, cache: Path, work: Path, label: str) -> dict:
    out, record = work / f"{label}-demo", work / f"{label}.json"
    env = {**os.environ, "LLM_UNLEARN_CACHE": str(cache), "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, str(out), str(record)], cwd=source, env=env,
                          capture_output=True, text=True)  # fmt: skip
    wall = round(time.perf_counter() - start, 1)
    if done.returncode not in (0, 1):  # 1: a demo check failed, which is a result, not a crash
        raise RuntimeError(f"{label} failed:\n{done.stderr[-3000:]}")
    result = json.loads(record.read_text())
    return {**result, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="aeeb57c", help="the earlier commit to compare with")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "demo_time.json"))
    args = parser.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    with tempfile.TemporaryDirectory(prefix="demo-time-") as tmp:
        tmp = Path(tmp)
        base_tree = tmp / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=REPO, check=True,
                       capture_output=True)  # fmt: skip
        try:
            versions = {"head": REPO, "base": base_tree}
            runs: dict[str, dict] = {}
            load = [os.getloadavg()[0]]
            for phase in ("cold", "warm"):
                for name, source in versions.items():
                    label = f"{name}-{phase}"
                    print(f"[{time.strftime('%H:%M:%S')}] {label}", flush=True)
                    runs[label] = run_demo(source, tmp / f"cache-{name}", tmp, label)
            load.append(os.getloadavg()[0])
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(base_tree)], cwd=REPO, capture_output=True
            )
    record = {
        "date": str(date.today()),
        "hardware": f"{platform.machine()}, {os.cpu_count()} cores, {_cpu_name()}",
        "torch_threads": 1,
        "load_average_1min": {"start": round(load[0], 2), "end": round(load[1], 2)},
        "command": "python benchmarks/demo_time.py "
        + " ".join(a for a in sys.argv[1:] if not a.startswith("/")),
        "versions": {"head": head.stdout.strip(), "base": args.base},
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print_table(record)


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def print_table(record: dict) -> None:
    print(
        f"\n{'run':<11} {'wall s':>7} "
        + " ".join(f"{s:>8}" for s in ("world", "models", "unlearn", "eval", "report"))
    )
    for label, run in record["runs"].items():
        stages = run["stage_seconds"]
        print(
            f"{label:<11} {run['wall_s']:>7.1f} "
            + " ".join(f"{stages.get(s, 0):>8.1f}" for s in ("world", "models", "unlearn", "eval", "report"))
        )
    print(f"\n{'run':<11} {'model':<24} {'evaluate':>8} {'scoring':>8} {'generation':>10} {'membership':>10}")
    for label, run in record["runs"].items():
        for model, parts in run["evaluations"].items():
            print(
                f"{label:<11} {model:<24} {parts.get('evaluate', 0):>8.1f} {parts.get('scoring', 0):>8.1f} "
                f"{parts.get('generation', 0):>10.1f} {parts.get('membership', 0):>10.1f}"
            )


if __name__ == "__main__":
    main()
