"""Combinations of loss terms other than the plain sum: NGDiff's normalized sum and PCGrad.

NGDiff (Bu, Jin et al., arXiv 2410.22086) treats forgetting and retaining as two tasks and
combines their gradients after normalizing each by its global L2 norm:

    d = g_R / ||g_R||  -  g_F / ||g_F||,         theta <- theta - eta * d

with g_F the gradient of the forget NLL and g_R that of the retain term. In our convention every
term is a quantity to minimize (the forget term is -NLL, whose gradient is -g_F), so d is the sum
of the normalized term gradients: d = sum_k w_k G_k / ||G_k||. Properties worth knowing:
<d, g_R> >= 0 and <d, g_F> <= 0 at any angle, and ||d||^2 = 2 (1 - cos(g_R, -g_F)) <= 4, which
is why clipping is off by default for this combination.

Choices (ours where the paper is silent):
- each term's gradient is accumulated separately over all micro-batches of an optimizer step and
  normalized once (normalizing per micro-batch would be a different algorithm);
- one global norm over all trainable parameters, in fp32, reduced across ranks;
- a term whose norm is zero or non-finite is dropped for that step; if every term is, the step is
  skipped (gradients set to None, so the optimizer leaves the parameters and its state alone).
Each term's backward accumulates into that term's own buffer (NGDiff: two buffers, i.e. one
gradient copy more than ordinary training, and the combined direction is written into one of them),
and the buffers are averaged across ranks explicitly.

FSDP2 and gradient accumulation: HF Trainer runs every micro-batch but the last of a window inside
`no_sync`, which for FSDP2 is `set_requires_gradient_sync(False)`: gradients then pile up in FSDP's
own unsharded buffers, where swapping `.grad` per term cannot keep the terms apart. In sharded mode
every term's backward therefore runs with gradient sync forced on (`gradient_sync_forced`), so each
micro-batch is reduce-scattered into that term's sharded buffer.

PCGrad (Yu et al., "Gradient surgery for multi-task learning", arXiv 2001.06782) removes the part of
a task's gradient that conflicts with another's. Unlearning gives the retain task priority (as in
retention-prioritized gradient synthesis, arXiv 2604.14808): with G_R the weighted retain gradient
(the retain stream's terms, summed) and G_k each other term's weighted gradient,

    G_k' = G_k - min(0, <G_k, G_R>) / ||G_R||^2  G_R,        d = G_R + sum_k G_k',

so a forget gradient that points against the retain gradient loses that component and d never
decreases the retain terms to first order, while a non-conflicting one is left as it is. Yu et al.
project every task symmetrically (G_R off G_F too); projecting only the forget side is the choice
the issue asked for. A zero retain gradient projects nothing. `PCGradCombiner` reuses the per-term
buffers, rank averaging and sharded norms above.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist

EPS = 1e-12


class NormalizedCombiner:
    """Per-term gradient accumulators for one optimizer step, and their normalized sum.

    `sharded=True` is the FSDP mode: backward itself reduce-scatters every micro-batch, so each
    buffer holds this rank's shard of the rank-averaged gradient; norms and dot products are then
    sums of local squares all-reduced across ranks, and the buffers are never all-reduced.
    """

    def __init__(
        self, params: list[torch.nn.Parameter], sharded: bool = False, module: torch.nn.Module | None = None
    ):
        if sharded and module is None:
            raise ValueError(
                "sharded (FSDP2) combination needs the FSDP-wrapped module, to force gradient sync"
            )
        self.params = params
        self.sharded = sharded
        self.module = module
        self.buffers: dict[str, list[torch.Tensor]] = {}
        self.shared_graph: bool | None = None  # do the terms share autograd nodes? (found once)

    def reset(self) -> None:
        """Start a new optimizer step: drop the previous step's buffers (one of them is `.grad`)."""
        self.buffers = {}

    def accumulate(self, terms: dict[str, torch.Tensor]) -> None:
        """Add each term's gradient (already window-normalized) to that term's own buffer.

        The term's buffer is lent to the parameters as `.grad` for its backward pass, so autograd
        accumulates into it in place (or creates it, on the first micro-batch): no transient copy of
        the whole gradient, as `torch.autograd.grad` would return. Under DDP callers run this where
        backward does not synchronize ranks (`no_sync`) and `combine` averages the buffers; in
        sharded (FSDP) mode backward's own reduce-scatter fills each term's shard.
        """
        names = list(terms)
        if self.shared_graph is None and len(names) > 1:
            self.shared_graph = _graphs_overlap([terms[n] for n in names])
        for i, name in enumerate(names):
            buffers = self.buffers.get(name)
            for j, p in enumerate(self.params):
                p.grad = None if buffers is None else buffers[j]
            sync = gradient_sync_forced(self.module) if self.sharded else contextlib.nullcontext()
            # Terms from separate forward passes (graddiff's) free each graph as its backward runs,
            # so activations are never held longer than in one backward of their sum.
            with sync:
                terms[name].backward(retain_graph=bool(self.shared_graph) and i < len(names) - 1)
            self.buffers[name] = [torch.zeros_like(p) if p.grad is None else p.grad for p in self.params]
        for p in self.params:
            p.grad = None

    def combine(
        self, weights: dict[str, float], world_size: int = 1, streams: dict[str, str] | None = None
    ) -> dict[str, float]:
        """Set each parameter's `.grad` to sum_k w_k G_k / ||G_k|| and return per-step statistics.

        The sum is written into the first kept term's buffer, so no third gradient copy is made.
        `streams` (term -> stream) is what PCGrad needs; the normalized sum treats every term alike.

        Statistics: `grad_norm_<term>` for each term, `cos_<a>_<b>` between the first two terms'
        gradients as minimized (for ngdiff cos(-g_F, g_R) = -cos(g_F, g_R), matching `loss_forget` = -NLL), `dropped_terms` (how many had a zero or non-finite norm) and `skipped` (1 when
        all did).
        """
        self._average_across_ranks(world_size)
        names = list(self.buffers)
        # Squared norms of every term, then <G_a, G_b> of the first two: one reduction in sharded mode.
        sums = [_dot(self.buffers[n], self.buffers[n]) for n in names]
        if len(names) >= 2:
            sums.append(_dot(self.buffers[names[0]], self.buffers[names[1]]))
        sums = self._reduce(sums, world_size)
        norms = {n: math.sqrt(s) if math.isfinite(s) else float("nan") for n, s in zip(names, sums)}
        stats: dict[str, float] = {f"grad_norm_{name}": n for name, n in norms.items()}
        if len(names) >= 2:
            a, b = names[:2]
            stats[f"cos_{a}_{b}"] = sums[-1] / max(norms[a] * norms[b], EPS)
        kept = [name for name in names if math.isfinite(norms[name]) and norms[name] > EPS]
        stats["dropped_terms"] = float(len(names) - len(kept))
        stats["skipped"] = float(not kept)
        for j, p in enumerate(self.params):
            if not kept:
                p.grad = None
                continue
            direction = self.buffers[kept[0]][j].mul_(weights[kept[0]] / norms[kept[0]])
            for name in kept[1:]:
                direction.add_(self.buffers[name][j], alpha=weights[name] / norms[name])
            p.grad = direction
        return stats

    def _average_across_ranks(self, world_size: int) -> None:
        """DDP: average every term's buffer over ranks (sharded buffers are averaged by backward itself)."""
        if world_size > 1 and not self.sharded:
            for buffers in self.buffers.values():
                for b in buffers:
                    dist.all_reduce(b)
                    b.div_(world_size)

    def _reduce(self, sums: list[float], world_size: int) -> list[float]:
        """Sharded mode: sum per-rank partial dot products over ranks (one all-reduce)."""
        if self.sharded and world_size > 1:
            reduced = torch.tensor(sums, dtype=torch.float64)
            dist.all_reduce(reduced)
            return reduced.tolist()
        return sums


class PCGradCombiner(NormalizedCombiner):
    """Per-term buffers as `NormalizedCombiner`, combined by PCGrad with the retain stream's terms protected."""

    def combine(
        self, weights: dict[str, float], world_size: int = 1, streams: dict[str, str] | None = None
    ) -> dict[str, float]:
        """Set `.grad` to d = G_R + sum_k G_k' (module docstring) and return per-step statistics.

        Terms on the retain stream make up G_R; every other term is projected off G_R when
        <w_k G_k, G_R> < 0. With G the Gram matrix of the unweighted buffers, d is
        sum_{a in R} w_a (1 - sum_k c_k) G_a + sum_k w_k G_k with c_k = min(0, <w_k G_k, G_R>) / ||G_R||^2,
        written into the first kept buffer. Statistics as `NormalizedCombiner.combine`, plus
        `pcgrad_projected` (how many terms were projected this step).
        """
        self._average_across_ranks(world_size)
        names = list(self.buffers)
        pairs = [(i, j) for i in range(len(names)) for j in range(i, len(names))]
        sums = self._reduce(
            [_dot(self.buffers[names[i]], self.buffers[names[j]]) for i, j in pairs], world_size
        )
        gram = {(names[i], names[j]): v for (i, j), v in zip(pairs, sums)}
        gram |= {(b, a): v for (a, b), v in list(gram.items())}
        norms = {n: math.sqrt(gram[n, n]) if math.isfinite(gram[n, n]) else float("nan") for n in names}
        stats: dict[str, float] = {f"grad_norm_{name}": n for name, n in norms.items()}
        if len(names) >= 2:
            a, b = names[:2]
            stats[f"cos_{a}_{b}"] = gram[a, b] / max(norms[a] * norms[b], EPS)
        kept = [n for n in names if math.isfinite(norms[n])]
        retain = [n for n in kept if (streams or {}).get(n) == "retain"]
        others = [n for n in kept if n not in retain]
        retain_sq = sum(weights[a] * weights[b] * gram[a, b] for a in retain for b in retain)
        shrink = 0.0
        projected = 0
        if retain_sq > EPS:
            for k in others:
                conflict = weights[k] * sum(weights[a] * gram[k, a] for a in retain)
                if conflict < 0:
                    shrink += conflict / retain_sq
                    projected += 1
        coefficients = {a: weights[a] * (1.0 - shrink) for a in retain} | {k: weights[k] for k in others}
        stats["dropped_terms"] = float(len(names) - len(kept))
        stats["skipped"] = float(not kept)
        stats["pcgrad_projected"] = float(projected)
        for j, p in enumerate(self.params):
            if not kept:
                p.grad = None
                continue
            direction = self.buffers[kept[0]][j].mul_(coefficients[kept[0]])
            for name in kept[1:]:
                direction.add_(self.buffers[name][j], alpha=coefficients[name])
            p.grad = direction
        return stats


@contextlib.contextmanager
def gradient_sync_forced(module: torch.nn.Module):
    """FSDP2: reduce-scatter gradients in this block even inside `no_sync`; restore each group's flags after.

    `FSDPModule.set_requires_gradient_sync` has no getter, so the flags it sets are read off the
    parameter groups to put back exactly what the caller (Trainer's `no_sync`) had chosen.
    """
    from torch.distributed.fsdp import FSDPModule

    saved = []
    for m in module.modules():
        if isinstance(m, FSDPModule):
            for group in m._get_fsdp_state()._fsdp_param_groups:
                saved.append((group, group.reduce_grads, group.all_reduce_grads))
                group.reduce_grads = group.all_reduce_grads = True
    if not saved:
        raise ValueError("sharded combination needs a module wrapped by FSDP2 (fully_shard)")
    try:
        yield
    finally:
        for group, reduce_grads, all_reduce_grads in saved:
            group.reduce_grads, group.all_reduce_grads = reduce_grads, all_reduce_grads


def _graphs_overlap(terms: list[torch.Tensor]) -> bool:
    """Whether any two terms share an interior autograd node (a common forward pass).

    Parameters' AccumulateGrad nodes are shared by every term and hold no activations, so they do not
    count. A term computed without gradient (a constant) shares nothing.
    """
    seen: set[int] = set()
    for term in terms:
        stack, own = [term.grad_fn], set()
        while stack:
            node = stack.pop()
            if node is None or id(node) in own or type(node).__name__ == "AccumulateGrad":
                continue
            if id(node) in seen:
                return True
            own.add(id(node))
            stack.extend(next_node for next_node, _ in node.next_functions)
        seen |= own
    return False


def local_shard(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 (DTensor) gradient; the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def _dot(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> float:
    """sum_i <x_i, y_i> over this rank's elements, in fp32 per tensor and fp64 across tensors."""
    return sum(float((local_shard(x).float() * local_shard(y).float()).sum()) for x, y in zip(xs, ys))
