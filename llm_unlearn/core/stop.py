"""When to stop unlearning without a reference model: once the forget set looks like unseen data.

TOFU and the built-in world ship a `holdoutNN` split: questions about authors the model never saw,
of the same kind and number as the forget set. Every check (once per epoch by default, and once
before the first step) scores, in eval mode and without gradients, one value per forget question and
per holdout question with the current weights, and compares the two samples:

    gap = sign * KS(R_forget, R_holdout)  (truth_ratio, the default where it can be computed: R =
                                           P(perturbed) / P(paraphrase) per question as in TOFU's truth
                                           ratio (arXiv 2401.06121, geometric variant), the two-sample
                                           Kolmogorov-Smirnov distance, + while the forget median R is
                                           below the holdout's)
    gap = AUC(forget, holdout) - 1/2      (auc: on the mean answer NLL, the probability that a holdout
                                           example has the higher loss, ties 1/2; as in `eval/mia.py`)
    gap = sign * KS(forget, holdout)      (ks: the KS distance of the answer NLLs, signed likewise)

`truth_ratio` needs the paraphrased and perturbed answers of the holdout questions
(`holdoutNN_perturbed`): the built-in world writes them; TOFU's holdout has question and answer
only, so there `auto` uses `truth_ratio_constructed`: the same KS of truth ratios, on wrong answers
built from other retain authors' answers to the most similar question, alike for the forget and the
holdout side (`data/constructed.py`; `auc` only where none can be built). Why the default: forget quality is a KS test on the
forget set's truth ratios against a never-trained model's, and a never-trained model sees the forget
set as this model sees the holdout, so the KS distance between forget and holdout ratios tracks forget
quality with no reference model. The answer-loss statistics do not: ascent drives the trained answers'
own loss past the holdout's before the truth ratios (which score *paraphrased* and perturbed answers)
reach the holdout's, 6 to 42 steps earlier in the 18 traces of `benchmarks/stop_study.md`.

The target model has gap near +1/2 (auc) or +1 (KS): its forget set is far more familiar than unseen
data. Unlearning drives the gap down; 0 is "indistinguishable"; below 0 the forget set is now *less* likely than
unseen data, which over-unlearns and is itself a membership signal (arXiv 2407.06460 calls it a
privacy leak). The rule stops at the first check at or below 0 (`crossed`), keeps the weights of
the check closest to 0 (`best`; of checks at the same gap, the one with the lower retain loss) and
restores them at the end. A gap at or
below 0 before any training (the model does not know its forget set: often the wrong model) is
warned about and ends the run with the model unchanged (`already_indistinguishable`). The retain
loss (on a fixed sample of the retain set) guards utility: a check whose retain loss has given up
more than `retain_tolerance` of its lead over unseen data before training (rise / (holdout loss -
retain loss), both at the first check; relative to the retain loss itself if the retain set was no
better known than the holdout) stops the run (`retain_alarm`) and is never kept. The rule also stops
when the gap has not come closer to 0 for `patience` checks (`stalled`), unless the gap is still
saturated (+1/2 for auc, +1 for KS: while every forget value is below every holdout value the
statistic cannot move, however fast the forget values rise). Otherwise the run's own length
(`max_steps` / epochs) is the safety net (`max_steps`), and under `--vanish_stop` a forget loss that
has saturated ends it too (`forget_vanished`; core/trainer_combine.py); either way the final weights are
checked as a candidate.

Screening (`screen`, on by default, truth_ratio only, not with damping): a truth-ratio check scores
7 texts per question (answer, paraphrase, 5 perturbed); the answer alone is 1 of them. Until the
answer-loss AUC gap first reaches 0, a check scores only the answers and the retain sample, and
logs `stop_gap` as None (`stop_screened`). Ascent pushes the trained answers' own loss past the
holdout's before the truth ratios reach the holdout's (above), so a screened check is never the
crossing; while screening, the latest check within the retain tolerance is the one kept (its
truth-ratio gap is unknown, and any scored check within tolerance replaces it, except that if the
first scored check has already crossed, the kept screened check's weights are scored too and the
nearer of the two is kept, `stop_previous_gap`). Replayed on the 18
traces of `benchmarks/stop_study.md`, this keeps the same check in 18 of 18 and scores truth ratios
at 74 of the 126 checks. The check before training is screened too (since 2026-12-05; it was scored
in full before): its truth-ratio gap decides nothing unless the run keeps it and a scored check
later crosses, and then it is scored as any kept screened check is. Only a first check whose
answer-loss gap is already <= 0 is scored in full there, for the `already_indistinguishable` test.

With `utility_tolerance` > 0 (off by default, 0.2 under `--auto`) each check also estimates model utility itself, as
`eval/tofu.py` scores it (answer probability, greedy answer's ROUGE-L and truth ratio on retain, real
authors and world facts; their harmonic mean) on `utility_sample` seeded questions per role; a check
whose estimate has lost more than that share of the first check's stops the run (`utility_alarm`)
and is never kept (under `--auto` the alarm instead hands the run to its second regime, `auto.py`:
no repair, the weights are dropped). The retain loss is a coarse stand-in: the three `auto-damped` runs of
`benchmarks/auto.md` that fell below 80% of the target's utility had lost it in ROUGE-L of the greedy
answers (0.43 to 0.73 of the target's) and in retain answer probability (0.60 to 0.67), while their
truth ratios stayed at 0.91 to 1.01. The estimate costs a greedy generation per sampled question.
Under `--auto`, where the alarm only picks the regime (its weights are dropped either way), it is made
at the first check and at the 1st, 2nd, 4th, 8th, ... after it, and then on the kept weights at the end
if their check was not one of those (a `stop_phase: "kept"` record; out of tolerance, it is the alarm):
the weights returned have passed the estimate, as before, at about half of the estimates (201 to 102 on
the 18 development runs; every alarm measured came at the 1st or 2nd check, SmolLM2 forget01).

With `retain_recall_tolerance` > 0 (0.15 under `--auto`) each check also answers `retain_recall_sample`
seeded retain questions greedily and scores what the report's collateral-damage line scores: fact
recall where every row carries a `fact` (the built-in world), else ROUGE-L recall against the answer
(TOFU). A check that has lost more than that share of the first check's stops the run
(`retain_recall_alarm`) and is never kept: on the built-in world the greedy answers to retain questions
fall long before the retain loss moves (benchmarks/auto.md, issue 22). When any guard ends the run
while the kept check's gap (or, screened, its answer-loss gap) is still > 0, a warning says that
forgetting is incomplete; so it does when the run runs out of steps before the crossing.

With `repair` (`--stop_repair`, off by default) the retain-recall guard stops nothing while
unlearning: the recall is measured at the first check only, and after the kept weights are restored
the run fine-tunes them on the retain set alone until the sampled recall is back within
`--stop_repair_tolerance` of that first value (repair.py has the loop and why it helps). Each repair
check is logged with `stop_phase: "repair"`, and a last full check scores the weights returned.

With `lr_damping` (off by default) each check also multiplies the learning rate by the share of the
gap left, gap / first gap (at least 0.1), so that the crossing is approached in smaller steps; GeN
keeps fitting the undamped step size. `benchmarks/auto.md` measures it (`auto-damped*` arms).

A seeded `heldout_fraction` of the forget questions (by question within each author,
`data/heldout.py`) can be kept out of training (0 under `--auto`: a request to forget a set means the
whole set); the gap is decided on the whole forget set and logged for both parts (`stop_gap_trained`,
`stop_gap_heldout`). Each check is a `train_log.jsonl` record.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import TrainerCallback

from .auto import fallback_applies
from .config import TRUTH_RATIO_STATISTICS
from .stop_checks import CheckScorer, signed_gap
from .stop_state import BEST_FILE, load, read_saved, save_best_weights, save_history, snapshot

__all__ = ["BEST_FILE", "IndistinguishableStop", "signed_gap"]

logger = logging.getLogger("llm_unlearn")

DAMPING_FLOOR = 0.1  # --stop_lr_damping never slows the steps more than tenfold
# |gap| of two samples that do not overlap at all
SATURATED = {"auc": 0.5, "ks": 1.0, "truth_ratio": 1.0, "truth_ratio_constructed": 1.0}


class IndistinguishableStop(TrainerCallback):
    """The stop rule of the module docstring, as a `TrainerCallback` (one per run).

    `log` writes one record (rank 0's `train_log.jsonl`); what a check measures is `self.scorer`'s
    (`stop_checks.py`), sharded over ranks like any evaluation, so every rank takes the same decision.
    """

    def __init__(
        self,
        tokenizer,
        forget_rows: list[dict],
        stop_data: dict,
        config,
        score_settings: dict,
        log: Callable[[dict], None],
        output_dir: str | Path,
        repair=None,
    ):
        self.scorer = CheckScorer(tokenizer, forget_rows, stop_data, score_settings)
        # `--stop_repair` (repair.py): the recall guard stops nothing during unlearning; it is met afterwards.
        self.repair = repair
        self.statistic = stop_data["statistic"]
        self.holdout_name = stop_data.get("holdout_name", "the holdout split")
        self.interval = config.stop_check_interval
        self.patience = config.stop_patience
        self.tolerance = config.stop_retain_tolerance
        self.recall_tolerance = getattr(config, "stop_retain_recall_tolerance", 0.0)
        self.utility_tolerance = getattr(config, "stop_utility_tolerance", 0.0)
        # --auto's first regime: a utility alarm hands the run to the second regime (auto.py), not to the repair.
        self.fallback = fallback_applies(config)
        self.log = log
        self.output_dir = Path(output_dir)
        self.history: list[dict] = []
        self.best: dict | None = None
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.decision = "max_steps"
        self.damping = 1.0 if config.stop_lr_damping else None  # lr multiplier (module doc)
        # Damping needs the gap at every check, so it turns screening off.
        self.screening = (
            self.statistic in TRUTH_RATIO_STATISTICS
            and getattr(config, "stop_screen", False)
            and self.damping is None
        )
        self._undamped = None
        # `--auto`'s second attempt starts from the weights the first one's check before training scored,
        # on the same data: that record stands for its own first check (set by pipeline/unlearn.py).
        self.replay: dict | None = None

    def check(self, model, step: int) -> str:
        """Score, record, keep the best weights; return the decision."""
        start = time.perf_counter()
        record = None
        replay, self.replay = (self.replay if not self.history else None), None
        if replay is not None:
            record = {k: v for k, v in replay.items() if k not in _CHECK_KEYS} | {"stop_replayed": True}
            self.screening = self.screening and bool(record.get("stop_screened"))
        elif self.screening:
            record = self.scorer.screened(model, step)
            self.screening = record is not None  # once the answer-loss gap reached 0, every check in full
        if record is None:
            record = self.scorer.full(model, step)
        gap = record["stop_gap"]
        # The retain loss's rise as a share of its lead over unseen data before training (holdout loss
        # - retain loss): scale-free, unlike a rise relative to a loss the target has memorized to ~0.
        first = self.history[0] if self.history else record
        lead = first["stop_holdout_loss"] - first["stop_retain_loss"]
        base = lead if lead > 1e-6 else max(first["stop_retain_loss"], 1e-12)
        record["stop_retain_rise"] = (record["stop_retain_loss"] - first["stop_retain_loss"]) / base
        # Weights that gave up more of the retain set than the tolerance allows are never kept, however
        # close their gap: on forget10 of the built-in world the crossing itself can come after
        # utility has fallen (benchmarks/stop_study.md). A screened check (gap None) within tolerance
        # replaces the previous best, and any scored one replaces it (module doc).
        retain_ok = record["stop_retain_rise"] <= self.tolerance
        utility_ok = not self._utility_due() or _within_share(
            record, first, "stop_utility", self.scorer.utility(model), self.utility_tolerance
        )
        # Under --stop_repair the recall is only the repair's baseline: measured at the first check alone.
        recall_ok = (
            not self.scorer.recall_rows
            or (self.repair is not None and bool(self.history))
            or _within_share(
                record, first, "stop_retain_recall",
                replay["stop_retain_recall"] if replay and "stop_retain_recall" in replay else self.scorer.recall(model),
                self.recall_tolerance,
            )
        )  # fmt: skip
        within = retain_ok and utility_ok and recall_ok
        if (
            within
            and gap is not None
            and gap <= 0
            and self.best is not None
            and self.best["stop_gap"] is None
        ):
            # Crossed at the first scored check: was the screened check kept so far nearer 0? Score it.
            record["stop_previous_gap"] = self._rescore_best(model)
        # The gap moves in steps (1/n of a KS distance over n questions), so equal gaps are common on a small
        # forget set: at a tie the check that has cost the retain set less is kept. A tie is not progress,
        # so the patience still counts from the first check at that gap (`stop_tie_of`).
        tie = (
            within
            and gap is not None
            and self.best is not None
            and self.best["stop_gap"] is not None
            and math.isclose(abs(gap), abs(self.best["stop_gap"]), rel_tol=0.0, abs_tol=1e-9)
            and record["stop_retain_loss"] < self.best["stop_retain_loss"]
        )
        if tie:
            record["stop_tie_of"] = self.best.get("stop_tie_of", self.best["step"])
        if (
            self.best is None
            or (within and gap is None)
            or (within and (self.best["stop_gap"] is None or abs(gap) < abs(self.best["stop_gap"])))
            or tie
        ):
            self.best = record
            self.best_weights = snapshot(model)
            save_best_weights(self.output_dir, self.best_weights)
        self.history.append(record)
        decision = "continue"
        if len(self.history) == 1 and gap is not None and gap <= 0:
            decision = "already_indistinguishable"
            logger.warning(
                "stop rule: before any training the forget set already looks like unseen data to this model (gap "
                "%.3f <= 0 against %s); there is nothing for the rule to unlearn, so the model is kept unchanged: "
                "check that --model_name_or_path was trained on the forget split", gap, self.holdout_name,
            )  # fmt: skip
        if self.scorer.utility_rows and len(self.history) == 1 and record["stop_utility"] <= 0:
            logger.warning(
                "stop rule: the utility estimate is 0 at the first check (one of its parts is 0 on the sample), so "
                "--stop_utility_tolerance cannot act; raise --stop_utility_sample or check the model and data"
            )
        if len(self.history) > 1:
            progress_step = self.best.get("stop_tie_of", self.best["step"])
            checks_since_best = sum(r["step"] > progress_step for r in self.history)
            best_gap = self.best["stop_gap"]
            if not within:
                decision = (
                    "retain_alarm"
                    if not retain_ok
                    else "retain_recall_alarm"
                    if not recall_ok
                    else "utility_alarm"
                )
            elif gap is not None and gap <= 0:
                decision = "crossed"
            elif (
                best_gap is not None
                and checks_since_best >= self.patience
                and abs(best_gap) < SATURATED[self.statistic]
            ):
                decision = "stalled"
        if self.damping is not None:
            first_gap = self.history[0]["stop_gap"]
            self.damping = min(1.0, max(DAMPING_FLOOR, gap / first_gap)) if first_gap > 0 else 1.0
            record["stop_lr_damping"] = self.damping
        record["stop_decision"] = decision
        record["stop_seconds"] = (
            time.perf_counter() - start
        )  # the check's cost: scoring, keeping the best weights
        self.persist_history()
        self.log(dict(record))
        if decision == "utility_alarm":
            logger.warning(
                "stop rule: the estimated model utility fell %.0f%% below the first check's (tolerance %.0f%%) at "
                "gap %s; stopping and keeping step %d's weights (gap %s)",
                100 * record["stop_utility_drop"], 100 * self.utility_tolerance, _fmt(gap), self.best["step"],
                _fmt(self.best["stop_gap"]),
            )  # fmt: skip
        if decision == "retain_recall_alarm":
            logger.warning(
                "stop rule: the retain answers' %s fell %.0f%% below the first check's (tolerance %.0f%%) at gap %s; "
                "stopping and keeping step %d's weights (gap %s)",
                self.scorer.recall_name(), 100 * record["stop_retain_recall_drop"], 100 * self.recall_tolerance, _fmt(gap),
                self.best["step"], _fmt(self.best["stop_gap"]),
            )  # fmt: skip
        if self.scorer.recall_rows and len(self.history) == 1 and record["stop_retain_recall"] <= 0:
            logger.warning(
                "stop rule: no retain answer is right at the first check (%s 0 on %d questions), so "
                "--stop_retain_recall_tolerance cannot act; check that the model was trained on the retain split",
                self.scorer.recall_name(), len(self.scorer.recall_rows),
            )  # fmt: skip
        if decision == "retain_alarm":
            kept = self.best["stop_gap"]
            logger.warning(
                "stop rule: the retain loss gave up %.0f%% of its lead over unseen data (tolerance %.0f%%) at gap %s; "
                "stopping and keeping step %d's weights (gap %s)",
                100 * record["stop_retain_rise"], 100 * self.tolerance, _fmt(gap), self.best["step"], _fmt(kept),
            )  # fmt: skip
        return decision

    def _utility_due(self) -> bool:
        """Whether this check estimates model utility: every check, unless the estimate only picks `--auto`'s
        regime (`self.fallback`); then the first check and the 1st, 2nd, 4th, 8th, ... after it, and the kept
        weights at the end if their check was not one of those (`_estimate_kept`; module doc)."""
        if not self.scorer.utility_rows:
            return False
        k = len(self.history)  # checks so far (unlearning only: the repair's come after the last)
        return not self.fallback or k & (k - 1) == 0

    def _estimate_kept(self, model, step: int) -> None:
        """`--auto`'s regime choice on the weights it would return: estimate the kept check's utility if its
        check did not, as a record of its own (`stop_phase: "kept"`); out of tolerance, it is the alarm."""
        start = time.perf_counter()
        if self.best["step"] != step:
            load(model, self.best_weights)  # on_train_end restores them anyway (or the run falls back)
        record = {"step": self.best["step"], "stop_phase": "kept", "stop_statistic": self.statistic}
        ok = _within_share(
            record, self.history[0], "stop_utility", self.scorer.utility(model), self.utility_tolerance
        )
        # Under keys of its own: a run resumed after this estimate has no record of it (on_train_begin drops
        # `kept` records) and estimates again, whatever it found.
        self.best.update(
            stop_kept_utility=record["stop_utility"], stop_kept_utility_drop=record["stop_utility_drop"]
        )
        record["stop_decision"] = "continue" if ok else "utility_alarm"
        record["stop_seconds"] = time.perf_counter() - start
        self.history.append(record)
        self.persist_history()
        self.log(dict(record))
        if not ok:
            self.decision = "utility_alarm"
            logger.warning(
                "stop rule: the estimated model utility of the kept weights (step %d) is %.0f%% below the first "
                "check's (tolerance %.0f%%)", self.best["step"], 100 * record["stop_utility_drop"],
                100 * self.utility_tolerance,
            )  # fmt: skip

    def _rescore_best(self, model) -> float:
        """Score the kept (screened) check's weights in full, update its record, return its gap.

        The current weights wait on the CPU meanwhile and are put back.
        """
        current = snapshot(model)
        load(model, self.best_weights)
        scored = self.scorer.full(model, self.best["step"])
        load(model, current)
        keep = (
            "stop_gap",
            "stop_gap_trained",
            "stop_gap_heldout",
            "stop_forget_truth_ratio",
            "stop_holdout_truth_ratio",
        )
        self.best.update({k: scored[k] for k in keep}, stop_rescored=True)
        return self.best["stop_gap"]

    def persist_history(self) -> None:
        """Every check so far and which one is kept (stop_state.py), rewritten after each check."""
        save_history(self.output_dir, self.best["step"], self.history)

    # ---------------------------------------------------------------- Trainer hooks

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.interval <= 0:
            per_epoch = state.max_steps / max(args.num_train_epochs, 1e-9) if args.max_steps <= 0 else None
            self.interval = max(1, round(per_epoch)) if per_epoch else max(1, state.max_steps // 10)
        if self.repair is not None:  # --stop_repair_anchors: sampled from the target, before its first step
            self.repair.begin(model, self.scorer.tokenizer, self.output_dir, resumed=state.global_step > 0)
        saved = read_saved(self.output_dir, state.global_step)
        if saved is not None:
            # An unfinished --stop_repair and the kept weights' utility estimate (`_estimate_kept`) are redone
            # at the end of the resumed run: read_saved drops their records.
            self.history, self.best, self.best_weights = saved
            # A check scored in full means screening had ended (runs before 2026-12-05 scored step 0 in
            # full while still screening: resumed, they score every later check in full, which is safe).
            self.screening = self.screening and not any(r.get("stop_screened") is False for r in self.history)
            if self.damping is not None:
                self.damping = self.history[-1].get("stop_lr_damping", 1.0)
            # A decision taken at or before the checkpoint stands: the resumed run trains no further
            # (UnlearnTrainer runs no epoch once the stop flag is up) and ends as the first run would have.
            last = self.history[-1] if self.history else {}
            if last.get("stop_decision", "continue") != "continue":
                self.decision = last["stop_decision"]
                control.should_training_stop = True
                logger.info(
                    "stop rule: resumed after its decision (%s at step %d); training ends here",
                    self.decision, last["step"],
                )  # fmt: skip
            return
        if not self.history:
            decision = self.check(model, state.global_step)
            if decision != "continue":  # already indistinguishable: the Trainer stops after its first step
                self.decision = decision
                control.should_training_stop = True

    def stopped_by(self, reason: str) -> None:
        """Training ends for a reason of the trainer's own (`forget_vanished`: --vanish_stop), after this step.

        A decision of the rule's own at the same step's check (it runs after) takes its place.
        """
        if self.decision == "max_steps":
            self.decision = reason

    def _damp(self, scheduler) -> None:
        """Scale the schedule's multiplier by `self.damping` from now on (GeN's factor, LambdaLR's lambdas).

        GeN keeps its estimate in the schedule's units, so it goes on fitting the undamped step size.
        """
        if self._undamped is not None or scheduler is None:
            return
        if hasattr(scheduler, "factor"):  # gen.GenScheduler
            self._undamped = scheduler.factor
            scheduler.factor = lambda k: self._undamped(k) * self.damping
        elif isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            self._undamped = list(scheduler.lr_lambdas)
            scheduler.lr_lambdas = [lambda k, f=f: f(k) * self.damping for f in self._undamped]
        else:  # config refuses other schedules with --stop_lr_damping
            raise ValueError(f"--stop_lr_damping needs a multiplier schedule, not {type(scheduler).__name__}")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.damping is not None:
            self._damp(kwargs.get("lr_scheduler"))
        if state.global_step % self.interval:
            return
        before = self.damping
        decision = self.check(model, state.global_step)
        if self.damping is not None and self.damping != before and kwargs.get("optimizer") is not None:
            # The next step's lr was set before this check: rescale it now rather than one step late.
            for group in kwargs["optimizer"].param_groups:
                group["lr"] *= self.damping / before
        if decision != "continue":
            self.decision = decision
            control.should_training_stop = True

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if (
            self.history
            and self.history[-1]["step"] != state.global_step
            and self.decision != "already_indistinguishable"
        ):
            self.check(model, state.global_step)  # the final weights are a candidate too
        if (
            self.fallback
            and self.scorer.utility_rows  # without the utility splits the guard is off (warned at the start)
            and self.decision != "utility_alarm"
            and self.best
            and "stop_utility" not in self.best
        ):
            self._estimate_kept(model, state.global_step)
        if self.fallback and self.decision == "utility_alarm":
            # The weights are thrown away (pipeline/unlearn.py starts again from the original ones): no repair.
            self.log({"step": state.global_step, "stop_reason": self.decision, "stop_fallback": True})
            return
        best = self.best
        restored = best is not None and best["step"] != state.global_step
        if restored:
            load(model, self.best_weights)
        logger.info(
            "stop rule: %s at step %d; %s step %d (gap %s)", self.decision, state.global_step,
            "restored the weights of" if restored else "kept", best["step"] if best else -1,
            _fmt(best["stop_gap"] if best else math.nan),
        )  # fmt: skip
        repair_steps = (
            self.repair.after(self, model, state.global_step) if self.repair is not None and best else 0
        )
        self.log({
            "step": state.global_step + repair_steps, "stop_reason": self.decision,
            **({"stop_repair_steps": repair_steps} if self.repair is not None else {}),
            "stop_best_step": best["step"] if best else None, "stop_best_gap": best["stop_gap"] if best else None,
            "stop_restored": restored,
            # The kept check as finally scored (a screened check re-scored at the crossing has its gap here).
            "stop_best_check": dict(best) if best else None,
        })  # fmt: skip
        if best is not None and self.decision.endswith("alarm") and _still_familiar(best):
            # A guard, not the crossing, ended the run: say plainly that forgetting is incomplete.
            logger.warning(
                "stop rule: forgetting is incomplete: a guard (%s) stopped the run while the forget set was still "
                "more familiar than unseen data at the kept weights (%s); going further would have cost more of the "
                "retain set than the guard allows. Loosen the guard (%s) to trade retain answers for forgetting%s",
                self.decision, _familiarity(best), GUARD_OPTIONS.get(self.decision, "its tolerance"),
                "" if self.repair is not None or self.decision != "retain_recall_alarm"
                else ", or let --stop_repair true unlearn past it and repair the retain set afterwards",
            )  # fmt: skip
        elif best is not None and self.decision == "max_steps" and _still_familiar(best):
            # Out of steps before the crossing: as incomplete as a guard's stop, and as easy to miss.
            logger.warning(
                "stop rule: forgetting is incomplete: the run used all its steps (%d) while the forget set was still "
                "more familiar than unseen data at the kept weights (%s); train longer (--num_train_epochs or "
                "--max_steps) to let the rule decide", state.global_step, _familiarity(best),
            )  # fmt: skip


# What `check` adds to the scorer's record (a replayed record's are computed again; `replay`).
_CHECK_KEYS = frozenset({
    "stop_retain_rise", "stop_utility", "stop_utility_drop", "stop_retain_recall", "stop_retain_recall_drop",
    "stop_previous_gap", "stop_tie_of", "stop_lr_damping", "stop_decision", "stop_seconds",
})  # fmt: skip
# The option that sets each guard's tolerance, named in the "forgetting is incomplete" warning.
GUARD_OPTIONS = {
    "retain_alarm": "--stop_retain_tolerance",
    "retain_recall_alarm": "--stop_retain_recall_tolerance",
    "utility_alarm": "--stop_utility_tolerance",
}


def _within_share(record: dict, first: dict, key: str, value: float, tolerance: float) -> bool:
    """Record `value` under `key` and the share of the first check's value it has lost (`key`_drop);
    whether that share is within `tolerance`."""
    record[key] = value
    start = first.get(key, value)
    record[f"{key}_drop"] = 1 - value / start if start > 0 else 0.0
    return record[f"{key}_drop"] <= tolerance


def _still_familiar(record: dict) -> bool:
    """The kept check had not reached indistinguishable: its gap > 0, or (screened) its answers' loss gap > 0."""
    gap = record["stop_gap"] if record["stop_gap"] is not None else record.get("stop_gap_loss_auc")
    return gap is not None and gap > 0


def _familiarity(record: dict) -> str:
    if record["stop_gap"] is not None:
        return f"gap {record['stop_gap']:.3f}"
    return f"screened check: answer-loss AUC gap {record['stop_gap_loss_auc']:.3f}"


def _fmt(gap: float | None) -> str:
    return "not scored (screened)" if gap is None else f"{gap:.3f}"
