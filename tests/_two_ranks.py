"""Two gloo ranks of a micro `llm-unlearn unlearn --auto` run: the command line the `_dist_*.py` scripts
share, and how the tests start them (torchrun with ACCELERATE_USE_CPU, the multi-CPU mode accelerate uses)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def auto_argv(model_dir: str, data_dir: str, out: Path, *extra: str) -> list[str]:
    """`unlearn --auto` on the micro world's forget10, small batches and answers, no final evaluation."""
    return [
        "unlearn", "--auto", "--model_name_or_path", model_dir, "--data_dir", data_dir, "--forget_split", "forget10",
        "--output_dir", str(out), "--eval_batch_size", "16", "--max_new_tokens", "8", "--disable_tqdm", "true",
        "--do_final_eval", "false", "--per_device_train_batch_size", "4", *extra,
    ]  # fmt: skip


def run_two_ranks(script: str, *args: str) -> None:
    """`tests/<script> ARGS` under two ranks; fails the test with the ranks' stderr if it fails."""
    path = Path(__file__).resolve().parent / script
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(path), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
