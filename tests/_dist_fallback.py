"""`llm-unlearn unlearn --auto` under two gloo ranks, with a scripted utility estimate that falls back.

usage: _dist_fallback.py MODEL_DIR DATA_DIR OUT_DIR
The micro target's utility estimate is scripted (the same on every rank: 0.5 at the check before
training, 0.3 at the next), so the first regime's alarm fires at its first check after training and the
run starts again from the original weights in the second regime (core/auto.py); the training, the checks'
sharded scoring, the archive and the saving are the real ones. Each rank writes OUT_DIR/../rank<r>.json
with its stop rule's first two records of the second attempt and the sum of every weight at the end.
Driven by tests/core/test_auto_fallback.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from _two_ranks import auto_argv  # tests/_two_ranks.py, beside this script

import llm_unlearn.core.stop as stop
import llm_unlearn.core.stop_checks as checks
from llm_unlearn.cli import main

model_dir, data_dir, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
utility = iter([0.5, 0.3])
checks.CheckScorer.utility = lambda self, model: next(utility)  # a third call would raise StopIteration
end = stop.IndistinguishableStop.on_train_end


def recording(self, args, state, control, model=None, **kwargs):
    end(self, args, state, control, model=model, **kwargs)
    if args.optim == "adamw_torch":  # the second attempt
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        sums = {n: float(p.detach().double().sum()) for n, p in model.named_parameters()}
        (out.parent / f"rank{rank}.json").write_text(json.dumps({"first": self.history[:2], "sums": sums}))


stop.IndistinguishableStop.on_train_end = recording
sys.exit(main(auto_argv(model_dir, data_dir, out)))
