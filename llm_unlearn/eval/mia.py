"""Membership inference: can the forget set still be told apart from data the model never saw?

Members are the forget set, non-members the `holdoutNN` split of the same size (fictitious authors
never trained on, in TOFU and in the built-in world). Each attack gives every sample a score signed so
that higher means "looks like a non-member"; the AUC of telling holdout (label 1) from forget
(label 0) by that score is 1 when the forget set is plainly memorized, 0.5 when the two are
indistinguishable, and below 0.5 when the forget set now looks *less* familiar than unseen data
(over-unlearning, itself a tell). With l(a|q) the mean answer NLL (end token included), and
log p_t the answer-token log-probs (end token excluded):

    loss          l(a|q)                                                 (Yeom et al., arXiv 1709.01604)
    zlib          l(a|q) / len(zlib.compress(answer text, utf-8))        (Carlini et al., arXiv 2012.07805)
    min_k         -mean of the lowest ceil-free k-fraction of log p_t,   (Shi et al., arXiv 2310.16789)
                  count max(1, floor(k n)), k = 0.4
    min_k_pp      the same on z_t = (log p_t - mu_t) / sigma_t, with mu_t, sigma_t^2 the mean and variance
                  of log p(v) under p(.|prefix), sigma^2 clamped >= 1e-6 (Zhang et al., arXiv 2404.02936)
    reference     l_model(a|q) - l_reference(a|q), with the retain-only model as the reference

privleak (MUSE, arXiv 2407.06460) compares the model's Min-K% AUC with the retain-only reference's:
with u = 1 - AUC_model and r = 1 - AUC_reference, privleak = (u - r) / (r + 1e-10) * 100; 0 is ideal,
-100 a model that still holds the forget set, positive values over-unlearning.

The AUC is the Mann-Whitney statistic (ties count one half), exact and free of sklearn.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.qa import IGNORE_INDEX, QACollator, encode_qa_pairs, pad_id
from .packed import packed_answer_logits, packed_batches, packed_supported
from .scoring import _batches
from .shard import Shard

ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")
MIN_K = 0.4


def auc(scores_members: Sequence[float], scores_nonmembers: Sequence[float]) -> float:
    """P(score of a random non-member > score of a random member) + 0.5 P(tie): ROC AUC with non-members as 1."""
    members = np.asarray(scores_members, dtype=np.float64)
    nonmembers = np.asarray(scores_nonmembers, dtype=np.float64)
    if members.size == 0 or nonmembers.size == 0:
        raise ValueError("membership AUC needs at least one member and one non-member score")
    if not (np.isfinite(members).all() and np.isfinite(nonmembers).all()):
        raise ValueError("membership scores must be finite")
    both = np.concatenate([members, nonmembers])
    ranks = _average_ranks(both)
    rank_sum = ranks[members.size :].sum()
    n1 = nonmembers.size
    return float((rank_sum - n1 * (n1 + 1) / 2) / (n1 * members.size))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size, dtype=np.float64)
    sorted_values = values[order]
    i = 0
    while i < values.size:
        j = i
        while j + 1 < values.size and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def privleak(auc_model: float, auc_reference: float) -> float:
    """MUSE's privleak from two Min-K% AUCs (module docstring); 0 is ideal."""
    u, r = 1.0 - auc_model, 1.0 - auc_reference
    return (u - r) / (r + 1e-10) * 100.0


def min_k_score(values: Sequence[float], k: float = MIN_K) -> float:
    """-mean of the lowest max(1, floor(k n)) values (n = len(values) > 0)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    if v.size == 0:
        raise ValueError("Min-K% needs at least one answer token")
    return float(-v[: max(1, math.floor(v.size * k))].mean())


def zlib_length(text: str) -> int:
    return len(zlib.compress(text.encode("utf-8")))


def _token_stats(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p_t of `target` [n] under `logits` [n, V], and Min-K%++'s z_t = (log p_t - mu_t) / sigma_t."""
    # float64 over the vocabulary: the variance below is a small difference of large sums,
    # and float32 made it depend on the batch's padding (3e-5 between batch sizes).
    logp = F.log_softmax(logits.double(), dim=-1)
    token_logp = logp.gather(1, target.unsqueeze(1)).squeeze(1)
    probs = logp.exp()
    mu = (probs * logp).sum(-1)
    var = (probs * (logp - mu.unsqueeze(1)).square()).sum(-1)
    return token_logp, (token_logp - mu) / var.clamp_min(1e-6).sqrt()


@torch.inference_mode()
def sample_scores(
    model,
    tokenizer,
    questions: Sequence[str],
    answers: Sequence[str],
    *,
    prompt_format: str,
    system_prompt: str | None = None,
    max_length: int = 1024,
    batch_size: int = 32,
    k: float = MIN_K,
    progress: bool = False,
    desc: str = "mia",
    shard: Shard | None = None,
) -> dict[str, np.ndarray]:
    """Per-sample attack scores (`ATTACKS`, higher = looks like a non-member), each shape [n].

    One forward per batch gives all four: the answer tokens' log-probs, and for Min-K%++ the mean
    and variance of log p(v) over the vocabulary at the same positions. Batches are length-sorted
    and sharded like the other scores (`scoring.py`), so results do not depend on the process count.
    """
    features = encode_qa_pairs(tokenizer, questions, answers, prompt_format, max_length, system_prompt)
    collate = QACollator(pad_token_id=pad_id(tokenizer), padding_side="right")
    n_prompt = [f["labels"].count(IGNORE_INDEX) for f in features]
    model.eval()
    packed = batch_size > 1 and packed_supported(model)
    if packed:  # one row per pair, the output layer only at the answer labels (packed.py)
        prompt_ids = [f["input_ids"][:n] for f, n in zip(features, n_prompt)]
        answer_ids = [f["input_ids"][n:] for f, n in zip(features, n_prompt)]
        batches = packed_batches(prompt_ids, answer_ids, batch_size)
    else:
        order = sorted(range(len(features)), key=lambda i: -len(features[i]["input_ids"]))
        batches = _batches(order, batch_size)

    def answer_logits(idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """(logits [N, V], labels [N]) at the pairs' answer labels in pair order, each pair's end
        token last, and the number of labels of each pair."""
        if packed:
            logits, at, labels, _ = packed_answer_logits(
                model, [prompt_ids[i] for i in idx], [answer_ids[i] for i in idx], pad_id(tokenizer)
            )
            return logits[at], labels, [len(answer_ids[i]) for i in idx]
        batch = {key: v.to(model.device) for key, v in collate([features[i] for i in idx]).items()}
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        keep = labels != IGNORE_INDEX  # row-major: pair by pair, in order
        return logits[keep], labels[keep], keep.sum(1).tolist()

    def score(idx: list[int]) -> list[tuple[float, float, float, str]]:
        logits, target, counts = answer_logits(idx)
        # In blocks of 32 positions: the float64 [32, V] temporaries stay in the CPU cache.
        token_logp, z = map(
            torch.cat, zip(*map(_token_stats, logits.split(32), target.split(32)), strict=True)
        )
        out = []
        bounds = np.cumsum(counts)[:-1]
        texts = tokenizer.batch_decode(
            [t[:-1].tolist() for t in target.split(counts)], skip_special_tokens=True
        )
        pieces = zip(np.split(token_logp.cpu().numpy(), bounds), np.split(z.cpu().numpy(), bounds), texts,
                     strict=True)  # fmt: skip
        for pair_logp, pair_z, text in pieces:
            loss = float(-pair_logp.mean())  # end token included, as l(a|q) everywhere else
            # the end token excluded (unless it is the only label)
            answer, pair_z = (pair_logp[:-1], pair_z[:-1]) if len(pair_logp) > 1 else (pair_logp, pair_z)
            out.append((loss, min_k_score(answer, k), min_k_score(pair_z, k), text))
        return out

    loss = np.empty(len(features))
    min_k = np.empty(len(features))
    min_k_pp = np.empty(len(features))
    texts = [""] * len(features)
    for idx, rows in (shard or Shard()).map_batches(batches, score, progress, desc):
        for i, (l_, mk, mkpp, text) in zip(idx, rows, strict=True):
            loss[i], min_k[i], min_k_pp[i], texts[i] = l_, mk, mkpp, text
    zlib_len = np.array([max(zlib_length(t), 1) for t in texts], dtype=np.float64)
    return {"loss": loss, "zlib": loss / zlib_len, "min_k": min_k, "min_k_plus_plus": min_k_pp}


def mia_metrics(
    forget: dict[str, np.ndarray],
    holdout: dict[str, np.ndarray],
    reference: dict[str, dict[str, np.ndarray]] | None = None,
) -> dict[str, dict]:
    """`mia_auc_<attack>` entries (value, direction, per-sample scores) and, with the reference's
    scores (`{"forget": ..., "holdout": ...}` from the retain-only model), `mia_auc_reference` and
    `privleak`. Directions: an AUC should come close to 0.5, privleak close to 0.
    """
    metrics: dict[str, dict] = {}
    for attack in ATTACKS:
        metrics[f"mia_auc_{attack}"] = {
            "value": auc(forget[attack], holdout[attack]),
            "direction": "closer_to_0.5",
            "per_sample_forget": [float(x) for x in forget[attack]],
            "per_sample_holdout": [float(x) for x in holdout[attack]],
        }
    if reference is not None:
        metrics |= reference_metrics(forget, holdout, reference["forget"], reference["holdout"])
    return metrics


def reference_metrics(
    forget: dict[str, Sequence[float]],
    holdout: dict[str, Sequence[float]],
    ref_forget: dict[str, Sequence[float]],
    ref_holdout: dict[str, Sequence[float]],
) -> dict[str, dict]:
    """`mia_auc_reference` (loss minus the reference's loss, per sample) and `privleak` (Min-K% AUCs),
    from the model's and the retain-only reference's per-sample `loss` and `min_k` scores."""
    diff_forget = np.asarray(forget["loss"], dtype=np.float64) - np.asarray(
        ref_forget["loss"], dtype=np.float64
    )
    diff_holdout = np.asarray(holdout["loss"], dtype=np.float64) - np.asarray(
        ref_holdout["loss"], dtype=np.float64
    )
    auc_model, auc_ref = (
        auc(forget["min_k"], holdout["min_k"]),
        auc(ref_forget["min_k"], ref_holdout["min_k"]),
    )
    return {
        "mia_auc_reference": {
            "value": auc(diff_forget, diff_holdout),
            "direction": "closer_to_0.5",
            "per_sample_forget": diff_forget.tolist(),
            "per_sample_holdout": diff_holdout.tolist(),
        },
        "privleak": {
            "value": privleak(auc_model, auc_ref),
            "direction": "closer_to_0",
            "reference_auc_min_k": auc_ref,
        },
    }


def scores_from_metrics(metrics: dict) -> tuple[dict[str, list], dict[str, list]] | None:
    """(forget, holdout) per-sample scores by attack, read back from an eval.json's metrics; None if absent."""
    if not all(f"mia_auc_{attack}" in metrics for attack in ("loss", "min_k")):
        return None
    forget = {a: metrics[f"mia_auc_{a}"]["per_sample_forget"] for a in ATTACKS if f"mia_auc_{a}" in metrics}
    holdout = {a: metrics[f"mia_auc_{a}"]["per_sample_holdout"] for a in ATTACKS if f"mia_auc_{a}" in metrics}
    return forget, holdout
