"""What the stop rule (`stop.py`) scores, loaded and checked before training starts.

The holdout split (unseen questions of the same kind and number as the forget set), for the
truth-ratio statistic the paraphrased and perturbed answers of the forget and holdout questions (written,
or constructed from the retain split where the holdout has none: `data/constructed.py`), the
forget questions kept out of training (`--stop_heldout_fraction`), a fixed retain sample for the
retain-loss alarm, and the samples of the optional guards (`--stop_retain_recall_tolerance`,
`--stop_utility_tolerance`). Every problem is one `DataError` line naming the fix, raised before any
training.
"""

from __future__ import annotations

import logging
import random

from ..data.qa import (
    DataError,
    check_companion,
    check_unique_questions,
    load_split,
    paired_split,
    shared_questions,
    split_path,
)
from .inputs import SplitSource

RETAIN_SAMPLE = 200  # retain examples scored per check: enough for a stable mean loss, cheap
MIN_CONSTRUCTED = 3  # fewest constructed wrong answers per question a truth ratio is built on
logger = logging.getLogger("llm_unlearn")
TR_FIELDS = ("question", "answer", "paraphrased_answer", "perturbed_answer")


def load_stop_data(data, forget_rows: list[dict], retain_rows: list[dict], config) -> dict:
    """Validate and return what the rule scores: holdout rows, the held-out forget indices, a retain sample.

    Raises DataError (one line) for a missing holdout split, one of another size than the forget set,
    or one that shares questions with the forget or retain set.
    """
    from ..data.heldout import attack_heldout_split

    needs = (
        f"the stop rule (--auto, --stop_rule) needs a holdout split: {len(forget_rows)} questions of the same kind "
        f"as {data.forget_split}'s about entities the model never saw"
    )
    how = (
        "build one (docs/auto.md#a-holdout-for-your-own-data) and pass --stop_holdout_split NAME, or run "
        "without --auto/--stop_rule"
    )
    name = config.stop_holdout_split
    if name is None:
        try:
            name = paired_split(data.forget_split, "holdout")
        except DataError:
            raise DataError(
                f"{needs}; none pairs with {data.forget_split!r} (forgetNN pairs with holdoutNN): {how}"
            ) from None
    try:
        holdout = load_split(name, data_dir=data.data_dir, dataset_name=data.dataset_name)
    except DataError as err:
        raise DataError(f"{needs} ({err}); {how}") from None
    check_unique_questions(
        holdout, SplitSource(data.data_dir, data.dataset_name).where(name)
    )  # the statistic pairs each holdout question with its scores
    if len(holdout) != len(forget_rows):
        raise DataError(
            f"holdout split {name} has {len(holdout)} examples but forget split {data.forget_split} has "
            f"{len(forget_rows)}; the stop rule compares equal-sized sets: pass a holdout of the same size "
            "(--stop_holdout_split; docs/auto.md#a-holdout-for-your-own-data)"
        )
    for other, rows in ((data.forget_split, forget_rows), ("the retain split", retain_rows)):
        shared = shared_questions(holdout, rows)
        if shared:
            raise DataError(
                f"holdout split {name} shares {len(shared)} question(s) with {other} (e.g. {shared[0]!r}); "
                "the holdout must be data the model never saw: pass another --stop_holdout_split"
            )
    statistic, forget_pert, holdout_pert = _truth_ratio_rows(
        data, name, forget_rows, holdout, config.stop_statistic
    )
    if statistic == "truth_ratio_constructed":
        fallback = config.stop_statistic == "auto"
        forget_pert, holdout_pert = _constructed_rows(forget_rows, holdout, retain_rows, config, fallback)
        if forget_pert is None:
            statistic = "auc"
    heldout: list[int] = []
    if config.stop_heldout_fraction > 0:
        _, heldout = attack_heldout_split(
            forget_rows, seed=config.seed, heldout_fraction=config.stop_heldout_fraction
        )
    rng = random.Random(config.seed)
    sample = sorted(rng.sample(range(len(retain_rows)), min(RETAIN_SAMPLE, len(retain_rows))))
    utility = _utility_rows(data, config) if getattr(config, "stop_utility_tolerance", 0) > 0 else None
    recall = None
    if getattr(config, "stop_retain_recall_tolerance", 0) > 0:
        # Its own seeded sample: the guard must not see only the questions the retain loss is averaged on.
        size = min(config.stop_retain_recall_sample, len(retain_rows))
        recall = [
            retain_rows[i]
            for i in sorted(random.Random(config.seed + 1).sample(range(len(retain_rows)), size))
        ]
    return {
        "recall_rows": recall,
        "utility_rows": utility,
        "holdout_name": name,
        "statistic": statistic,
        "holdout": holdout_pert or holdout,
        "forget_scored": forget_pert or forget_rows,
        "heldout": heldout,
        "retain_sample": [retain_rows[i] for i in sample],
    }


def _truth_ratio_rows(data, holdout_name: str, forget_rows, holdout, statistic: str):
    """(statistic, forget rows, holdout rows) with paraphrased and perturbed answers for `truth_ratio`.

    The forget rows come from `<forget split>_perturbed` in the forget split's order; `auto` becomes
    `truth_ratio` when `<holdout>_perturbed` exists (the built-in world writes one; TOFU has none), else
    `truth_ratio_constructed` (whose rows `_constructed_rows` builds).
    """
    if statistic not in ("auto", "truth_ratio"):
        return statistic, None, None
    source = dict(data_dir=data.data_dir, dataset_name=data.dataset_name)
    names = (f"{data.forget_split}_perturbed", f"{holdout_name}_perturbed")
    rows = None
    if statistic == "auto" and data.data_dir is not None:
        if not all(split_path(data.data_dir, n).is_file() for n in names):
            return "truth_ratio_constructed", None, None
    elif statistic == "auto":
        try:
            rows = [load_split(n, required=TR_FIELDS, **source) for n in names]
        except Exception:  # noqa: BLE001 - a Hub dataset without these configs (TOFU's holdout): build them
            return "truth_ratio_constructed", None, None
    if rows is None:
        try:
            rows = [load_split(n, required=TR_FIELDS, **source) for n in names]
        except DataError as err:
            raise DataError(
                f"the truth_ratio stop statistic needs the paraphrased and perturbed answers of the forget and "
                f"holdout questions: {err}; pass --stop_statistic truth_ratio_constructed (TOFU's holdout has "
                "no perturbed answers)"
            ) from None
    forget_pert, holdout_pert = rows

    # Each companion's rows are scored as its split's: the same questions, answers and order, as the
    # evaluation requires of them (a holdout companion with other answers, or each row twice, was scored).
    where = SplitSource(data.data_dir, data.dataset_name).where
    for base, base_name, companion, name in ((forget_rows, data.forget_split, forget_pert, names[0]),
                                             (holdout, holdout_name, holdout_pert, names[1])):  # fmt: skip
        try:
            check_companion(base, where(base_name), companion, where(name))
        except DataError as err:
            if base is forget_rows:  # the evaluation reads this companion too: regenerating it is the fix
                raise
            raise DataError(f"{err}, or pass --stop_statistic truth_ratio_constructed") from None
    return "truth_ratio", forget_pert, holdout_pert


def _constructed_rows(forget_rows, holdout, retain_rows, config, fallback: bool):
    """(forget rows, holdout rows) with wrong answers built from the retain split (`data/constructed.py`).

    Both sides are built alike: the same pool and rule, and as the correct side the paraphrase only if
    every forget and holdout row has one (TOFU's holdout has none), else the answer itself on both.
    The number of wrong answers per question is TOFU's 5 where the retain split has enough other
    entities, else the most it has down to MIN_CONSTRUCTED, the same number for every row of both sides
    (a retain split of 3 authors, like the CPU slice of TOFU in benchmarks/smollm2_tofu.py, gives 3).
    Under `--stop_statistic auto` a data set where not even that many can be built falls back to `auc`, warned.
    """
    from ..data.constructed import N_CONSTRUCTED, with_constructed

    paraphrase = all(r.get("paraphrased_answer") for r in (*forget_rows, *holdout))
    for k in range(N_CONSTRUCTED, MIN_CONSTRUCTED - 1, -1):
        try:
            built = tuple(
                with_constructed(rows, retain_rows, paraphrase=paraphrase, k=k, seed=config.seed) for rows in (forget_rows, holdout)
            )  # fmt: skip
        except DataError as err:
            error = err
            continue
        if k < N_CONSTRUCTED:
            logger.warning(
                "stop rule: %d wrong answers per question built from the retain split (TOFU uses %d: %s)",
                k, N_CONSTRUCTED, error,
            )  # fmt: skip
        return built
    if not fallback:
        raise error
    logger.warning(
        "stop rule: no truth ratio without perturbed answers (%s); comparing answer losses (auc)", error
    )
    return None, None


def _utility_rows(data, config) -> dict[str, list[dict]]:
    """A seeded sample of `stop_utility_sample` questions per model-utility role (retain, ra, wf)."""
    from ..data.qa import ANALOG_FIELDS, EVAL_FIELDS
    from ..eval.tofu import UTILITY_SPLITS as names  # not the forget split's pairing: any name will do

    out = {}
    for role in ("retain", "ra", "wf"):
        try:
            rows = load_split(
                names[role], data_dir=data.data_dir, dataset_name=data.dataset_name,
                required=EVAL_FIELDS if role == "retain" else ANALOG_FIELDS,
            )  # fmt: skip
        except DataError as err:
            if getattr(config, "auto", False):
                # --auto on data without TOFU's evaluation splits: estimate on what there is (or not at all).
                logger.warning("--auto: the utility guard leaves out the %s questions: %s", role, err)
                continue
            raise DataError(
                f"--stop_utility_tolerance estimates model utility on retain, real-author and world-fact questions: "
                f"{err}; add the split or pass --stop_utility_tolerance 0"
            ) from None
        rng = random.Random(f"{config.seed}-{role}")
        out[role] = [
            rows[i] for i in sorted(rng.sample(range(len(rows)), min(config.stop_utility_sample, len(rows))))
        ]
    if not out:
        logger.warning(
            "--auto: no split to estimate model utility on, so the utility guard is off and --auto keeps its first "
            "regime whatever it costs outside the retain set (docs/auto.md#a-holdout-for-your-own-data)"
        )
    return out or None
