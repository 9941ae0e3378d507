"""Sharpness-aware unlearning: the forget objective minimized at its worst-case neighbour (SAM).

Fan et al., "Towards LLM Unlearning Resilient to Relearning Attacks: A Sharpness-Aware Minimization
Perspective and Beyond" (ICML 2025, arXiv 2502.05374), read relearning as an adversary that moves the
weights a little to undo forgetting, and unlearn against the worst such move within radius rho:

    min_theta  max_{||delta|| <= rho}  l_f(theta + delta)  +  l_r(theta)

with l_f the forget objective (the quantity the method minimizes on the forget set, e.g. -NLL for
graddiff) and l_r the retain term, which is not smoothed. The inner max is taken to first order, as
SAM does (Foret et al., arXiv 2010.01412): one extra forward/backward of the forget term per step,

    g = grad l_f(theta),   delta = rho g / ||g||,   G_f = grad l_f(theta + delta),

and the step uses G_f in place of the forget gradient at theta, combined with grad l_r(theta) exactly
as the method combines its terms (`sum`, or NGDiff's `normalized`, where G_f is the forget gradient
that gets normalized). Weights at theta + delta flatten the forget loss around the unlearned point,
so that a few fine-tuning steps on forget data do not bring it back down.

Our choices where the paper's setting (one forget and one retain term, one process) says nothing:
- "Forget" is every term a method computes on the forget stream (`Term.stream == "forget"`): graddiff's,
  npo's, ga's single term; both of gc's (its direct forgetting term and the collision); rmu's steering
  term. l_f is their weighted sum, so delta follows the forget side of the method's own objective.
  Every retain-stream term stays at theta.
- ||g|| is the global L2 norm over every trainable parameter (the adapters under LoRA), of the
  gradient of the whole accumulation window's forget objective averaged over ranks: delta does not
  depend on how the window is split into micro-batches or ranks.
- A zero forget gradient gives delta = 0 (plain step); rho = 0 turns SAM off.
- theta is copied before the perturbation and copied back after each forward/backward at
  theta + delta, so the weights the optimizer steps from are bit-for-bit the unperturbed ones.
- GeN (gen.py) probes the combined update from the unperturbed weights, as without SAM.
- Cost: the method runs twice per micro-batch (a pre-pass at theta over the window, then at
  theta + delta; the retain part of the second run is discarded), and delta and the copy of theta
  take two more copies of the trainable parameters. Not available under FSDP or DeepSpeed (the
  trainer and the config refuse them), nor with fp16 (the pre-pass bypasses the loss scaler).

Choosing rho. SAM slows forgetting at a fixed step budget (the step descends from a point where the
forget objective is worse), so give it more steps. Measured on the built-in world (graddiff recipe,
forget10, 3 seeds, relearning probe on the held-out half): at the recipe's 6 epochs rho 0.05 left
more forget facts (recall 0.16 vs 0.09) and barely moved relearning recovery at 100 steps (0.44 vs
0.48); rho 0.25 with 16 epochs reached forget fact recall 0.06, recovery 0.03 at 100 steps, forget
quality 0.82 and model utility 0.73 (target 0.77), where plain graddiff at 16 epochs had recovery
0.21, forget quality 0.006 and utility 0.54. rho is a length in weight space: retune it for another
model size.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist

from ..methods import Term

EPS = 1e-12


def is_forget_term(term: Term) -> bool:
    """Whether SAM smooths this term: it is computed on the forget stream (module docstring)."""
    return term.stream == "forget"


def perturbation(grads: list[torch.Tensor], rho: float) -> tuple[list[torch.Tensor], float]:
    """delta = rho g / ||g|| for the gradient g given per parameter, and ||g|| (global, fp64 sum).

    A zero (or non-finite) norm gives delta = 0. `grads` is overwritten with delta.
    """
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
    scale = rho / norm if math.isfinite(norm) and norm > EPS else 0.0
    for g in grads:
        g.mul_(scale)
    return grads, norm


class SharpnessAwareStep:
    """One optimizer step's SAM state: delta over `params`, and the unperturbed weights to restore.

    `set_gradient` takes the forget gradient at theta (this rank's, already window-normalized) and
    turns it into delta; `perturbed()` moves the parameters to theta + delta for one block and puts
    theta back exactly.
    """

    def __init__(self, params: list[torch.nn.Parameter], rho: float):
        self.params = params
        self.rho = rho
        self.delta: list[torch.Tensor] = []
        self.theta: list[torch.Tensor] = []

    def set_gradient(self, grads: list[torch.Tensor], world_size: int = 1) -> float:
        """Average `grads` over ranks (DDP), make it delta in place, keep a copy of theta; return ||g||."""
        if world_size > 1:
            for g in grads:
                dist.all_reduce(g)
                g.div_(world_size)
        self.delta, norm = perturbation(grads, self.rho)
        self.theta = [p.detach().clone() for p in self.params]
        return norm

    @contextlib.contextmanager
    def perturbed(self):
        """The parameters at theta + delta inside the block; exactly theta after it."""
        with torch.no_grad():
            for p, d in zip(self.params, self.delta):
                p.add_(d)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, t in zip(self.params, self.theta):
                    p.copy_(t)
