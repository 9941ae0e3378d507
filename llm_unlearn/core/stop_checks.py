"""What each check of the stop rule measures; `stop.py` decides from it (its module docstring has the rule).

A check scores, on the model as it is at that step:
- the forget and holdout questions: mean answer NLL l(a|q) per question and the value the statistic
  compares (the loss itself for `auc`/`ks`; log truth ratio log R = l(a~|q) - mean_k l(a_k^-|q) over
  the paraphrase a~ and the perturbed answers a_k^- for the truth-ratio statistics, as TOFU defines
  R, arXiv 2401.06121), and their signed gap (`signed_gap`);
- screened (answers only, no truth ratios) while the answer-loss AUC gap is still > 0;
- the retain sample's mean answer NLL (the retain-loss guard);
- optionally the retain-recall guard's greedy answers (fact recall, or ROUGE-L recall) and the
  utility guard's estimate of model utility, both on seeded samples.
Scoring runs through `eval/scoring.py` (packed where the model allows it) and is sharded over ranks
like any evaluation, so every rank computes the same numbers.
"""

from __future__ import annotations

import numpy as np
import torch

from ..eval.metrics import log_truth_ratio
from ..eval.mia import auc
from ..eval.scoring import answer_losses, candidate_pairs, split_candidates
from ..eval.shard import process_shard
from ..methods.common import eval_mode
from .config import STOP_STATISTICS, TRUTH_RATIO_STATISTICS


def signed_gap(forget_losses, holdout_losses, statistic: str = "auc") -> float:
    """+ while the forget set is more familiar (lower loss) than the holdout, 0 when indistinguishable."""
    forget = np.asarray(forget_losses, dtype=np.float64)
    holdout = np.asarray(holdout_losses, dtype=np.float64)
    if statistic == "auc":
        return auc(forget, holdout) - 0.5
    if statistic in ("ks", *TRUTH_RATIO_STATISTICS):
        from scipy.stats import ks_2samp

        distance = float(ks_2samp(forget, holdout).statistic)
        return distance if np.median(forget) < np.median(holdout) else -distance
    raise ValueError(f"unknown stop statistic {statistic!r}; choose {', '.join(STOP_STATISTICS[1:])}")


class CheckScorer:
    """The measurements of one run's checks (module docstring); holds the rows and their encodings."""

    def __init__(self, tokenizer, forget_rows: list[dict], stop_data: dict, score_settings: dict):
        self.tokenizer = tokenizer
        self.forget_rows = stop_data.get("forget_scored", forget_rows)
        self.holdout = stop_data["holdout"]
        self.heldout = set(stop_data["heldout"])
        self.retain_sample = stop_data["retain_sample"]
        self.statistic = stop_data["statistic"]
        self.utility_rows = stop_data.get("utility_rows")
        self.recall_rows = stop_data.get("recall_rows")
        self.settings = {k: v for k, v in score_settings.items() if k != "max_new_tokens"}
        self.max_new_tokens = score_settings.get("max_new_tokens", 64)
        # What greedy generation takes of the scoring settings (the utility and recall guards).
        self.gen = {
            k: self.settings[k]
            for k in ("prompt_format", "system_prompt", "batch_size")
            if k in self.settings
        }
        self._encoded: dict = {}  # every check scores the same pairs: tokenized once (answer_losses)

    def losses(self, model, rows: list[dict], desc: str) -> np.ndarray:
        return answer_losses(
            model, self.tokenizer, [r["question"] for r in rows], [r["answer"] for r in rows],
            desc=desc, shard=process_shard(), encoded=self._encoded, **self.settings,
        )  # fmt: skip

    def values(self, model, rows: list[dict], desc: str) -> tuple[np.ndarray, np.ndarray]:
        """(mean answer NLL, the value the statistic compares) per row: the loss itself, or the truth ratio."""
        if self.statistic not in TRUTH_RATIO_STATISTICS:
            losses = self.losses(model, rows, desc)
            return losses, losses
        # One pass over answer, paraphrase and perturbed answers (the row's own question for each);
        # log R keeps the values finite once a paraphrase is far less likely than its perturbations,
        # and KS and AUC are unchanged by the log.
        # Constructed rows without a paraphrase carry the answer as one: it is scored once, not twice.
        paraphrase = any(r["paraphrased_answer"] != r["answer"] for r in rows)
        questions, texts = candidate_pairs(rows, paraphrase)
        flat = self.losses(model, [dict(question=q, answer=a) for q, a in zip(questions, texts)], desc)
        answer, para, perturbed = split_candidates(flat, rows, paraphrase)
        return answer, log_truth_ratio(answer if para is None else para, perturbed)

    def full(self, model, step: int) -> dict:
        """A full check's record: the statistic on forget vs holdout, losses, the retain loss."""
        with eval_mode(model), torch.no_grad():
            forget_loss, forget = self.values(model, self.forget_rows, "stop rule: forget")
            holdout_loss, holdout = self.values(model, self.holdout, "stop rule: holdout")
            record = self.common(model, step, forget_loss, holdout_loss)
        trained = [i for i in range(len(forget)) if i not in self.heldout]
        record |= {
            "stop_gap": signed_gap(forget, holdout, self.statistic),
            "stop_gap_trained": signed_gap(forget[trained], holdout, self.statistic),
            "stop_gap_heldout": signed_gap(forget[sorted(self.heldout)], holdout, self.statistic) if self.heldout else None,
        }  # fmt: skip
        if self.statistic in TRUTH_RATIO_STATISTICS:
            record["stop_gap_loss_auc"] = signed_gap(forget_loss, holdout_loss, "auc")
            record["stop_forget_truth_ratio"] = float(np.exp(np.median(forget)))  # median R
            record["stop_holdout_truth_ratio"] = float(np.exp(np.median(holdout)))
            record["stop_screened"] = False
        return record

    def utility(self, model) -> float:
        """Model utility (the evaluation's nine numbers and their harmonic mean) on the sampled questions."""
        from ..eval.metrics import tofu_metrics
        from ..eval.tofu import score_split

        settings = {"loss": self.settings, "gen": dict(self.gen, max_new_tokens=self.max_new_tokens)}
        with eval_mode(model), torch.no_grad():
            scores = {
                role: score_split(model, self.tokenizer, rows, role, settings, False, process_shard())[0]
                for role, rows in self.utility_rows.items()
            }
        return float(tofu_metrics(scores)["model_utility"]["value"])

    def recall_name(self) -> str:
        return "fact recall" if all("fact" in r for r in self.recall_rows) else "ROUGE-L recall"

    def recall(self, model) -> float:
        """What the report's collateral-damage line scores, on the sampled retain questions' greedy answers:
        fact recall where every row carries a `fact` (the built-in world), else ROUGE-L recall (TOFU)."""
        from ..eval.metrics import fact_recall, rouge_l_recall
        from ..eval.scoring import generate_answers

        rows = self.recall_rows
        with eval_mode(model), torch.no_grad():
            answers = generate_answers(
                model, self.tokenizer, [r["question"] for r in rows], max_new_tokens=self.max_new_tokens,
                desc="stop rule: retain answers", shard=process_shard(), **self.gen,
            )  # fmt: skip
        if all("fact" in r for r in rows):
            return float(fact_recall([r["fact"] for r in rows], answers).mean())
        return float(rouge_l_recall([r["answer"] for r in rows], answers).mean())

    def screened(self, model, step: int) -> dict | None:
        """A screened check's record (answers only), or None once the answer-loss gap has reached 0
        (the rule then scores every check in full: stop.py's module doc, screening)."""
        with eval_mode(model), torch.no_grad():
            forget_loss = self.losses(model, self.forget_rows, "stop rule: forget answers")
            holdout_loss = self.losses(model, self.holdout, "stop rule: holdout answers")
            loss_gap = signed_gap(forget_loss, holdout_loss, "auc")
            if loss_gap <= 0:
                return None
            record = self.common(model, step, forget_loss, holdout_loss)
        return record | {
            "stop_gap": None, "stop_gap_trained": None, "stop_gap_heldout": None,
            "stop_gap_loss_auc": loss_gap, "stop_screened": True,
        }  # fmt: skip

    def common(self, model, step: int, forget_loss: np.ndarray, holdout_loss: np.ndarray) -> dict:
        """What every check records, full or screened: the mean answer losses and the retain sample's."""
        retain = float(self.losses(model, self.retain_sample, "stop rule: retain").mean())
        return {
            "step": step, "stop_statistic": self.statistic, "stop_forget_loss": float(forget_loss.mean()),
            "stop_holdout_loss": float(holdout_loss.mean()), "stop_retain_loss": retain,
        }  # fmt: skip
