"""`llm-unlearn unlearn --auto --stop_repair true` under two gloo ranks, with a scripted retain recall.

usage: _dist_repair.py MODEL_DIR DATA_DIR OUT_DIR
The micro target answers no retain question right, so the recall is scripted (the same on every rank:
0.9 at the first check, 0.5 at the kept weights, 0.6 and 0.95 after 5 and 10 repair steps); the
unlearning, the repair's steps, the final sharded check and the saving are the real ones. Each rank
writes OUT_DIR/rank<r>.json with its repair steps and the sum of every weight after the repair.
Driven by tests/core/test_repair.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from _two_ranks import auto_argv  # tests/_two_ranks.py, beside this script

import llm_unlearn.core.repair as repair
import llm_unlearn.core.stop_checks as checks
from llm_unlearn.cli import main

model_dir, data_dir, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
recalls = iter([0.9, 0.5, 0.6, 0.95])
checks.CheckScorer.recall = lambda self, model: next(recalls)
run = repair.RetainRepair.run


def recording(self, model, *args, **kwargs):
    steps = run(self, model, *args, **kwargs)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    sums = {n: float(p.detach().double().sum()) for n, p in model.named_parameters()}
    (out.parent / f"rank{rank}.json").write_text(json.dumps({"steps": steps, "sums": sums}))
    return steps


repair.RetainRepair.run = recording
sys.exit(main(auto_argv(model_dir, data_dir, out, "--stop_repair", "true", "--stop_repair_lr", "1e-3")))
