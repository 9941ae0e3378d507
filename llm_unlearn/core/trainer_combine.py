"""NGDiff's and PCGrad's combination inside `UnlearnTrainer`, and the bookkeeping that outlives a step.

Each loss term's gradient is accumulated apart over a window's micro-batches (`optim.py` combines
them at the synchronizing one). What must survive a step, and a resume, lives here too:
- the peak gradient norm of each term, against which `--vanish_ratio` leaves a saturated term out;
- `--vanish_stop`'s count of steps whose forget terms were all left out, which ends training at its
  limit (the stop rule's reason `forget_vanished`, or a `training_stopped` log record without a rule).
Both are saved in each checkpoint's `combiner.json` and read back once on resume.

`CombinedStepMixin` is mixed into `UnlearnTrainer` only and reads the state its `__init__` sets
(`_combiner`, `_window_start`, `_norms`, `_step_stats`, `_forget_vanished_steps`, `_resumed_state`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch
from transformers.trainer_utils import get_last_checkpoint

from ..methods import MethodContext, Term
from ..runs.folder import write_text_atomic
from .optim import NormalizedCombiner, PCGradCombiner
from .sam import is_forget_term

logger = logging.getLogger("llm_unlearn")
COMBINER_FILE = "combiner.json"  # in each checkpoint: peak term norms and the vanished-forget count


def read_combiner_state(checkpoint: str | Path | None) -> dict:
    """The combiner state saved in `checkpoint` (empty peaks and a zero count where there is none).
    Checkpoints written before --vanish_stop (2026-12-06) saved the peak norms alone, as the whole file."""
    path = Path(checkpoint) / COMBINER_FILE if checkpoint else None
    saved = json.loads(path.read_text()) if path is not None and path.exists() else {}
    peaks = saved["peak_norms"] if "peak_norms" in saved else saved
    return {
        "peak_norms": {str(k): float(v) for k, v in peaks.items()},
        "forget_vanished_steps": int(saved.get("forget_vanished_steps", 0)),
    }


class CombinedStepMixin:
    """Per-term gradients, their combination, and the vanish bookkeeping (module docstring)."""

    def _normalized_step(self, model, forget, retain, ctx: MethodContext) -> torch.Tensor:
        """Accumulate each term's gradient apart; on the synchronizing micro-batch, combine them.

        Under DDP it runs inside `no_sync` on every micro-batch and the term buffers are averaged
        across ranks explicitly in `NormalizedCombiner.combine`. Under FSDP backward synchronizes on
        every micro-batch (reduce-scatter into each term's sharded buffer) and the norms are
        reduced from the shards. The Trainer's clipping that follows sees d.
        """
        fsdp = self.is_fsdp_enabled
        self._start_combiner(model)
        sync = contextlib.nullcontext() if fsdp else self.accelerator.no_sync(model)
        with sync, self.compute_loss_context_manager():
            raw = self._method_terms(model, forget, retain, ctx)
            terms = {name: self._normalize(t) for name, t in raw.items()}
            self._check_finite(terms)
            self._combiner.accumulate(terms)
        self._maybe_combine(model, raw)
        self._record_terms(terms)
        # Reported loss: the weighted objective (the update itself is the normalized direction).
        return sum(raw[name].weight * value.detach() for name, value in terms.items())

    def _start_combiner(self, model) -> None:
        """Build the combiner on first use; at a window's first micro-batch, drop the last step's buffers."""
        fsdp = self.is_fsdp_enabled
        if self._combiner is None:
            params = [p for p in model.parameters() if p.requires_grad]
            module = model if fsdp else None
            if self.args.combine == "pcgrad":
                self._combiner = PCGradCombiner(params, sharded=fsdp, module=module, seed=self.args.seed)
            else:
                self._combiner = NormalizedCombiner(
                    params, sharded=fsdp, module=module, vanish_ratio=self.args.vanish_ratio
                )
                self._combiner.peak_norms = self._resumed_combiner_state()["peak_norms"]
        if self._window_start:
            self._combiner.reset()
            self._window_start = False

    def _maybe_combine(self, model, raw: dict[str, Term]) -> None:
        """On the synchronizing micro-batch: combine the term buffers into `.grad` (and GeN's snapshot)."""
        if self.accelerator.sync_gradients:
            weights = {name: t.weight for name, t in raw.items()}
            stats = self._combiner.combine(
                weights, world_size=self.args.world_size, step=self.state.global_step
            )
            capped = self.args.forget_token_nll_cap is not None and stats.get("grad_norm_forget", 1.0) == 0.0
            if capped and stats["dropped_terms"] == 1 and not stats["skipped"]:
                # Expected, not a fault: every forget token of the batch is past --forget_token_nll_cap.
                logger.debug(
                    "step %d: the forget term is past its cap on every token", self.state.global_step
                )
            elif stats["dropped_terms"]:
                logger.warning("step %d: %d loss term(s) had a zero or non-finite gradient norm and were dropped%s",
                               self.state.global_step, int(stats["dropped_terms"]),
                               "; the step is skipped" if stats["skipped"] else "")  # fmt: skip
            if stats.get("vanished_terms"):
                # Expected, not a fault: a saturated loss (module docstring of optim.py). Said once per run at
                # info level (it may recur every step; train_log.jsonl's `vanished_terms` counts each).
                log = logger.debug if self._vanish_said else logger.info
                log("step %d: %d loss term(s) fell below --vanish_ratio of their peak gradient norm and were "
                    "left out%s", self.state.global_step, int(stats["vanished_terms"]),
                    "; the step is skipped" if stats["skipped"] else "")  # fmt: skip
                self._vanish_said = True
            self._count_vanished_forget(raw, stats)
            self._step_stats = stats
            self._norms = {name: stats[f"grad_norm_{name}"] for name in raw}
            self._maybe_snapshot_for_gen(model, skipped=bool(stats["skipped"]))

    def _count_vanished_forget(self, raw: dict[str, Term], stats: dict[str, float]) -> None:
        """--vanish_stop: count the steps whose forget terms were all left out, and end training at the limit.

        The step being combined is still taken (it is a retain-only step, as the rule of optim.py made it);
        Trainer then leaves its loop. The count is the same on every rank (the norms are reduced first).
        """
        forget = [name for name, term in raw.items() if is_forget_term(term)]
        if not forget or self.args.combine != "normalized":
            return
        count = self._vanished_forget_count()
        if all(name in self._combiner.vanished for name in forget):
            count += 1
        self._forget_vanished_steps = count
        stats["forget_vanished_steps"] = float(count)
        if self.args.vanish_stop and count >= self.args.vanish_stop:
            self._stop_on_vanished(self.state.global_step + 1)

    def _vanished_forget_count(self) -> int:
        if self._forget_vanished_steps is None:
            self._forget_vanished_steps = self._resumed_combiner_state()["forget_vanished_steps"]
        return self._forget_vanished_steps

    def _resumed_combiner_state(self) -> dict:
        """The state saved with the checkpoint this run resumes from (none on a fresh run), read once:
        the peaks are needed when the combiner is built, the count before the first step."""
        if self._resumed_state is None:
            resume = getattr(self, "_resume_from", None)
            if resume is True:
                resume = get_last_checkpoint(self.args.output_dir)
            self._resumed_state = read_combiner_state(resume)
        return self._resumed_state

    def _save_combiner_state(self, checkpoint: Path) -> None:
        """Into a checkpoint: the vanish test's memory (optim.py), identical on every rank, written by rank 0."""
        if self._combiner is not None and self._combiner.peak_norms and self.is_world_process_zero():
            state = {
                "peak_norms": self._combiner.peak_norms,
                "forget_vanished_steps": self._forget_vanished_steps or 0,
            }
            write_text_atomic(checkpoint / COMBINER_FILE, json.dumps(state))

    def _stop_on_vanished(self, step: int) -> None:
        """End training after `step`: tell the stop rule (its reason) or log the reason ourselves."""
        if self.control.should_training_stop:
            return
        self.control.should_training_stop = True
        logger.info(
            "step %d: the forget terms were left out as vanished in %d steps (--vanish_stop %d): nothing is left "
            "to unlearn at this step size, so training ends here", step, self._forget_vanished_steps,
            self.args.vanish_stop,
        )  # fmt: skip
        rules = [cb for cb in self.callback_handler.callbacks if hasattr(cb, "stopped_by")]
        for rule in rules:
            rule.stopped_by("forget_vanished")
        if not rules:
            self._append_log({"step": step, "training_stopped": "forget_vanished",
                              "forget_vanished_steps": self._forget_vanished_steps})  # fmt: skip
