"""Pieces shared by methods: the `Term` a method returns and small pure loss functions.

Terms are returned *unnormalized* (a sum over answer tokens or over sequences of one micro-batch)
with the reduction they need; the trainer divides by the count of the whole accumulation window
summed over ranks, so a loss never depends on how a batch was split into micro-batches or ranks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.qa import IGNORE_INDEX


@dataclass
class Term:
    """One loss term to minimize.

    total: sum of the per-token (reduction "token") or per-sequence ("sequence") values of one
        micro-batch; stream: whose counts normalize it ("forget" or "retain"); weight: its weight
        in the combination.
    """

    total: torch.Tensor
    stream: str
    reduction: str = "token"
    weight: float = 1.0


@dataclass
class MethodContext:
    """What a method may read besides the batches: the config and the frozen reference model."""

    config: object
    reference_model: torch.nn.Module | None = None


def token_logprobs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(y_t | y_<t) of the labels (shifted by one) and the mask of scored tokens.

    Returns (logprobs [B, T-1], mask [B, T-1]); positions with label -100 are masked out.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    logprobs = -F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)),
        labels.clamp_min(0).reshape(-1),
        reduction="none",
    ).view_as(labels)
    return logprobs * mask, mask


def nll_sum(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over the batch's answer tokens (end token included) of -log p(y_t | y_<t)."""
    logprobs, _ = token_logprobs(model, batch)
    return -logprobs.sum()


def capped_nll_sum(model, batch: dict[str, torch.Tensor], cap: float) -> torch.Tensor:
    """Sum over the batch's answer tokens of min(-log p(y_t | y_<t), cap) (`--forget_token_nll_cap`).

    Ascending this bounded NLL pushes a token down only until it is `cap` nats unlikely: past the cap a
    token has no gradient, and once every token of a batch is past it the forget term has none, so
    NGDiff's normalized step drops it and descends on the retain term alone (core/optim.py). Unbounded
    ascent instead drives a few tokens to log-probabilities of -50 and below, which a pretrained model
    pays for in answers the retain set never asks about (docs/auto.md).
    """
    logprobs, mask = token_logprobs(model, batch)
    return ((-logprobs).clamp(max=cap) * mask).sum()


def sequence_logprobs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(y | x) of each sequence's answer (end token included) and its length |y| in tokens: ([B], [B])."""
    logprobs, mask = token_logprobs(model, batch)
    return logprobs.sum(-1), mask.sum(-1)


def reference_sequence_logprobs(reference_model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log p_ref(y | x) of each sequence under the frozen reference model, without gradient: [B]."""
    with torch.no_grad():
        return sequence_logprobs(reference_model, batch)[0]


def alternative(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The forget batch's alternative answers (`alt_*`, see `Method.forget_alternatives`) as a batch."""
    return {key: batch[f"alt_{key}"] for key in ("input_ids", "attention_mask", "labels")}


def token_kl_to_reference(model, reference_model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """KL(p_ref(.|x_<=t) || p_model(.|x_<=t)) on the full vocabulary at every position: [B, T].

    The reference is the frozen model from before unlearning; position t is the distribution of the
    token after x_t (the last position's, after the sequence, included).
    """
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    with torch.no_grad():
        ref_logp = F.log_softmax(reference_model(**inputs).logits.float(), dim=-1)
    logp = F.log_softmax(model(**inputs).logits.float(), dim=-1)
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1)


def kl_to_reference_sum(model, reference_model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over answer tokens of KL(p_ref(.|y_<t) || p_model(.|y_<t)) on the full vocabulary.

    Only positions whose label is scored (answer tokens and the end token) count, as for the NLL.
    """
    kl = token_kl_to_reference(model, reference_model, batch)[:, :-1]
    return (kl * (batch["labels"][:, 1:] != IGNORE_INDEX)).sum()


def kl_to_reference_sequence_means(model, reference_model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over sequences of each one's mean KL(p_ref || p_model) over all its positions (padding excluded).

    Every non-padding position counts, question and template tokens and the one after the end token
    included, as TOFU's KL retain term; averaged per sequence so that padding never counts.
    """
    kl = token_kl_to_reference(model, reference_model, batch)
    mask = batch["attention_mask"].to(kl.dtype)
    return ((kl * mask).sum(-1) / mask.sum(-1).clamp_min(1)).sum()


def retain_needs_reference(config) -> bool:
    """Whether the retain term chosen by `retain_loss` needs the frozen original model (the KL does)."""
    return config.retain_loss == "kl"


def retain_term(model, retain: dict[str, torch.Tensor], ctx: MethodContext) -> Term:
    """The retain term shared by most methods, chosen by `retain_loss`, weighted by `retain_weight`.

    nll: sum over retain answer tokens of -log p(y_t | y_<t) (a token reduction). kl, with
    `retain_kl_positions` answer (default): sum over the same tokens of KL(p_ref(.|y_<t) ||
    p_theta(.|y_<t)) to the frozen original model (a token reduction); with `retain_kl_positions`
    all: the KL averaged over every non-padding position of each sequence, then summed over
    sequences (a sequence reduction).

    TOFU's KL baseline (arXiv 2401.06121), NPO's NPO+KL (arXiv 2404.05868) and open-unlearning
    average the KL over every position of the padded batch (`kl_div(..., reduction="batchmean")` on
    the flattened [B*T, V] log-probabilities). Our default scores the answer positions only, so
    that the KL constrains exactly what the NLL it replaces scores, is normalized by the same answer
    token counts (one `retain_weight` means the same for both), and does not depend on how a batch
    was padded. `retain_kl_positions: all` gives their value on any batch without padding; padding
    positions never count here (in their code they do, so their value moves with the padding).
    """
    cfg = ctx.config
    if cfg.retain_loss == "nll":
        return Term(nll_sum(model, retain), stream="retain", weight=cfg.retain_weight)
    if cfg.retain_kl_positions == "all":
        total = kl_to_reference_sequence_means(model, ctx.reference_model, retain)
        return Term(total, stream="retain", reduction="sequence", weight=cfg.retain_weight)
    total = kl_to_reference_sum(model, ctx.reference_model, retain)
    return Term(total, stream="retain", weight=cfg.retain_weight)


def refusal_answers(config) -> list[str]:
    """The refusal answers of `--refusals_file` (one per line, blank lines skipped), or the packaged list.

    The packaged list (`methods/refusals.txt`) is our own wording of "I don't know"-style answers.
    """
    if config.refusals_file:
        text = Path(config.refusals_file).read_text(encoding="utf-8")
    else:
        text = resources.files(__package__).joinpath("refusals.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module):
    """Every submodule in eval mode (dropout off) for the block, then each one's own mode restored.

    `module.eval()` alone is not enough where a wrapper's mode does not reach what it wraps, and a
    plain `.train()` afterwards would switch on modules that were meant to stay in eval mode.
    """
    modes = [(m, m.training) for m in module.modules()]
    for m, _ in modes:
        m.training = False
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training
