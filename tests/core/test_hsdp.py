"""HSDP (FSDP2 replicated across groups, sharded within): combined directions and norms as without sharding.

accelerate enables FSDP only on accelerators, so the test drives the sharded combiners under
`fully_shard` on a 2D CPU mesh (replicate=2 x shard=1) directly, the way `UnlearnTrainer` does when
`is_fsdp_enabled` with `ParallelismConfig(dp_replicate_size=2)`. `make test-slow`
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.core.test_trainer import tiny  # noqa: F401  (module fixture: micro model and data)

HERE = Path(__file__).resolve().parents[1]  # tests/: the scripts the tests launch


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["shard_group", "all_ranks"])
def test_hsdp_directions_and_norms_equal_the_unsharded_ones(tiny, tmp_path, mode):  # noqa: F811
    """`all_ranks` (dot products summed over every rank, as before the fix) is the negative control:
    each replica's shard is counted twice, norms come out sqrt(2) too large and NGDiff's d 1/sqrt(2) too short."""
    script = [
        str(HERE / "_hsdp_combine.py"),
        str(tiny["dir"] / "model"),
        str(tiny["data_dir"]),
        str(tmp_path / "d.pt"),
        mode,
    ]
    # --standalone: a free port, so other multi-process tests may run beside this one.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *script]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = torch.load(tmp_path / "d.pt", weights_only=True)
    if mode == "all_ranks":
        ratio = result["normalized"].norm() / result["reference_normalized"].norm()
        assert float(ratio) == pytest.approx(2**-0.5, rel=1e-6)
        assert float(result["normalized_norm_forget"]) == pytest.approx(
            2**0.5 * float(result["reference_norm_forget"]), rel=1e-6
        )
        return
    for name in ("normalized", "pcgrad"):
        reference = result[f"reference_{name}"]
        assert reference.norm() > 0
        assert float((result[name] - reference).norm() / reference.norm()) < 1e-6, name
        assert float(result[f"{name}_norm_forget"]) == pytest.approx(
            float(result["reference_norm_forget"]), rel=1e-6
        )
