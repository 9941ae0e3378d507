"""GeN: a learning rate fitted from the loss along the optimizer's own step (arXiv 2407.02772).

Bu & Xu, "Gradient descent with generalized Newton's method" (ICLR 2025). Along the displacement
Delta of one real optimizer step (for AdamW the preconditioned step, momentum, bias correction and
decoupled weight decay included), take the second-order model

    L(theta0 - s*Delta) = L0 - s*B + (s^2/2)*A,       optimum s* = B / A.

Three losses pin it down: L0 at theta0, L- at theta0 - eta*Delta (the point the real step reached)
and L+ at theta0 + eta*Delta (its mirror image). Substituting s = eta and s = -eta:

    L- = L0 - eta*B + eta^2*A/2,   L+ = L0 + eta*B + eta^2*A/2
    =>  B = (L+ - L-) / (2*eta),   A = (L+ - 2*L0 + L-) / eta^2,
        eta* = B / A = (eta/2) * (L+ - L-) / (L+ - 2*L0 + L-).

eta* is accepted only where the model has a minimum in the descent direction (A > 0, B > 0); then
the next lr is gamma*lr + (1 - gamma)*scale*clip(eta*, lr/2, 2*lr), with `scale` the usual schedule's
factor at the probed step, so a decaying schedule still decays (its factor scales GeN's target).
A failed fit (non-finite loss or |A| below a tolerance) halves the lr.

Our choices, not the paper's text:
- between probes, and after a rejected fit, the lr follows the schedule from GeN's last estimate
  (lr_t = eta_GeN * factor(t)); a constant schedule keeps it, as the paper's "keep eta" does;
- the probes run on fresh batches, not the step's own (a fit on the batch the step was computed from
  has slope ~||Delta||^2 by construction and asks for far too large an lr): the trainer draws them
  from a probe stream that is a pure function of (seed, step), and all three losses come from
  forwards in eval mode;
- the one real `optimizer.step()` is the descent probe, so the optimizer state advances once per step
  (the reference code steps twice on probe steps); theta1 is restored from a stored copy, never by
  arithmetic;
- a step skipped because every gradient was zero is not a probe.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


@dataclass(frozen=True)
class GenFit:
    """One parabola fit: `eta_star = slope / curvature`, in the units of the probed lr.

    `reason` is one of "accepted", "negative_curvature", "ascent", "fit_failed".
    """

    eta_star: float
    curvature: float
    slope: float
    accepted: bool
    reason: str


def fit_step(eta: float, l0: float, l_minus: float, l_plus: float, tol: float = 1e-12) -> GenFit:
    """Fit L(theta0 - s*Delta) = L0 - s*B + s^2*A/2 through the losses at s = 0, eta, -eta.

    `l_minus` is the loss after the real step (theta0 - eta*Delta), `l_plus` the loss at theta0 + eta*Delta.
    B = (L+ - L-)/(2*eta), A = (L+ - 2*L0 + L-)/eta^2, eta* = B/A (derivation in the module docstring).
    The fit fails on a non-finite loss or |A| < tol; otherwise it is accepted only if A > 0 and B > 0.
    """
    if not all(math.isfinite(x) for x in (l0, l_minus, l_plus)):
        return GenFit(math.nan, math.nan, math.nan, False, "fit_failed")
    curvature = (l_plus - 2.0 * l0 + l_minus) / eta**2
    slope = (l_plus - l_minus) / (2.0 * eta)
    if not math.isfinite(curvature) or abs(curvature) < tol:
        return GenFit(math.nan, curvature, slope, False, "fit_failed")
    eta_star = slope / curvature
    if curvature < 0:
        reason = "negative_curvature"
    elif slope <= 0:
        reason = "ascent"
    else:
        reason = "accepted"
    return GenFit(eta_star, curvature, slope, reason == "accepted", reason)


def update_lr(eta: float, fit: GenFit, gamma: float = 0.9, scale: float = 1.0) -> float:
    """The next lr: smoothed, clipped eta* if accepted; eta if rejected; eta/2 if the fit failed.

    The clip to [eta/2, 2*eta] bounds how far one noisy fit can move the lr; gamma smooths over probes.
    """
    if fit.accepted:
        target = min(max(fit.eta_star, eta / 2.0), 2.0 * eta)
        return gamma * eta + (1.0 - gamma) * scale * target
    if fit.reason == "fit_failed":
        return eta / 2.0
    return eta


def _constant_factor(step: int) -> float:
    return 1.0


class GenScheduler(LRScheduler):
    """lr = eta_GeN * factor(step) per param group, with eta_GeN updated by `observe` after each probe.

    `factor` is the usual schedule's multiplier (warmup, decay; constant 1 by default), so a schedule
    composes with GeN instead of overwriting it. `step` is the 0-based index of the optimizer step,
    which equals `last_epoch` between `optimizer.step()` and `scheduler.step()`.

    Use, every optimizer step k (`last_epoch == k`):

        if scheduler.should_probe(k): theta0 = [p.detach().clone() for p in params]
        optimizer.step()
        if scheduler.should_probe(k): scheduler.observe(l0, *probe_losses(params, theta0, loss_fn))
        scheduler.step()

    `observe` reads the lr the step used from the param groups, so it must run before
    `scheduler.step()` (HF Trainer's `on_optimizer_step` callback sits exactly there).
    `state_dict` holds only plain Python values (the factor function is excluded: pass it again when
    rebuilding), so `torch.load(..., weights_only=True)` reloads it.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        factor: Callable[[int], float] | None = None,
        interval: int = 1,
        gamma: float = 0.9,
        scale: float = 1.0,
        tol: float = 1e-12,
        last_epoch: int = -1,
    ) -> None:
        if interval < 1:
            raise ValueError(f"GeN interval must be a positive number of optimizer steps, got {interval}")
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"GeN gamma must lie in [0, 1), got {gamma}")
        self.factor = factor if factor is not None else _constant_factor
        self.interval = interval
        self.gamma = gamma
        self.scale = scale
        self.tol = tol
        self.etas = [float(group["lr"]) for group in optimizer.param_groups]
        self.probes = 0
        self.accepted = 0
        self.last_fit: dict[str, Any] | None = None
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [eta * self.factor(self.last_epoch) for eta in self.etas]

    def should_probe(self, step: int) -> bool:
        """Probe every `interval` steps, starting at step 0; a step taken at lr 0 has nothing to fit."""
        return step % self.interval == 0 and self.factor(step) > 0

    def observe(self, l0: float, l_minus: float, l_plus: float) -> GenFit:
        """Fit the probed step (index `last_epoch`) and set the lr of the steps that follow.

        Accepted: the next step's lr is exactly gamma*lr + (1 - gamma)*scale*factor(t)*clip(eta*, lr/2, 2 lr)
        (`update_lr` with the schedule's factor at the probed step t as its scale); the estimate
        eta_GeN is stored in units of the schedule, so later steps follow the schedule from it.
        Rejected: eta_GeN is kept. Failed: eta_GeN is halved.

        The displacement is the sum over groups of lr_i*Delta_i, so the probes measure one multiplier
        for the whole step; the fit is expressed in units of the largest group lr and every group is
        scaled by the same ratio (update_lr is homogeneous in eta).
        """
        lr = max(float(group["lr"]) for group in self.optimizer.param_groups)
        if lr <= 0:
            raise ValueError(
                "GeN cannot fit a step taken at lr 0: probe only where should_probe(step) is True"
            )
        step = self.last_epoch
        fit = fit_step(lr, l0, l_minus, l_plus, self.tol)
        if fit.accepted:
            next_lr = update_lr(lr, fit, self.gamma, self.scale * self.factor(step))
            next_factor = self.factor(step + 1)
            if next_factor > 0:
                # eta_i * factor(step) is the lr group i just used; the next lr is that times next_lr/lr.
                ratio = next_lr / lr * self.factor(step) / next_factor
                self.etas = [eta * ratio for eta in self.etas]
        elif fit.reason == "fit_failed":
            self.etas = [eta / 2.0 for eta in self.etas]
        self.probes += 1
        self.accepted += int(fit.accepted)
        self.last_fit = {"lr": lr, "l0": l0, "l_minus": l_minus, "l_plus": l_plus, **asdict(fit)}
        return fit

    def state_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key not in ("optimizer", "factor")}


@torch.no_grad()
def probe_losses(
    params: list[torch.Tensor], theta0: list[torch.Tensor], loss_fn: Callable[[], float]
) -> tuple[float, float]:
    """Losses at theta1 (the params now, after the real step) and at 2*theta0 - theta1; params end at theta1.

    `theta0` holds clones of `params` taken before `optimizer.step()`; it is used as scratch and holds
    theta1 on return, so the probe costs one parameter copy in all. The caller's `loss_fn` evaluates
    the probe batches in eval mode (dropout off), as for L0, and returns a float; under DDP it averages
    the loss across ranks so that every rank fits the same eta.
    """
    l_minus = float(loss_fn())
    for p, t0 in zip(params, theta0):
        t1 = p.detach().clone()
        # The mirror point is formed in fp32 so that bf16 weights round once, not twice.
        p.copy_(2.0 * t0.float() - t1.float())
        t0.copy_(t1)
    try:
        l_plus = float(loss_fn())
    finally:
        # Restore from the stored copy: 2*theta0 - (2*theta0 - theta1) is not theta1 in bf16.
        for p, t1 in zip(params, theta0):
            p.copy_(t1)
    return l_minus, l_plus
