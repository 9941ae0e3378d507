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

from ..data import IGNORE_INDEX


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


def kl_to_reference_sum(model, reference_model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over answer tokens of KL(p_ref(.|y_<t) || p_model(.|y_<t)) on the full vocabulary.

    The reference is the frozen model from before unlearning; only positions whose label is scored
    (answer tokens and the end token) count, as for the NLL.
    """
    with torch.no_grad():
        ref_logits = reference_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = (batch["labels"][:, 1:] != IGNORE_INDEX).float()
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    ref_logp = F.log_softmax(ref_logits[:, :-1].float(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return (kl * mask).sum()


def retain_needs_reference(config) -> bool:
    """Whether the retain term chosen by `retain_loss` needs the frozen original model (the KL does)."""
    return config.retain_loss == "kl"


def retain_term(model, retain: dict[str, torch.Tensor], ctx: MethodContext) -> Term:
    """The retain term shared by most methods, chosen by `retain_loss`, weighted by `retain_weight`.

    nll: sum over retain answer tokens of -log p(y_t | y_<t); kl: sum over the same tokens of
    KL(p_ref(.|y_<t) || p_theta(.|y_<t)) to the frozen original model. Both are token reductions.
    """
    cfg = ctx.config
    if cfg.retain_loss == "kl":
        total = kl_to_reference_sum(model, ctx.reference_model, retain)
    else:
        total = nll_sum(model, retain)
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
