"""Gradient Collision (`gc`): make the forget set's gradients disagree, so that it is hard to relearn.

Disposable Transfer Learning (Koh et al., arXiv 2308.09971) unlearns a task with the Gradient
Collision (GC) loss, which drives the gradients of different mini-batches of that task's data to
point in different directions. Adapted to causal LMs (spec: docs/ngdiff-gen.md section 3): split
each forget micro-batch into K = `gc_chunks` chunks of sequences, let g_i be the gradient of chunk
i's mean answer-token NLL with respect to the parameters P, and u_i = g_i / ||g_i||. Terms
(minimized), weighted by `gc_weight`, `forget_weight` and `retain_weight`:

    collision = 1/(K(K-1)) sum_{i != j} <u_i, u_j>  = (||sum_i u_i||^2 - K) / (K(K-1))         (gc_form: cosine)
             or 1/(K(K-1)) sum_{i != j} <g_i, g_j>  = (||sum_i g_i||^2 - sum_i ||g_i||^2) / (K(K-1))  (inner)
    forget    = NPO's forget term (gc_forget_loss: npo, see npo.py) or gradient ascent's -NLL (ga)
    retain    = graddiff's retain term: mean retain-token NLL, or the KL to the original model

The cosine form is bounded, in [-1/(K-1), 1], and lowest when the chunk gradients cancel out; the
raw inner-product form is unbounded below (it rewards inflating every chunk's gradient) and is
there for comparison with the paper's form. The collision's gradient is second order: the chunk
gradients are taken with `create_graph=True`, so the trainer's ordinary backward differentiates
through them (Hessian-vector products, about K + 1 extra backward passes per micro-batch). The
forget forward runs under PyTorch's math attention kernel, whose backward is itself differentiable
(the fused CPU/flash kernels' is not); models loaded with flash_attention_2 cannot use `gc`.

Decisions where the paper (image classifiers, its own training loop) says nothing for our setting:
- Chunks: K contiguous groups of the micro-batch's sequences (sizes differ by at most one). A
  micro-batch of B < K sequences uses B chunks; one of a single sequence has no pair and adds 0.
  Chunks never span micro-batches or ranks: under DDP each rank collides its own chunks.
- g_i is the gradient of the chunk's mean answer-token NLL (end token included; the sign does not
  matter in pairwise products, and the mean keeps chunk sizes comparable in the inner form).
- P: the trainable parameters (the adapters under LoRA) whose names contain one of `gc_params`
  (comma-separated; empty: all of them). Smaller P is cheaper; the update still moves every
  trainable parameter through the forget and retain terms.
- Scale: the spec's L_GC is the sum over ordered pairs, ||sum_i u_i||^2 - K; we divide it by the
  number of pairs K(K-1), so the default is the spec's value / K(K-1): half of it at the default
  K = 2. Kept so that `gc_weight` means the same for any K and the logged `loss_collision` is the
  mean pairwise cosine, which the spec asks to log; `--gc_weight` K(K-1) (2 at K = 2) is the spec's
  term (tests/test_fidelity.py checks it). Each micro-batch's value counts once per sequence
  (reduction "sequence"), so the window's term is the sequence-weighted mean over its micro-batches.
- A direct forgetting term is added (GC alone lowers no forget answer's likelihood): NPO by default,
  bounded like the cosine form, computed on the same forward pass as the chunk gradients.
- Norms are clamped at 1e-12 before dividing; a chunk with a zero gradient adds nothing.
- Under GeN's probes (no gradient recorded) the chunk gradients are still computed, to score the
  collision, but without the second-order graph.
- FSDP is not supported (autograd cannot take gradients of sharded parameters here).
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .common import MethodContext, Term, reference_sequence_logprobs, retain_term, token_logprobs
from .npo import npo_loss_sum
from .registry import register

EPS = 1e-12


def collision_params(model, config) -> list[torch.nn.Parameter]:
    """The trainable parameters whose names contain one of `gc_params` (all trainable ones if empty)."""
    parts = [p.strip() for p in config.gc_params.split(",") if p.strip()]
    params = [
        p
        for n, p in model.named_parameters()
        if p.requires_grad and (not parts or any(s in n for s in parts))
    ]
    if not params:
        raise ValueError(
            f"--gc_params {config.gc_params!r} selects no trainable parameter; give parts of parameter names"
        )
    return params


def gradient_collision(
    logprobs: torch.Tensor, mask: torch.Tensor, params: list, chunks: int, form: str, create_graph: bool
) -> torch.Tensor:
    """Mean over ordered pairs of chunks of <u_i, u_j> (cosine) or <g_i, g_j> (inner): the collision value.

    logprobs, mask: [B, T-1] answer-token log-probabilities (zero off the answer) and the answer mask.
    """
    groups = torch.arange(logprobs.size(0), device=logprobs.device).tensor_split(
        min(chunks, logprobs.size(0))
    )
    grads = []
    for idx in groups:
        chunk_nll = -logprobs[idx].sum() / mask[idx].sum().clamp_min(1)
        grads.append(
            torch.autograd.grad(
                chunk_nll, params, create_graph=create_graph, retain_graph=True, allow_unused=True
            )
        )
    k = len(grads)
    if k < 2:
        return logprobs.sum() * 0.0  # no pair: zero, still attached to the graph
    gram = torch.stack([torch.stack([_dot(grads[i], grads[j]) for j in range(k)]) for i in range(k)])
    if form == "cosine":
        norms = gram.diagonal().clamp_min(0).sqrt().clamp_min(EPS)
        gram = gram / (norms[:, None] * norms[None, :])
    return (gram.sum() - gram.diagonal().sum()) / (k * (k - 1))


def _dot(a: tuple, b: tuple) -> torch.Tensor:
    """sum over parameters of <a_p, b_p>, in fp32 or wider; a parameter without gradient in either counts as zero."""
    wide = torch.promote_types(a[0].dtype if a[0] is not None else torch.float32, torch.float32)
    terms = [(x.to(wide) * y.to(wide)).sum() for x, y in zip(a, b) if x is not None and y is not None]
    return torch.stack(terms).sum() if terms else torch.zeros(())


@register(
    "gc",
    paper="arXiv:2308.09971",
    summary="Gradient Collision: make forget chunks' gradients disagree, plus NPO (or GA) and a retain term",
    needs_reference=lambda config: config.gc_forget_loss == "npo" or config.retain_loss == "kl",
    knobs=("gc_chunks", "gc_form", "gc_weight", "gc_forget_loss", "gc_params", "npo_beta", "retain_loss",
           "retain_kl_positions", "forget_weight", "retain_weight"),
    deviations="collision averaged over the K(K-1) chunk pairs, the spec's sum / K(K-1) (--gc_weight 2 at K = 2 "
               "for the spec's); the paper's classifiers adapted to LMs (see the module docstring)",
)  # fmt: skip
def gc(model, forget, retain, ctx: MethodContext) -> dict[str, Term]:
    cfg = ctx.config
    params = collision_params(model, cfg)
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        logprobs, mask = token_logprobs(model, forget)
        collision = gradient_collision(logprobs, mask, params, cfg.gc_chunks, cfg.gc_form, create_graph)
    n_sequences = logprobs.size(0)
    if cfg.gc_forget_loss == "npo":
        ref = reference_sequence_logprobs(ctx.reference_model, forget)
        forget_term = Term(
            npo_loss_sum(logprobs.sum(-1), ref, cfg.npo_beta), "forget", "sequence", cfg.forget_weight
        )
    else:
        forget_term = Term(logprobs.sum(), "forget", "token", cfg.forget_weight)
    return {
        "forget": forget_term,
        "collision": Term(collision * n_sequences, "forget", "sequence", cfg.gc_weight),
        "retain": retain_term(model, retain, ctx),
    }
