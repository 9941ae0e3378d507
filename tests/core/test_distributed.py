"""Two CPU processes (gloo) give the same update as one process on the union of their batches. `make test-slow`"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.core.test_trainer import tiny  # noqa: F401  (module fixture: micro model and data)

HERE = Path(__file__).resolve().parents[1]  # tests/: the scripts the tests launch


def _run(
    tiny,  # noqa: F811
    out: Path,
    processes: int,
    batch_size: int,
    method: str,
    fsdp: bool = False,
    sam_rho: float = 0.0,
) -> dict:
    script = [
        str(HERE / "_dist_step.py"),
        str(tiny["dir"] / "model"),
        str(tiny["data_dir"]),
        str(out),
        str(batch_size),
        method,
        *(["fsdp"] if fsdp else []),
        *([str(sam_rho)] if sam_rho else []),
    ]
    if processes == 1:
        cmd = [sys.executable, *script]
    else:
        # accelerate 1.15's `launch --cpu` starts multi-process CPU runs only through MPI; torchrun with
        # ACCELERATE_USE_CPU gives the same gloo process group that accelerate's multi-CPU mode uses.
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), *script]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(out)


@pytest.mark.slow
# rmu read the model's config through the DDP wrapper, which has none: it failed at its first step.
@pytest.mark.parametrize("method", ["graddiff", "ngdiff", "rmu"])
def test_two_ranks_of_batch_two_equal_one_rank_of_batch_four(tiny, tmp_path, method):  # noqa: F811
    single = _run(tiny, tmp_path / "one.safetensors", processes=1, batch_size=4, method=method)
    double = _run(tiny, tmp_path / "two.safetensors", processes=2, batch_size=2, method=method)
    num = sum(float((double[n] - single[n]).norm() ** 2) for n in single) ** 0.5
    den = sum(float(single[n].norm() ** 2) for n in single) ** 0.5
    assert den > 0
    assert num / den < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("method", ["graddiff", "ngdiff"])
def test_sam_on_two_ranks_uses_the_global_forget_gradient_as_one_rank_does(tiny, tmp_path, method):  # noqa: F811
    """delta = rho g / ||g|| with g averaged over ranks: a per-rank g would move each rank elsewhere."""
    single = _run(tiny, tmp_path / "one.safetensors", processes=1, batch_size=4, method=method, sam_rho=0.05)
    double = _run(tiny, tmp_path / "two.safetensors", processes=2, batch_size=2, method=method, sam_rho=0.05)
    plain = _run(tiny, tmp_path / "plain.safetensors", processes=1, batch_size=4, method=method)
    norm = sum(float(single[n].norm() ** 2) for n in single) ** 0.5
    assert sum(float((double[n] - single[n]).norm() ** 2) for n in single) ** 0.5 / norm < 1e-6
    assert sum(float((plain[n] - single[n]).norm() ** 2) for n in single) ** 0.5 / norm > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["forced", "unforced"])
def test_fsdp2_sharded_combination_with_accumulation_equals_the_unsharded_direction(
    tiny,  # noqa: F811
    tmp_path,
    mode,
):
    """FSDP2 on two CPU ranks: per-term sharded buffers, norms from reduced shard sums, two micro-batches,
    the first inside FSDP2's `no_sync` as HF Trainer runs it.

    accelerate enables FSDP only on accelerators, so this drives `NormalizedCombiner(sharded=True)`
    under `fully_shard` directly, the way `UnlearnTrainer` does when `is_fsdp_enabled`. `unforced`
    (the combiner's forced gradient sync switched off) must get the direction wrong: without it the
    terms mix in FSDP's unsharded accumulation buffers.
    """
    script = [
        str(HERE / "_fsdp_combine.py"),
        str(tiny["dir"] / "model"),
        str(tiny["data_dir"]),
        str(tmp_path / "d.pt"),
        mode,
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *script]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import torch

    result = torch.load(tmp_path / "d.pt", weights_only=True)
    sharded, reference = result["sharded"], result["reference"]
    assert reference.norm() > 0
    error = float((sharded - reference).norm() / reference.norm())
    if mode == "unforced":
        assert error > 1e-2, "the negative control agrees: the test does not exercise no_sync"
        return
    assert error < 1e-6
    assert result["stats"]["grad_norm_forget"] == pytest.approx(result["norm_forget"], rel=1e-6)


@pytest.mark.slow
def test_gen_probes_on_two_ranks_avoid_every_ranks_window_and_each_other(tiny, tmp_path):  # noqa: F811
    """GeN's probe rows must come from outside the step's window on all ranks, not only the prober's own.

    Each rank records its window rows (from the batches themselves) and its probe rows; with 8 forget
    and 12 retain examples, a window of 2 x 2 rows per stream leaves at least 4 fresh rows for the
    2 x 2 probe rows.
    """
    import json

    prefix = tmp_path / "probes"
    script = [
        str(HERE / "_dist_gen_probes.py"),
        str(tiny["dir"] / "model"),
        str(tiny["data_dir"]),
        str(prefix),
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *script]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads(Path(f"{prefix}.rank{r}.json").read_text()) for r in range(2)]
    probe_steps = [s for s in ranks[0] if "probe_forget" in ranks[0][s]]
    assert len(probe_steps) >= 3
    for step in probe_steps:
        for stream in ("forget", "retain"):
            window = set(ranks[0][step][f"window_{stream}"]) | set(ranks[1][step][f"window_{stream}"])
            assert len(window) == 4, (step, stream, window)  # the two ranks' windows are disjoint
            probes = [set(r[step][f"probe_{stream}"]) for r in ranks]
            assert not (probes[0] | probes[1]) & window, (step, stream, probes, window)
            assert not probes[0] & probes[1], (step, stream, probes)


def test_every_script_a_test_launches_on_several_ranks_leaves_through_exit_process_group():
    """Gloo's interpreter teardown can abort a finished rank (SIGABRT, seen in CI): every launch script must skip it."""
    scripts = sorted(p for p in HERE.glob("_*.py") if p.name.startswith(("_dist_", "_fsdp_", "_hsdp_")))
    assert len(scripts) >= 5
    for script in scripts:
        text = script.read_text()
        # Either directly, or through the CLI's `main`, which ends every multi-process run with it.
        assert "exit_process_group()" in text or "llm_unlearn.cli" in text, script.name
