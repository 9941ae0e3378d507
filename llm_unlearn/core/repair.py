"""Unlearn past the retain-recall guard, then repair the retain set (`--stop_repair`).

On the built-in worlds the retain-recall guard (stop.py) ends most forget05/forget10 runs long before
the forget set looks unseen: ascent on the forget answers lowers the retain answers that share their
tokens, so the guard fires while forget quality is still 1e-13 to 3e-3 (benchmarks/auto.md). With
`--stop_repair` the run instead goes on as if the guard were off (the retain-loss alarm still stops
it; the recall is measured at the first check only, as the repair's baseline), keeps the check whose
gap is nearest 0 as usual, and then fine-tunes the kept weights on the retain set alone

    theta <- AdamW step on the mean answer NLL of a retain batch        (lr `stop_repair_lr`, clip 1.0)

checking the sampled retain recall every `stop_repair_interval` steps, until it is back within
`stop_repair_tolerance` of the first check's,

    recall >= (1 - stop_repair_tolerance) * recall at the first check,

or `stop_repair_max_steps` have run (then a warning says the guard is not met). A final full check
records the stop statistic of the weights returned. The tolerance (0.1) is stricter than the guard's
0.15 because the repair stops at the first check past its target, and a sample of 100 answers that
has just crossed a threshold tends to read high: at 0.15, 2 of 18 runs of `benchmarks/auto.md` ended
at 0.78 to 0.80 of the target's retain fact recall on the evaluation's questions.

Why it helps: retain-only fine-tuning brings the forget answers back too (both rest on the same
name-to-fact recall), but more slowly than the retain answers, so the repaired weights are further
from the target than the weights the guard keeps at a similar retain recall (docs/auto.md gives the
numbers). That retain-only training revives forgotten answers is itself a relearning effect (arXiv
2406.13356 relearns from related data); here it is put to use and measured by the rule's checks.

Every process runs the same steps on the same seeded batches and, with torch.distributed, takes rank
0's weights after each interval, so the ranks of a DDP run agree; sharded models (FSDP, DeepSpeed ZeRO) are
refused before training (config.py, trainer.py).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import torch

logger = logging.getLogger("llm_unlearn")


class RetainRepair:
    """The repair loop of the module docstring, on `retain_dataset` batched by `collator`."""

    def __init__(self, retain_dataset, collator, config):
        self.dataset = retain_dataset
        self.collator = collator
        self.tolerance = config.stop_repair_tolerance
        self.lr = config.stop_repair_lr
        self.interval = config.stop_repair_interval
        self.max_steps = config.stop_repair_max_steps
        self.batch_size = config.retain_batch_size or config.per_device_train_batch_size
        self.seed = config.seed

    def after(self, rule, model, step: int) -> int:
        """Repair the kept weights at the end of `rule`'s run (stop.py's `on_train_end`); each recall check is
        logged and kept in `rule.history` like a check. Returns the steps (0 where the weights meet the target)."""
        baseline = rule.history[0].get("stop_retain_recall")
        if baseline is None:  # a run resumed from a checkpoint written before --stop_repair was on
            logger.warning(
                "stop rule: --stop_repair has no retain recall from the first check to repair to; skipped"
            )
            return 0
        target = (1 - self.tolerance) * baseline

        def keep(record: dict) -> None:  # as the rule keeps its own checks: in history, on disk, in the log
            rule.history.append(record)
            rule.persist_history()
            rule.log(dict(record))

        def measure() -> tuple[float, float]:
            start = time.perf_counter()
            value = rule.scorer.recall(model)
            return value, time.perf_counter() - start

        def on_check(steps: int, value: float, loss: float | None, seconds: float) -> None:
            record = {
                "step": step + steps, "stop_phase": "repair", "stop_repair_steps": steps, "stop_retain_recall": value,
                "stop_repair_target": target, "stop_repair_loss": loss,
                "stop_decision": "repaired" if value >= target else "repair", "stop_seconds": seconds,
            }  # fmt: skip
            keep(record)

        recall, seconds = measure()
        on_check(0, recall, None, seconds)
        if recall >= target:
            return 0
        steps = self.run(model, measure, target, on_check)
        start = time.perf_counter()
        final = rule.scorer.full(model, step + steps)  # what the returned weights look like to the rule
        final |= {"stop_phase": "repair", "stop_retain_recall": rule.history[-1]["stop_retain_recall"],
                  "stop_decision": "repaired", "stop_seconds": time.perf_counter() - start}  # fmt: skip
        keep(final)
        if final["stop_retain_recall"] < target:
            logger.warning(
                "stop rule: --stop_repair ran its %d steps and the retain answers' %s is %.3f, below its target "
                "%.3f; raise --stop_repair_max_steps (or --stop_repair_lr)",
                steps, rule.scorer.recall_name(), final["stop_retain_recall"], target,
            )  # fmt: skip
        logger.info(
            "stop rule: repaired the retain set in %d retain-only steps (%s %.3f, target %.3f; gap now %s)",
            steps, rule.scorer.recall_name(), final["stop_retain_recall"], target, f"{final['stop_gap']:.3f}",
        )  # fmt: skip
        kept_gap = rule.best["stop_gap"] if rule.best else None
        if final["stop_gap"] > 0 and (kept_gap is None or final["stop_gap"] > kept_gap):
            # Retain-only training brings forget answers back too (module docstring); say so when it did.
            logger.warning(
                "stop rule: forgetting is incomplete after the repair: the forget set is more familiar than "
                "unseen data again (gap %.3f, the kept weights' %s); the repair brought part of it back",
                final["stop_gap"], "not scored" if kept_gap is None else f"{kept_gap:.3f}",
            )  # fmt: skip
        return steps

    def run(
        self,
        model,
        recall: Callable[[], tuple[float, float]],
        target: float,
        on_check: Callable[[int, float, float, float], None],
    ) -> int:
        """Train until the recall (`recall()` gives it and its seconds) reaches `target` or `max_steps` have
        run; call `on_check(steps, recall, loss, seconds)` after each interval; return the steps taken."""
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
        rng = random.Random(self.seed)
        device = params[0].device
        was_training, steps = model.training, 0
        try:
            while steps < self.max_steps:
                model.train()
                loss = torch.zeros((), device=device)
                for _ in range(min(self.interval, self.max_steps - steps)):
                    rows = rng.sample(range(len(self.dataset)), min(self.batch_size, len(self.dataset)))
                    batch = {
                        k: v.to(device) for k, v in self.collator([self.dataset[i] for i in rows]).items()
                    }
                    loss = model(**batch).loss
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"--stop_repair: the retain loss became {loss.item()} at repair step {steps + 1}; "
                            "lower --stop_repair_lr"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    optimizer.step()
                    steps += 1
                _agree(params)
                value, seconds = recall()
                on_check(steps, value, float(loss.detach()), seconds)
                if value >= target:
                    break
        finally:
            optimizer.zero_grad(set_to_none=True)
            model.train(was_training)
        return steps


def _agree(params: list[torch.nn.Parameter]) -> None:
    """Rank 0's weights on every rank (a no-op in one process): the ranks ran the same steps, but kernels
    on accelerators need not be bitwise deterministic."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        with torch.no_grad():
            for p in params:
                torch.distributed.broadcast(p.data, src=0)
