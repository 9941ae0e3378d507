"""Which forget answer tokens the forget term trains on, and how far it pushes them.

Three options, each checked before any output and logged with what it chose:
- `--forget_token_max_df` (+ `--forget_token_df_split`): the tokens rare in the retain answers
  (data/rare_tokens.py, `keep_rare_labels`);
- `--forget_token_siblings K`: the tokens none of K sibling answers has (other entities' answers to the
  most similar retain questions, data/constructed.py; data/rare_tokens.py, `keep_contrast_labels`);
- `--forget_token_nll_cap`: graddiff's and ngdiff's ascent bounded per token (methods/common.py,
  `capped_nll_sum`); `holdout` is resolved here into nats (core/nll_cap.py).
"""

from __future__ import annotations

import logging

from ..core.config import UnlearnConfig
from ..data.qa import DataError, QACollator, QADataset, pad_id, shared_questions
from ..data.rare_tokens import document_frequency, keep_contrast_labels, keep_rare_labels
from ..methods import METHODS
from ..runs.folder import RunError

logger = logging.getLogger("llm_unlearn")


# Below this many answers, "in no retain answer" marks common words as rare: against the 60 retain answers
# of benchmarks/smollm2_tofu.py's CPU slice, 286 distinct forget01 answer tokens ("In", "His", " France",
# " J", ...), found in 17 of TOFU's 100 real-author and 13 of its 117 world-fact answers; against TOFU's
# 3,960 retain99 answers, 33, found in 1 and 0.
FEW_DF_ANSWERS = 500


def check_df_rows(forget_rows: list[dict], df_rows: list[dict], forget_split: str, df_split: str) -> None:
    """The split token frequency is counted on must have answers, and none of the forget set's: a forget
    answer counted there would make its own tokens common, and ascent would skip them."""
    if not df_rows:
        raise DataError(
            f"--forget_token_df_split {df_split} is empty; name a split with answers the model should keep"
        )
    shared = shared_questions(forget_rows, df_rows)
    if shared:
        raise DataError(
            f"--forget_token_df_split {df_split} shares {len(shared)} question(s) with forget split {forget_split} "
            f"(e.g. {shared[0]!r}); name a split without the forget set, e.g. its retain split"
        )


def keep_rare_forget_tokens(forget_ds, retain_ds, df_rows, config, tokenizer, encode) -> dict[int, float]:
    """`--forget_token_max_df`: the forget term keeps the answer tokens rare in the retain answers (or in
    `--forget_token_df_split`'s), tokenized as the retain loss trains on them (data/rare_tokens.py).
    Returns the document frequencies it used."""
    name = config.forget_token_df_split or "the retain split"
    features = retain_ds.features if df_rows is None else QADataset(df_rows, tokenizer, **encode).features
    if len(features) < FEW_DF_ANSWERS:
        logger.warning(
            "--forget_token_max_df counts token frequency on only %d answers (%s): common words may count as "
            "rare and be unlearned everywhere; pass --forget_token_df_split with a larger split of text the "
            "model should keep",
            len(features), name,
        )  # fmt: skip
    frequency = document_frequency(features)
    kept, total = keep_rare_labels(forget_ds.features, frequency, config.forget_token_max_df)
    logger.info(
        "forget term on %d of %d forget answer tokens (in at most %g of the answers of %s)",
        kept, total, config.forget_token_max_df, name,
    )  # fmt: skip
    return frequency


def _keep_contrast(features, rows, retain_rows, config, tokenizer, encode) -> tuple[int, int]:
    """keep_contrast_labels on `features` (the encoded `rows`) against K siblings from `retain_rows`."""
    from ..data.constructed import construct_perturbed

    try:
        siblings = construct_perturbed(rows, retain_rows, k=config.forget_token_siblings, seed=config.seed)
    except DataError as e:
        raise DataError(
            f"--forget_token_siblings {config.forget_token_siblings}: {str(e).split(';')[0]}; pass a smaller number, "
            "or choose the forget tokens with --forget_token_max_df instead"
        ) from None
    encoded = [
        QADataset([dict(question=r["question"], answer=a) for a in sibs], tokenizer, **encode).features
        for r, sibs in zip(rows, siblings)
    ]
    return keep_contrast_labels(features, encoded)


def keep_contrast_forget_tokens(forget_ds, rows, retain_rows, config, tokenizer, encode) -> None:
    """`--forget_token_siblings K`: the forget term keeps the answer tokens that none of K sibling answers
    has (other entities' answers to the most similar retain questions, data/constructed.py), each sibling
    tokenized as an answer to the forget question, as the forget answer is (data/rare_tokens.py)."""
    kept, total = _keep_contrast(forget_ds.features, rows, retain_rows, config, tokenizer, encode)
    logger.info(
        "forget term on %d of %d forget answer tokens (those none of %d sibling answers has)",
        kept, total, config.forget_token_siblings,
    )  # fmt: skip


def check_nll_cap(config: UnlearnConfig, method, stop_data) -> None:
    """`--forget_token_nll_cap` bounds graddiff's and ngdiff's forget NLL; `holdout` reads the stop rule's holdout."""
    if config.forget_token_nll_cap is None:
        return
    if "forget_token_nll_cap" not in method.knobs:
        readers = ", ".join(m.name for m in METHODS.values() if "forget_token_nll_cap" in m.knobs)
        raise RunError(
            f"--forget_token_nll_cap bounds a forget NLL that {method.name} does not ascend; use it with "
            f"--method {readers}, or drop it"
        )
    if config.forget_token_nll_cap == "holdout" and stop_data is None:
        raise RunError(
            "--forget_token_nll_cap holdout reads the stop rule's holdout split: add --auto (or --stop_rule "
            "indistinguishable), or pass the cap in nats (e.g. --forget_token_nll_cap 5)"
        )


def resolve_nll_cap(model, config, holdout_rows, retain_rows, frequency, tokenizer, encode) -> None:
    """`--forget_token_nll_cap holdout` -> nats: the holdout answers' mean token NLL under the model as
    loaded (core/nll_cap.py), over the tokens the forget term would keep; written back into the config,
    so unlearn_config.yaml records the number trained with."""
    from ..core.nll_cap import mean_token_nll

    holdout = QADataset(holdout_rows, tokenizer, **encode)
    if frequency is not None:
        keep_rare_labels(holdout.features, frequency, config.forget_token_max_df)
    if config.forget_token_siblings:
        _keep_contrast(holdout.features, holdout_rows, retain_rows, config, tokenizer, encode)
    cap = mean_token_nll(model, holdout.features, QACollator(pad_id(tokenizer)))
    config.forget_token_nll_cap = f"{cap:.6g}"
    logger.info(
        "forget term bounded at %s nats per token: the holdout answers' mean token NLL",
        config.forget_token_nll_cap,
    )
