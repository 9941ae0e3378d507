"""`llm-unlearn unlearn ARGS` in this process, stalled at a chosen point so a test can SIGKILL it there.

KILL_AT=train:N  stall in the first micro-batch after optimizer step N (mid-step N+1; the checkpoints
                 of steps <= N are complete, train_log.jsonl holds records past the last one)
KILL_AT=save:N   stall inside the checkpoint save of step N, after its weights and optimizer are
                 written and before its RNG and trainer state (a half-written checkpoint)
KILL_AT=saved:N  stall right after the checkpoint of step N is complete (marked and rotated)
On reaching the point, the process writes the file $KILL_FLAG and sleeps until it is killed.
Nothing here changes what the run computes; without KILL_AT it is plain `llm-unlearn`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from transformers import Trainer

from llm_unlearn.cli import main
from llm_unlearn.core.trainer import UnlearnTrainer


def _stall() -> None:
    Path(os.environ["KILL_FLAG"]).write_text(str(os.getpid()))
    time.sleep(600)
    sys.exit(99)  # never reached in a passing test


kind, _, when = os.environ.get("KILL_AT", "").partition(":")
if kind == "save":
    save_rng_state = Trainer._save_rng_state

    def _save_rng_state(self, output_dir):
        if self.state.global_step == int(when):
            _stall()
        return save_rng_state(self, output_dir)

    Trainer._save_rng_state = _save_rng_state
elif kind == "saved":
    save_checkpoint = UnlearnTrainer._save_checkpoint

    def _save_checkpoint(self, *args, **kwargs):
        save_checkpoint(self, *args, **kwargs)
        if self.state.global_step == int(when):
            _stall()

    UnlearnTrainer._save_checkpoint = _save_checkpoint
elif kind == "train":
    training_step = UnlearnTrainer.training_step

    def _training_step(self, *args, **kwargs):
        if self.state.global_step == int(when):
            _stall()
        return training_step(self, *args, **kwargs)

    UnlearnTrainer.training_step = _training_step

if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main(sys.argv[1:]))
