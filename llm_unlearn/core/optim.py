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
  skipped (gradients set to None, so the optimizer leaves the parameters and its state alone);
- a term whose norm has *vanished*, fallen below `vanish_ratio` times the largest norm it had earlier
  in the run, is dropped for that step too (counted apart, as `vanished_terms`). Normalizing divides
  by the norm, so a loss that saturates by design would otherwise keep its full share of every
  step: NPO's forget term (arXiv 2404.05868) is the NLL gradient weighted by
  sigma(beta (log pi - log pi_ref)), which tends to 0 once the forget answers are far less likely
  than under the reference; in a SmolLM2 run its norm fell from 1e-3 to 1e-11 while normalization
  kept turning it into steps of full length, and model utility fell to 0.19 x (0.55 x with this
  rule: the retain-only steps that follow cost utility too; docs/results.md).
  The term comes back as soon as its norm rises above the threshold again (e.g. when retain steps
  undo some forgetting). The peaks are per term, kept across steps (`peak_norms`, saved with each
  checkpoint) and identical on every rank, since the norms are reduced first. 0 turns this off.
Each term's backward accumulates into that term's own buffer (NGDiff: two buffers, i.e. one
gradient copy more than ordinary training, and the combined direction is written into one of them),
and the buffers are averaged across ranks explicitly.

FSDP2 and gradient accumulation: HF Trainer runs every micro-batch but the last of a window inside
`no_sync`, which for FSDP2 is `set_requires_gradient_sync(False)`: gradients then pile up in FSDP's
own unsharded buffers, where swapping `.grad` per term cannot keep the terms apart. In sharded mode
every term's backward therefore runs with gradient sync forced on (`gradient_sync_forced`), so each
micro-batch is reduce-scattered into that term's sharded buffer.

HSDP (FSDP2 on a 2D mesh, sharded within a replica group and replicated across groups: accelerate's
`ParallelismConfig(dp_replicate_size > 1)`): backward reduce-scatters within the group and
all-reduces across groups, so each buffer already holds the average over every rank. Partial dot
products are then summed over the sharded mesh dimension only; summing over every rank would count
each shard once per replica (norms sqrt(2) too large, NGDiff's d 1/sqrt(2) too short, with 2).

PCGrad (Yu et al., "Gradient surgery for multi-task learning", arXiv 2001.06782) removes, from each
term's gradient, the parts that conflict with the others'. With g_k = w_k G_k the weighted term
gradients, each g_i is projected in turn off every other original g_j it still conflicts with, the
j taken in a random order:

    g_i' <- g_i;   for j != i in random order:  if <g_i', g_j> < 0:  g_i' <- g_i' - <g_i', g_j> / ||g_j||^2  g_j
    d = sum_i g_i'

What this guarantees, and what it does not. With two terms (graddiff, npo: forget and retain) d
never increases either term to first order: <d, g_1> = ||g_1||^2 (1 - cos^2(g_1, g_2)) >= 0 when
they conflict (and likewise for g_2), the two-task case Yu et al. analyze. With three or more terms (gc) a later projection can
undo an earlier one, and some term can still get worse: on random conflicting triples in 2 to 10
dimensions a few percent to a third of the draws have some <d, g_k> < 0. So there the rule is the
paper's algorithm, not a guarantee.

Choices (ours where the paper is silent): the random order is drawn per term, from a generator
seeded by (seed, optimizer step), so a run is reproducible, resumes with the same orders and every
rank draws the same ones; a term whose norm is zero or non-finite is dropped as above. Every
projected g_i' is a linear combination of the original g_j, so the combiner only needs the Gram
matrix of the term buffers (one reduction in sharded mode) and tracks each g_i' as coefficients
over them: d = sum_k c_k G_k is written into one buffer, with no extra gradient copy. An earlier
version projected only the forget-side terms off the retain gradient; on a real graddiff step with
cos(g_F, g_R) = -0.99 that step raised the forget objective (relearning the forget set), which the
two-way rule above cannot do.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
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
        self,
        params: list[torch.nn.Parameter],
        sharded: bool = False,
        module: torch.nn.Module | None = None,
        vanish_ratio: float = 0.0,
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
        self.vanish_ratio = vanish_ratio
        self.peak_norms: dict[str, float] = {}  # each term's largest finite norm so far (module docstring)
        self.vanished: list[str] = []  # the terms the last `combine` left out as vanished

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

    def combine(self, weights: dict[str, float], world_size: int = 1, step: int = 0) -> dict[str, float]:
        """Set each parameter's `.grad` to sum_k w_k G_k / ||G_k|| and return per-step statistics.

        The sum is written into the first kept term's buffer, so no third gradient copy is made.
        `step` (the optimizer step) seeds PCGrad's order; the normalized sum does not depend on it.

        Statistics: `grad_norm_<term>` for each term, `cos_<a>_<b>` between the first two terms'
        gradients as minimized (for ngdiff cos(-g_F, g_R) = -cos(g_F, g_R), matching `loss_forget` = -NLL),
        `dropped_terms` (how many had a zero or non-finite norm), `vanished_terms` (how many fell below
        `vanish_ratio` times their peak) and `skipped` (1 when no term was kept).
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
        usable = [name for name in names if math.isfinite(norms[name]) and norms[name] > EPS]
        for name in usable:
            self.peak_norms[name] = max(self.peak_norms.get(name, 0.0), norms[name])
        kept = [name for name in usable if norms[name] >= self.vanish_ratio * self.peak_norms[name]]
        stats["dropped_terms"] = float(len(names) - len(usable))
        stats["vanished_terms"] = float(len(usable) - len(kept))
        stats["skipped"] = float(not kept)
        self.vanished = [name for name in usable if name not in kept]
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
        """Sharded mode: sum per-rank partial dot products over the ranks that hold disjoint shards.

        Under FSDP2 that is every rank; under HSDP the ranks of one replica group only (module
        docstring), i.e. the mesh dimensions on which the parameters are sharded, reduced in turn.
        """
        if self.sharded and world_size > 1:
            reduced = torch.tensor(sums, dtype=torch.float64)
            mesh, placements = self.params[0].device_mesh, self.params[0].placements
            for dim, placement in enumerate(placements):
                if placement.is_shard():
                    dist.all_reduce(reduced, group=mesh.get_group(dim))
            return reduced.tolist()
        return sums


class PCGradCombiner(NormalizedCombiner):
    """Per-term buffers as `NormalizedCombiner`, combined by PCGrad (module docstring); `seed` seeds the orders."""

    def __init__(
        self,
        params: list[torch.nn.Parameter],
        sharded: bool = False,
        module: torch.nn.Module | None = None,
        seed: int = 0,
    ):
        super().__init__(params, sharded=sharded, module=module)
        self.seed = seed

    def combine(self, weights: dict[str, float], world_size: int = 1, step: int = 0) -> dict[str, float]:
        """Set `.grad` to d = sum_i g_i' (module docstring) and return per-step statistics.

        The orders are drawn from (seed, step). Statistics as `NormalizedCombiner.combine`, plus
        `pcgrad_projected` (how many terms were projected at least once this step).
        """
        self._average_across_ranks(world_size)
        names = list(self.buffers)
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i:]]
        sums = self._reduce([_dot(self.buffers[a], self.buffers[b]) for a, b in pairs], world_size)
        gram: dict[tuple[str, str], float] = {}
        for (a, b), v in zip(pairs, sums):
            gram[a, b] = gram[b, a] = v
        norms = {n: math.sqrt(gram[n, n]) if math.isfinite(gram[n, n]) else float("nan") for n in names}
        stats: dict[str, float] = {f"grad_norm_{name}": n for name, n in norms.items()}
        if len(names) >= 2:
            a, b = names[:2]
            stats[f"cos_{a}_{b}"] = gram[a, b] / max(norms[a] * norms[b], EPS)
        kept = [n for n in names if math.isfinite(norms[n]) and norms[n] > EPS]
        weighted = [[weights[a] * weights[b] * gram[a, b] for b in kept] for a in kept]
        totals, projected = pcgrad_coefficients(weighted, pcgrad_orders(len(kept), self.seed, step))
        coefficients = {n: weights[n] * c for n, c in zip(kept, totals)}
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


def pcgrad_orders(n: int, seed: int, step: int) -> list[list[int]]:
    """For each of n terms, the order in which PCGrad projects it off the others: the same on every rank."""
    rng = np.random.default_rng((seed, step))
    return [[j for j in rng.permutation(n).tolist() if j != i] for i in range(n)]


def pcgrad_coefficients(gram: list[list[float]], orders: list[list[int]]) -> tuple[list[float], int]:
    """PCGrad on the Gram matrix of the term gradients g_k: d = sum_k c_k g_k, and how many terms were projected.

    Each g_i' is kept as coefficients over the original g_j: <g_i', g_j> = sum_k c_k <g_k, g_j>, and
    projecting off g_j only changes c_j. A term with a zero gradient has no direction to project off;
    it conflicts with nothing (its inner products are 0), so it is never chosen.
    """
    n = len(gram)
    totals, projected = [0.0] * n, 0
    for i in range(n):
        c = [float(k == i) for k in range(n)]
        hit = False
        for j in orders[i]:
            inner = sum(c[k] * gram[k][j] for k in range(n))
            if inner < 0:
                c[j] -= inner / gram[j][j]
                hit = True
        totals = [t + x for t, x in zip(totals, c)]
        projected += hit
    return totals, projected


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
